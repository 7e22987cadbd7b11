//! Disks and image files: what a target is, its size, exclusive opening,
//! holes and zeroing, writeback and the page cache, partition table rereads.

use rustix::fs::{FallocateFlags, FileType, SeekFrom};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    BlockDevice,
    Other,
}

pub fn kind_of(file: &File) -> io::Result<FileKind> {
    let stat = rustix::fs::fstat(file)?;
    Ok(match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => FileKind::Regular,
        FileType::BlockDevice => FileKind::BlockDevice,
        _ => FileKind::Other,
    })
}

/// Size in bytes of a regular file or block device (seeking to the end works for both).
pub fn size_of(mut file: &File) -> io::Result<u64> {
    let size = file.seek(io::SeekFrom::End(0))?;
    file.seek(io::SeekFrom::Start(0))?;
    Ok(size)
}

/// Opens a block device read-write and exclusively: the kernel refuses with EBUSY
/// while it is mounted or otherwise claimed, so a live disk is never overwritten.
pub fn open_block_device_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
}

/// Makes `len` bytes at `offset` read back as zeros without writing them where the
/// kernel can: a hole in a regular file, a zero-out (like BLKZEROOUT) on a block
/// device. Falls back to writing zeros.
pub fn zero_range(file: &File, kind: FileKind, offset: u64, len: u64) -> io::Result<()> {
    let flags = match kind {
        FileKind::Regular => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        _ => FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
    };
    if rustix::fs::fallocate(file, flags, offset, len).is_ok() {
        return Ok(());
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Start of the first data region at or after `offset` in a regular file, or None if
/// only a hole follows. Filesystems without SEEK_DATA report everything as data.
pub fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, SeekFrom::Data(offset)) {
        Ok(at) => Ok(Some(at)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(Some(offset)),
        Err(e) => Err(e.into()),
    }
}

/// Drops a range that has been written back from the page cache. A deploy
/// writes a whole disk once; caching what it wrote only makes the kernel drop
/// it all at the end (re-reading the partition table, closing the disk) while
/// the deploy waits, and crowds a small machine's memory meanwhile.
pub fn forget_written(file: &File, offset: u64, len: u64) {
    // Pages still dirty or under writeback stay; this is a hint.
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

/// Starts writeback of a just-written range without waiting for it, so the disk
/// works while the next chunks are fetched and the final fsync has little left.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // Neither rustix nor nix wraps sync_file_range; fadvise(DONTNEED), the nearest
    // wrapped call, also evicts the range from the page cache, a different request.
    // SAFETY: sync_file_range only reads its integer arguments, no memory; an
    // invalid fd or range makes it return an error, ignored because this is a hint.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Asks the kernel to re-read a disk's partition table (BLKRRPART), so the new
/// partitions appear as devices.
pub fn reread_partitions(disk: &File) -> io::Result<()> {
    use rustix::ioctl::{NoArg, Opcode, ioctl, opcode};
    // Neither rustix nor nix wraps BLKRRPART; rustix's typed ioctl keeps the raw
    // part to the opcode.
    const BLKRRPART: Opcode = opcode::none(0x12, 95);
    // SAFETY: BLKRRPART is _IO(0x12, 95): it takes no argument and reads or writes
    // no user memory, which is what NoArg passes; `disk` is a borrowed, open fd.
    unsafe { ioctl(disk, NoArg::<BLKRRPART>::new()) }.map_err(Into::into)
}
