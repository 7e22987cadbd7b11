//! What the engine writes to: a block device or a plain file, behind a small trait so
//! tests can watch every write.

use crate::sys::{self, FileKind};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub trait Target: Sync {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the range read back as zeros.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()>;
    /// True when the range is known to read back zeros without reading it (a hole
    /// in a sparse file). False means "unknown", not "non-zero".
    fn known_zero(&self, _offset: u64, _len: u64) -> bool {
        false
    }
    fn sync(&self) -> io::Result<()>;
    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("opening target {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("target {path} is in use (mounted or claimed by another program); unmount it first")]
    Busy { path: PathBuf },
    #[error("target {path} is {size} bytes but the image needs {needed}; choose a larger disk")]
    TooSmall {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("target {path} is neither a block device nor a regular file")]
    NotADisk { path: PathBuf },
}

pub struct DiskTarget {
    file: File,
    kind: FileKind,
    size: u64,
    path: PathBuf,
}

impl DiskTarget {
    /// Opens `path` for writing an image of `needed` bytes. A missing or empty regular
    /// file is created (sparse) at the image size; an existing non-empty file or a
    /// block device must already be large enough, and is not touched otherwise.
    pub fn open_for_write(path: &Path, needed: u64) -> Result<DiskTarget, TargetError> {
        let open_err = |source: io::Error| TargetError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(open_err)?,
            Err(e) => return Err(open_err(e)),
            Ok(meta) if meta.file_type().is_file() => OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(open_err)?,
            Ok(_) => sys::open_block_device_exclusive(path).map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                    TargetError::Busy {
                        path: path.to_path_buf(),
                    }
                } else {
                    open_err(e)
                }
            })?,
        };
        let kind = sys::kind_of(&file).map_err(open_err)?;
        let mut size = sys::size_of(&file).map_err(open_err)?;
        match kind {
            FileKind::Regular if size == 0 => {
                file.set_len(needed).map_err(open_err)?;
                size = needed;
            }
            FileKind::Regular | FileKind::BlockDevice => {}
            FileKind::Other => {
                return Err(TargetError::NotADisk {
                    path: path.to_path_buf(),
                });
            }
        }
        if size < needed {
            return Err(TargetError::TooSmall {
                path: path.to_path_buf(),
                size,
                needed,
            });
        }
        Ok(DiskTarget {
            file,
            kind,
            size,
            path: path.to_path_buf(),
        })
    }

    /// Opens `path` read-only (for verifying).
    pub fn open_for_read(path: &Path) -> Result<DiskTarget, TargetError> {
        let open_err = |source: io::Error| TargetError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let kind = sys::kind_of(&file).map_err(open_err)?;
        if kind == FileKind::Other {
            return Err(TargetError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        let size = sys::size_of(&file).map_err(open_err)?;
        Ok(DiskTarget {
            file,
            kind,
            size,
            path: path.to_path_buf(),
        })
    }
}

impl Target for DiskTarget {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        sys::start_writeback(&self.file, offset, buf.len() as u64);
        Ok(())
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        sys::zero_range(&self.file, self.kind, offset, len)
    }

    fn known_zero(&self, offset: u64, len: u64) -> bool {
        if self.kind != FileKind::Regular {
            return false;
        }
        match sys::next_data(&self.file, offset) {
            Ok(None) => true,
            Ok(Some(data)) => data >= offset + len,
            Err(_) => false,
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A byte range of a file or disk (a partition) as a `Read + Write + Seek`
/// stream, for formats that work on streams (the state record).
pub struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Window<'a> {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl io::Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl io::Seek for Window<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let new = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

impl DiskTarget {
    pub fn file(&self) -> &File {
        &self.file
    }
}
