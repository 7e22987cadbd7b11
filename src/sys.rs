//! Everything that talks to the kernel beyond plain reads and writes lives here:
//! device probing, hole detection, zeroing ranges. Other modules stay portable and
//! testable; this one is kept small and each call explains itself.

use rustix::fs::{FallocateFlags, FileType, SeekFrom};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
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

/// Fresh key material from the kernel's random pool.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

/// Turns off Nagle's algorithm. Set on a listening socket, Linux passes it on to
/// every accepted connection; without it a response written as header + body waits
/// for the peer's delayed ACK (40 ms) on keep-alive connections.
pub fn set_tcp_nodelay(socket: impl std::os::fd::AsFd) -> io::Result<()> {
    rustix::net::sockopt::set_tcp_nodelay(socket, true).map_err(io::Error::from)
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

/// Mounts a pseudo or real file system; "already mounted" counts as success.
pub fn mount(source: &str, target: &str, fstype: &str, read_only: bool) -> io::Result<()> {
    let mut flags = rustix::mount::MountFlags::NOSUID;
    if read_only {
        flags |= rustix::mount::MountFlags::RDONLY;
    }
    std::fs::create_dir_all(target)?;
    match rustix::mount::mount(source, target, fstype, flags, None::<&std::ffi::CStr>) {
        Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mounts an ext4 file system read-only without replaying its journal: nothing
/// is written to the device, even when the file system was not cleanly
/// unmounted (what was only in the journal is then not seen).
pub fn mount_ext4_untouched(source: &str, target: &str) -> io::Result<()> {
    let flags = rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::RDONLY;
    std::fs::create_dir_all(target)?;
    rustix::mount::mount(source, target, "ext4", flags, c"norecovery").map_err(Into::into)
}

pub fn unmount(target: &str) -> io::Result<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(Into::into)
}

/// Loads a kernel module from its file. Already loaded is success.
pub fn load_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

pub fn sync_all() {
    rustix::fs::sync();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

/// Syncs and restarts or powers off the machine. Returns only if the kernel
/// refused (then the caller decides what is left to do).
pub fn power(action: PowerAction) -> io::Error {
    sync_all();
    let cmd = match action {
        PowerAction::Reboot => rustix::system::RebootCommand::Restart,
        PowerAction::Poweroff => rustix::system::RebootCommand::PowerOff,
    };
    match rustix::system::reboot(cmd) {
        Ok(()) => io::Error::other("reboot returned"),
        Err(e) => e.into(),
    }
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    Exited(i32),
    Killed(i32),
}

/// Waits for any child to end: its process id and how it ended (`None` when
/// there are no children).
pub fn wait_any_child() -> Option<(u32, ChildEnd)> {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) => {
                let pid = pid.as_raw_nonzero().get() as u32;
                if let Some(code) = status.exit_status() {
                    return Some((pid, ChildEnd::Exited(code)));
                }
                if let Some(signal) = status.terminating_signal() {
                    return Some((pid, ChildEnd::Killed(signal)));
                }
                // Stopped or continued: still alive.
            }
            Err(rustix::io::Errno::INTR) => {}
            _ => return None,
        }
    }
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    rustix::system::sethostname(name.as_bytes()).map_err(Into::into)
}

pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// Sends one rtnetlink request and waits for the kernel's acknowledgement.
pub fn netlink_request(message: &[u8], seq: u32) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketType, netlink};
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?; // None is NETLINK_ROUTE
    rustix::net::bind(&socket, &netlink::SocketAddrNetlink::new(0, 0))?;
    rustix::net::sendto(
        &socket,
        message,
        rustix::net::SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;
    let mut reply = vec![0u8; 8192];
    let (n, _) = rustix::net::recv(&socket, &mut reply[..], rustix::net::RecvFlags::empty())?;
    match crate::format::netlink::parse_ack(&reply[..n], seq) {
        Ok(0) => Ok(()),
        Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
        Err(what) => Err(io::Error::other(what)),
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

/// Loads a kernel (and initrd) to boot with kexec (kexec_file_load, so the kernel
/// checks the image itself). No crate wraps this system call; it goes through
/// libc's syscall().
pub fn kexec_load(kernel: &File, initrd: Option<&File>, cmdline: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 4;
    let cmdline = std::ffi::CString::new(cmdline)
        .map_err(|_| io::Error::other("kernel command line contains a NUL byte"))?;
    let bytes = cmdline.as_bytes_with_nul();
    let (initrd_fd, flags) = match initrd {
        Some(f) => (f.as_raw_fd(), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    // SAFETY: kexec_file_load reads the two fds and `bytes.len()` bytes at the
    // command line pointer, which is a live, NUL-terminated CString for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Boots the kernel loaded by [`kexec_load`]. Returns only on failure.
pub fn kexec_reboot() -> io::Error {
    sync_all();
    match rustix::system::reboot(rustix::system::RebootCommand::Kexec) {
        Ok(()) => io::Error::other("kexec returned"),
        Err(e) => e.into(),
    }
}

const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// True when the machine booted through UEFI.
pub fn is_uefi() -> bool {
    Path::new("/sys/firmware/efi").exists()
}

/// Mounts efivarfs if it is not mounted yet.
pub fn mount_efivars() -> io::Result<()> {
    if Path::new(EFIVARS)
        .join(format!("BootOrder-{}", crate::format::efi::GLOBAL_GUID))
        .exists()
    {
        return Ok(());
    }
    mount("efivarfs", EFIVARS, "efivarfs", false)
}

/// Reads an EFI variable (without its 4-byte attribute prefix); `None` if unset.
pub fn efivar_read(name: &str) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(Path::new(EFIVARS).join(name)) {
        Ok(bytes) if bytes.len() >= 4 => Ok(Some(bytes[4..].to_vec())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Names of the EFI variables present.
pub fn efivar_names() -> io::Result<Vec<String>> {
    Ok(std::fs::read_dir(EFIVARS)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Writes an EFI variable (non-volatile, boot and runtime access). efivarfs marks
/// existing variables immutable; the flag is lifted for the write.
pub fn efivar_write(name: &str, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let path = Path::new(EFIVARS).join(name);
    if let Ok(f) = File::open(&path)
        && let Ok(flags) = rustix::fs::ioctl_getflags(&f)
        && flags.contains(rustix::fs::IFlags::IMMUTABLE)
    {
        rustix::fs::ioctl_setflags(&f, flags - rustix::fs::IFlags::IMMUTABLE)?;
    }
    let mut bytes = crate::format::efi::ATTRIBUTES.to_le_bytes().to_vec();
    bytes.extend_from_slice(data);
    // One write: efivarfs takes each write as a whole variable.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    f.write_all(&bytes)
}

/// Lets only ARP and IPv4 UDP datagrams to `port` through to the packet socket
/// `fd` (a classic BPF filter, as `tcpdump arp or udp dst port N` compiles
/// it), so a DHCP client's raw socket is not handed a copy of every frame the
/// machine receives.
pub fn filter_udp_dst_port(socket: &impl std::os::fd::AsRawFd, port: u16) -> io::Result<()> {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // ARP (the client resolves the server it renews with), or: ethertype IPv4,
    // protocol UDP, not a fragment, the destination port.
    let program = [
        op(0x28, 0, 0, 12),          // ldh [12]
        op(0x15, 8, 0, 0x0806),      // jeq ARP ? accept : next
        op(0x15, 0, 8, 0x0800),      // jeq IPv4 ? next : drop
        op(0x30, 0, 0, 23),          // ldb [23]
        op(0x15, 0, 6, 17),          // jeq UDP ? next : drop
        op(0x28, 0, 0, 20),          // ldh [20]
        op(0x45, 4, 0, 0x1fff),      // jset fragment offset ? drop : next
        op(0xb1, 0, 0, 14),          // ldxb 4*([14]&0xf)
        op(0x48, 0, 0, 16),          // ldh [x+16]
        op(0x15, 0, 1, port as u32), // jeq port ? accept : drop
        op(0x06, 0, 0, 0x40000),     // accept
        op(0x06, 0, 0, 0),           // drop
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `socket` is an open descriptor for the call's length (borrowed);
    // `fprog` points at `program`, which lives until after the call, and the
    // kernel copies the program and keeps no pointer to it. The size passed is
    // that of `fprog`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The signals that ask a server to stop: SIGTERM and SIGINT.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set it is given; sigaddset adds
    // valid signal numbers to that initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in this thread and in the threads it starts from
/// now on, so that [`wait_for_termination`] receives them instead of the
/// default action ending the process mid-response.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_signals();
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for SIGTERM or SIGINT (blocked first with
/// [`block_termination_signals`]); returns which.
pub fn wait_for_termination() -> i32 {
    let set = termination_signals();
    loop {
        let mut signal = 0;
        // SAFETY: `set` is initialised and `signal` is a valid place for the
        // result.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            return signal;
        }
    }
}

/// This process's peak resident memory so far (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:")
}

/// The figure after `key` in a `/proc` file of `Key: N kB` lines, in bytes.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Time since the kernel started (`/proc/uptime`, to the hundredth of a second).
pub fn uptime() -> Option<std::time::Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

/// Unix time in milliseconds (0 for a clock set before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Memory the kernel says is available for new allocations (`MemAvailable`),
/// in bytes.
pub fn available_memory() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:")
}

/// Raises this process's open-file limit to its hard limit; returns the limit
/// now in force (1024 if it cannot be read).
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current != Some(hard)
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    limit.current.unwrap_or(1024)
}

/// Deletes an EFI variable; nothing to do if it is unset. efivarfs may mark
/// variables immutable; the flag is lifted first.
pub fn efivar_delete(name: &str) -> io::Result<()> {
    let path = Path::new(EFIVARS).join(name);
    match File::open(&path) {
        Ok(f) => {
            if let Ok(flags) = rustix::fs::ioctl_getflags(&f)
                && flags.contains(rustix::fs::IFlags::IMMUTABLE)
            {
                rustix::fs::ioctl_setflags(&f, flags - rustix::fs::IFlags::IMMUTABLE)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What a directory entry is, for [`Root::lstat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Other,
}

/// A directory entry's type and ownership, for [`Root::lstat`].
#[derive(Debug, Clone, Copy)]
pub struct EntryInfo {
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
}

impl EntryInfo {
    fn of(st: &rustix::fs::Stat) -> EntryInfo {
        use rustix::fs::FileType;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => EntryType::File,
            FileType::Directory => EntryType::Dir,
            FileType::Symlink => EntryType::Symlink,
            _ => EntryType::Other,
        };
        EntryInfo {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        }
    }
}

/// A directory tree that paths are resolved inside of, as if it were `/`: an
/// absolute symlink or `..` in the tree never leads out of it (openat2 with
/// RESOLVE_IN_ROOT). For writing into an installed OS's root from outside it.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    fn resolve(&self, rel: &str, flags: rustix::fs::OFlags) -> io::Result<OwnedFd> {
        use rustix::fs::{Mode, ResolveFlags};
        let rel = match rel.trim_start_matches('/') {
            "" => ".",
            rel => rel,
        };
        Ok(rustix::fs::openat2(
            &self.fd,
            rel,
            flags | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?)
    }

    /// Whether `rel` exists in the tree (symlinks followed inside it).
    pub fn exists(&self, rel: &str) -> bool {
        self.resolve(rel, rustix::fs::OFlags::PATH).is_ok()
    }

    /// The permission bits of `rel`.
    pub fn mode(&self, rel: &str) -> io::Result<u32> {
        let fd = self.resolve(rel, rustix::fs::OFlags::PATH)?;
        Ok(rustix::fs::fstat(&fd)?.st_mode & 0o7777)
    }

    /// Reads the regular file `rel`, at most `limit` bytes. Anything else (a
    /// FIFO would block, a device could act on being opened) is refused.
    pub fn read(&self, rel: &str, limit: u64) -> io::Result<Vec<u8>> {
        use rustix::fs::OFlags;
        let info = self.lstat(rel)?;
        if info.kind != EntryType::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let fd = self.resolve(rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        if !rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut out = Vec::new();
        File::from(fd).take(limit).read_to_end(&mut out)?;
        Ok(out)
    }

    /// `rel` opened for reading, if it is a regular file (symlinks followed
    /// inside the tree only).
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        use rustix::fs::OFlags;
        let fd = self.resolve(rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        if !rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(File::from(fd))
    }

    /// What `rel` itself is (a symlink there is not followed).
    pub fn lstat(&self, rel: &str) -> io::Result<EntryInfo> {
        use rustix::fs::OFlags;
        let fd = self.resolve(rel, OFlags::PATH | OFlags::NOFOLLOW)?;
        Ok(EntryInfo::of(&rustix::fs::fstat(&fd)?))
    }

    /// What `rel` itself is, reached without following any symlink: a link
    /// among its parents is an error (ELOOP), wherever it points.
    pub fn lstat_nofollow(&self, rel: &str) -> io::Result<EntryInfo> {
        use rustix::fs::OFlags;
        let fd = open_nofollow(&self.fd, rel, OFlags::PATH | OFlags::NOFOLLOW)?;
        Ok(EntryInfo::of(&rustix::fs::fstat(&fd)?))
    }

    /// Whether the directory `rel`, reached without following any symlink, has
    /// no entries.
    pub fn is_empty_dir(&self, rel: &str) -> io::Result<bool> {
        use rustix::fs::OFlags;
        let fd = open_nofollow(&self.fd, rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        for entry in rustix::fs::Dir::read_from(&fd)? {
            if !matches!(entry?.file_name().to_bytes(), b"." | b"..") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The target of the symlink `rel`, as written.
    pub fn read_link(&self, rel: &str) -> io::Result<String> {
        use rustix::fs::OFlags;
        let fd = self.resolve(rel, OFlags::PATH | OFlags::NOFOLLOW)?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// The names in the directory `rel`, sorted, at most `limit` of them.
    pub fn list(&self, rel: &str, limit: usize) -> io::Result<Vec<String>> {
        use rustix::fs::OFlags;
        let fd = self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy();
            if name == "." || name == ".." {
                continue;
            }
            if names.len() == limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {limit} entries"),
                ));
            }
            names.push(name.into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The directory `rel` and its parents, created as needed with `mode`.
    pub fn create_dirs(&self, rel: &str, mode: u32) -> io::Result<OwnedFd> {
        use rustix::fs::OFlags;
        let mut dir = self.resolve("/", OFlags::PATH | OFlags::DIRECTORY)?;
        let mut path = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            dir = match self.resolve(&path, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    rustix::fs::mkdirat(&dir, part, rustix::fs::Mode::from_raw_mode(mode))?;
                    self.resolve(&path, OFlags::PATH | OFlags::DIRECTORY)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(dir)
    }

    /// The directory `rel`, its missing parts created with `mode`, reached
    /// without following any symlink: a link on the way is an error (ELOOP),
    /// whether it points inside the tree or out of it.
    pub fn create_dirs_nofollow(&self, rel: &str, mode: u32) -> io::Result<RootDir> {
        use rustix::fs::OFlags;
        let mut dir = open_nofollow(&self.fd, "/", OFlags::PATH | OFlags::DIRECTORY)?;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let part = component(part)?;
            let open = |dir: &OwnedFd| open_nofollow(dir, part, OFlags::PATH | OFlags::DIRECTORY);
            dir = match open(&dir) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&dir, part, rustix::fs::Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open(&dir)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(RootDir { fd: dir })
    }

    /// Writes `content` to `dir/name` atomically: a new file, synced, renamed over
    /// whatever was there (a symlink there is replaced, never followed).
    pub fn write_file(&self, dir: &str, name: &str, content: &[u8], mode: u32) -> io::Result<()> {
        use rustix::fs::AtFlags;
        let parent = self.create_dirs(dir, 0o755)?;
        let tmp = format!(".{name}.imprint-tmp");
        let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
        let mut file = create_new_file(&parent, &tmp, mode, None)?;
        std::io::Write::write_all(&mut file, content)?;
        file.sync_all()?;
        rustix::fs::renameat(&parent, tmp.as_str(), &parent, name)?;
        Ok(())
    }

    /// Removes `dir/name`, a file or a symlink itself (never what it points at).
    /// Nothing there, or no `dir`, is success.
    pub fn remove(&self, dir: &str, name: &str) -> io::Result<()> {
        use rustix::fs::{AtFlags, OFlags};
        let parent = match self.resolve(dir, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&parent, component(name)?, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes `dir/name` a symlink to `target`, replacing what was there.
    pub fn symlink(&self, dir: &str, name: &str, target: &str) -> io::Result<()> {
        use rustix::fs::AtFlags;
        let parent = self.create_dirs(dir, 0o755)?;
        match rustix::fs::unlinkat(&parent, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::NOENT => {}
            Err(e) => return Err(e.into()),
        }
        rustix::fs::symlinkat(target, &parent, name)?;
        Ok(())
    }
}

/// Opens `rel` beneath `dir` following no symlink at all, inside the tree or
/// out of it: a link on the way is an error (ELOOP), never a detour.
fn open_nofollow(dir: impl AsFd, rel: &str, flags: rustix::fs::OFlags) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let rel = match rel.trim_start_matches('/') {
        "" => ".",
        rel => rel,
    };
    Ok(rustix::fs::openat2(
        dir,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// `name` if it names an entry of a directory itself: not empty, no `/`, not
/// `.` or `..`.
fn component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a name in a directory"),
        ));
    }
    Ok(name)
}

/// An owner for chown: an id of -1 means "unchanged" to the kernel, and stays so.
fn owner_ids(uid: u32, gid: u32) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        (uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(uid)),
        (gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(gid)),
    )
}

/// A change of owner where this process may make it: an unprivileged caller
/// (EPERM), or an id this user namespace does not map (EINVAL), leaves the owner
/// as it is.
fn owner_set_if_permitted(result: rustix::io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) | Err(rustix::io::Errno::PERM | rustix::io::Errno::INVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Gives `fd` to `uid`:`gid` where this process may (see
/// [`owner_set_if_permitted`]).
fn give_to(fd: impl AsFd, (uid, gid): (u32, u32)) -> io::Result<()> {
    let (uid, gid) = owner_ids(uid, gid);
    owner_set_if_permitted(rustix::fs::fchown(fd, uid, gid))
}

/// Creates the regular file `name` in `dir`, which must not exist yet (a link
/// there is not followed), with its owner (see [`give_to`]) and then its exact
/// mode set before any content goes in: it is never readable more widely than
/// `mode` allows. Removed again if that fails.
fn create_new_file(
    dir: impl AsFd,
    name: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<File> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let name = component(name)?;
    // Created no wider than `mode` (the umask only narrows it), so it is never
    // more open than asked, even before the exact mode is set.
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )?;
    // The owner first: a change of owner clears the set-user and set-group bits.
    let settled = owner
        .map_or(Ok(()), |owner| give_to(&fd, owner))
        .and_then(|()| Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?));
    if let Err(e) = settled {
        let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
        return Err(e);
    }
    Ok(File::from(fd))
}

/// A directory of a [`Root`] reached without following any symlink (from
/// [`Root::create_dirs_nofollow`]). Its entries are changed by name through the
/// directory's descriptor, never by path, and no operation follows a link at
/// the name: a link in the tree cannot send a write, a mode change or a removal
/// anywhere else. Names are single path components.
pub struct RootDir {
    fd: OwnedFd,
}

impl RootDir {
    /// What `name` itself is (a symlink there is not followed).
    pub fn lstat(&self, name: &str) -> io::Result<EntryInfo> {
        let st = rustix::fs::statat(
            &self.fd,
            component(name)?,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(EntryInfo::of(&st))
    }

    /// Creates the regular file `name`, which must not exist yet, owned by
    /// `owner` where this process may give files away, and with exactly `mode`
    /// before any content is written.
    pub fn create_file(
        &self,
        name: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> io::Result<File> {
        create_new_file(&self.fd, name, mode, owner)
    }

    /// Makes the directory `name` with `mode`, as far as the umask allows (see
    /// [`RootDir::set_dir_mode`] for the exact mode).
    pub fn make_dir(&self, name: &str, mode: u32) -> io::Result<()> {
        let mode = rustix::fs::Mode::from_raw_mode(mode);
        Ok(rustix::fs::mkdirat(&self.fd, component(name)?, mode)?)
    }

    /// Gives the directory `name` to `owner` where this process may, then sets
    /// exactly `mode`. `name` must be a directory itself: a link to one is
    /// refused, not followed.
    pub fn set_dir_mode(&self, name: &str, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::openat(
            &self.fd,
            component(name)?,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if let Some(owner) = owner {
            give_to(&fd, owner)?;
        }
        Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?)
    }

    /// Makes `name`, which must not exist yet, a symlink to `target`. The target
    /// is stored as given, never resolved.
    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(target, &self.fd, component(name)?)?)
    }

    /// Gives `name` itself (a symlink, not what it points at) to `uid`:`gid`
    /// where this process may, as [`RootDir::create_file`] does.
    pub fn set_owner(&self, name: &str, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = owner_ids(uid, gid);
        let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
        owner_set_if_permitted(rustix::fs::chownat(
            &self.fd,
            component(name)?,
            uid,
            gid,
            flags,
        ))
    }

    /// Sets the modification time of `name` itself (a symlink's own, not its
    /// target's) to `mtime` (seconds and nanoseconds); the access time stays.
    pub fn set_mtime(&self, name: &str, mtime: (i64, u32)) -> io::Result<()> {
        use rustix::fs::{AtFlags, Timespec, Timestamps, UTIME_OMIT};
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1.min(999_999_999) as _,
            },
        };
        let name = component(name)?;
        Ok(rustix::fs::utimensat(
            &self.fd,
            name,
            &times,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Removes `name` unless it is a directory: a symlink is removed itself,
    /// never what it points at. Nothing there is success.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        use rustix::fs::AtFlags;
        match rustix::fs::unlinkat(&self.fd, component(name)?, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the directory `name` if it is empty (not a link to one).
    pub fn remove_empty_dir(&self, name: &str) -> io::Result<()> {
        use rustix::fs::AtFlags;
        Ok(rustix::fs::unlinkat(
            &self.fd,
            component(name)?,
            AtFlags::REMOVEDIR,
        )?)
    }

    /// Renames `from` to `to` in this directory, replacing what `to` was (a
    /// symlink there is replaced, not followed; a directory is not replaced).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (component(from)?, component(to)?);
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Unmounts what is mounted on `name`. The mount is found through this
    /// directory's descriptor (by /proc, which must be mounted), not by a path a
    /// link could redirect.
    /// Detaches what is mounted on `name` (lazily: a process that has it open
    /// keeps what it has, and the name is free at once).
    pub fn unmount(&self, name: &str) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let at = format!("/proc/self/fd/{}/{}", self.fd.as_raw_fd(), component(name)?);
        Ok(rustix::mount::unmount(
            at.as_str(),
            rustix::mount::UnmountFlags::NOFOLLOW | rustix::mount::UnmountFlags::DETACH,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A new file has its owner and exact mode from the moment it exists, before
    /// any content: a private key is never readable more widely, not even for an
    /// instant, whatever the umask.
    #[test]
    fn a_new_file_has_its_final_mode_and_owner_before_any_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        let ssh = root.create_dirs_nofollow("/etc/ssh", 0o755).unwrap();
        for (name, mode) in [("key", 0o600), ("wide", 0o666), ("setuid", 0o4750)] {
            let file = ssh.create_file(name, mode, Some((1234, 5678))).unwrap();
            let meta = file.metadata().unwrap();
            assert_eq!(meta.len(), 0, "nothing written yet");
            assert_eq!(meta.mode() & 0o7777, mode, "{name}");
            if rustix::process::geteuid().is_root() {
                assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{name}");
            }
        }
        // A name already there, a link included, is not opened.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/ssh/link")).unwrap();
        assert!(ssh.create_file("link", 0o600, None).is_err());
        assert!(ssh.create_file("key", 0o600, None).is_err());
        assert!(ssh.create_file("../x", 0o600, None).is_err());
    }

    /// Links, leading out of the tree or staying inside it, are never followed
    /// on the way to an entry, and never at the entry itself.
    #[test]
    fn nofollow_paths_refuse_links_wherever_they_point() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/out")).unwrap();
        std::os::unix::fs::symlink("../etc", dir.path().join("etc/inside")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let loops = Some(rustix::io::Errno::LOOP.raw_os_error());
        for link in ["/etc/out", "/etc/inside"] {
            let below = format!("{link}/x");
            let created = root.create_dirs_nofollow(&below, 0o755);
            assert_eq!(created.err().and_then(|e| e.raw_os_error()), loops);
            assert_eq!(root.lstat_nofollow(link).unwrap().kind, EntryType::Symlink);
            let stat = root.lstat_nofollow(&below);
            assert_eq!(stat.err().and_then(|e| e.raw_os_error()), loops);
            assert!(root.is_empty_dir(link).is_err());
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        let etc = root.create_dirs_nofollow("/etc", 0o755).unwrap();
        let mode_outside = || std::fs::metadata(outside.path()).unwrap().mode() & 0o7777;
        let before = mode_outside();
        assert!(etc.set_dir_mode("out", 0o750, None).is_err());
        assert_eq!(mode_outside(), before);
        etc.remove_file("out").unwrap();
        assert!(
            outside.path().is_dir(),
            "the link goes, not what it points at"
        );
        assert!(etc.lstat("..").is_err());
    }
}
