//! Writing newc ("070701") cpio archives, the format the kernel unpacks an
//! initramfs from.
//!
//! Archives are deterministic: entries sorted by path, every parent directory
//! listed explicitly before its children, times and owners zero, inode numbers
//! assigned in order. The same inputs always give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    body: Body,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    #[error("archive path {0:?} must be relative, without empty, . or .. segments or NUL bytes")]
    BadPath(String),
    #[error("archive path {0:?} is added twice with different content")]
    Conflict(String),
    #[error("{0:?} is a file, so it cannot hold {1:?}")]
    NotADirectory(String, String),
}

/// An archive being assembled in memory.
#[derive(Default, Debug)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.insert(path, S_IFDIR | (perm & 0o7777), Body::Dir)
    }

    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        self.insert(path, S_IFREG | (perm & 0o7777), Body::File(data))
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.insert(path, S_IFLNK | 0o777, Body::Symlink(target.to_string()))
    }

    pub fn add_char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert(
            path,
            S_IFCHR | (perm & 0o7777),
            Body::CharDevice { major, minor },
        )
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, path: &str, mode: u32, body: Body) -> Result<(), CpioError> {
        // The kernel reads names as C strings: a NUL would end one early.
        let bad = path.is_empty()
            || path.starts_with('/')
            || path.contains('\0')
            || path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
        if bad {
            return Err(CpioError::BadPath(path.to_string()));
        }
        // Parents first, as directories.
        let mut parent = String::new();
        let segments: Vec<&str> = path.split('/').collect();
        for seg in &segments[..segments.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(seg);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            mode: S_IFDIR | 0o755,
                            body: Body::Dir,
                        },
                    );
                }
                Some(Entry {
                    body: Body::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(CpioError::NotADirectory(parent, path.to_string()));
                }
            }
        }
        let entry = Entry { mode, body };
        match self.entries.get(path) {
            Some(existing) if *existing == entry => Ok(()),
            // An implicit parent directory may be given its real mode later.
            Some(Entry {
                body: Body::Dir, ..
            }) if entry.body == Body::Dir => {
                self.entries.insert(path.to_string(), entry);
                Ok(())
            }
            Some(_) => Err(CpioError::Conflict(path.to_string())),
            None => {
                self.entries.insert(path.to_string(), entry);
                Ok(())
            }
        }
    }

    /// Writes the archive, trailer included.
    pub fn write(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut written = 0u64;
        // BTreeMap order puts "a" before "a/b" and "a/b" before "a-c/..." only if
        // compared segment-wise; sort by segments so parents always come first.
        let mut paths: Vec<&String> = self.entries.keys().collect();
        paths.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        for (i, path) in paths.into_iter().enumerate() {
            let entry = &self.entries[path];
            let (data, rdev): (&[u8], (u32, u32)) = match &entry.body {
                Body::Dir => (&[], (0, 0)),
                Body::File(d) => (d, (0, 0)),
                Body::Symlink(t) => (t.as_bytes(), (0, 0)),
                Body::CharDevice { major, minor } => (&[], (*major, *minor)),
            };
            let nlink = if entry.body == Body::Dir { 2 } else { 1 };
            written += write_header(out, i as u32 + 1, entry.mode, nlink, data.len(), rdev, path)?;
            out.write_all(data)?;
            written += data.len() as u64;
            written += pad(out, data.len())?;
        }
        written += write_header(out, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        Ok(written)
    }
}

fn write_header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<u64> {
    let size = u32::try_from(size)
        .map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB, too big for cpio")))?;
    let header = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
         {maj:08X}{min:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        mtime = 0,
        maj = 0,
        min = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        namesize = name.len() + 1,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let len = header.len() + name.len() + 1;
    Ok(len as u64 + pad(out, len)?)
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<u64> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..n])?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name, mode, data, (rdev major, minor)
    type Read = (String, u32, Vec<u8>, (u32, u32));

    /// A minimal newc reader, enough to check what the writer produced.
    fn read(bytes: &[u8]) -> Vec<Read> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let h = &bytes[at..at + 110];
            assert_eq!(&h[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let rdev = (field(9), field(10));
            let name =
                String::from_utf8(bytes[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
            at += (110 + namesize).div_ceil(4) * 4;
            let data = bytes[at..at + size].to_vec();
            at += size.div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                return out;
            }
            out.push((name, mode, data, rdev));
        }
    }

    #[test]
    fn parents_first_sorted_and_deterministic() {
        let build = |order: &[usize]| {
            let mut a = Archive::new();
            for &i in order {
                match i {
                    0 => a
                        .add_file("lib/modules/6.1/kernel/virtio.ko", 0o644, vec![1; 5])
                        .unwrap(),
                    1 => a.add_file("init", 0o755, b"ELF".to_vec()).unwrap(),
                    2 => a.add_symlink("bin/sh", "../init").unwrap(),
                    3 => a.add_char_device("dev/console", 0o600, 5, 1).unwrap(),
                    _ => a.add_dir("lib-extra", 0o700).unwrap(),
                }
            }
            let mut out = Vec::new();
            a.write(&mut out).unwrap();
            out
        };
        let one = build(&[0, 1, 2, 3, 4]);
        assert_eq!(one, build(&[4, 3, 2, 1, 0]));
        let entries = read(&one);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/virtio.ko",
                "lib-extra"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("init").1, S_IFREG | 0o755);
        assert_eq!(get("init").2, b"ELF");
        assert_eq!(get("bin/sh").1, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").2, b"../init");
        assert_eq!(get("dev/console").3, (5, 1));
        assert_eq!(get("lib-extra").1, S_IFDIR | 0o700);
        assert_eq!(get("lib").1, S_IFDIR | 0o755);
    }

    #[test]
    fn bad_paths_and_conflicts() {
        let mut a = Archive::new();
        for bad in ["", "/init", "a//b", "a/./b", "../x", "a/.."] {
            assert_eq!(a.add_dir(bad, 0o755), Err(CpioError::BadPath(bad.into())));
        }
        a.add_file("x", 0o644, vec![1]).unwrap();
        a.add_file("x", 0o644, vec![1]).unwrap();
        assert_eq!(
            a.add_file("x", 0o644, vec![2]),
            Err(CpioError::Conflict("x".into()))
        );
        assert!(matches!(
            a.add_file("x/y", 0o644, vec![]),
            Err(CpioError::NotADirectory(..))
        ));
    }

    #[test]
    fn a_nul_in_a_path_is_refused() {
        // The kernel reads names as C strings: "a\0b" would unpack as "a".
        let mut a = Archive::new();
        for bad in ["\0", "a\0b", "dir/\0"] {
            assert_eq!(
                a.add_char_device(bad, 0o600, 0, 0),
                Err(CpioError::BadPath(bad.into()))
            );
        }
        assert!(a.is_empty());
    }

    #[test]
    fn empty_archive_is_just_a_trailer() {
        let mut out = Vec::new();
        let n = Archive::new().write(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert!(read(&out).is_empty());
    }
}
