//! What the engine writes to: a block device or a plain file, behind a small trait so
//! tests can watch every write.

use crate::sys::{self, FileKind};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub trait Target: Sync {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the range read back as zeros.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range was written a while ago (its writeback started then) and is
    /// not read again: a hint to drop it from caches.
    fn forget_written(&self, _offset: u64, _len: u64) {}
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

    fn forget_written(&self, offset: u64, len: u64) {
        sys::forget_written(&self.file, offset, len);
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

impl DiskTarget {
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn is_block_device(&self) -> bool {
        self.kind == FileKind::BlockDevice
    }
}

/// Reads the start of the disk at `path` into the page cache, in the
/// background, until dropped. Started while the manifest is fetched, it lets a
/// redeploy's scan, which reads the disk from its start, begin from memory
/// instead of waiting those round trips for the disk. It reads at most a
/// quarter of the memory available, so nothing it read is pushed out again
/// before the scan gets there; an error only ends it early.
pub struct Preread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Preread {
    /// A quarter of the memory available.
    fn limit() -> u64 {
        sys::available_memory().map_or(256 << 20, |m| m / 4)
    }

    pub fn start(path: &Path) -> Preread {
        let limit = Preread::limit();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("preread".into())
            .spawn(move || {
                let Ok(file) = File::open(&path) else {
                    return 0;
                };
                let mut buf = vec![0u8; 1 << 20];
                let mut at = 0;
                while at < limit && !stopped.load(Ordering::Relaxed) {
                    match file.read_at(&mut buf, at) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => at += n as u64,
                    }
                }
                at
            })
            .ok();
        Preread { stop, thread }
    }

    /// Stops it; the bytes it read.
    pub fn finish(mut self) -> u64 {
        self.stop_reading()
    }

    fn stop_reading(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Preread {
    fn drop(&mut self) {
        self.stop_reading();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_preread_reads_the_disk_from_its_start_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![7u8; (3 << 20) + 5]).unwrap();
        let preread = Preread::start(&path);
        let started = Instant::now();
        while !preread.thread.as_ref().unwrap().is_finished() {
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(preread.finish(), (3 << 20) + 5, "all of a small disk");

        assert_eq!(Preread::start(&dir.path().join("missing")).finish(), 0);

        // A device without end: it stops when told, well before its limit. Told
        // again with more time if its thread had not yet run on a busy machine.
        let limit = Preread::limit();
        let read = [20, 200, 2000]
            .into_iter()
            .map(|ms| {
                let endless = Preread::start(Path::new("/dev/zero"));
                std::thread::sleep(Duration::from_millis(ms));
                let asked = Instant::now();
                let read = endless.finish();
                assert!(asked.elapsed() < Duration::from_secs(1), "{read}");
                assert!(read < limit, "{read} of {limit}");
                read
            })
            .find(|&read| read > 0);
        assert!(read.is_some(), "nothing read from /dev/zero");
    }
}
