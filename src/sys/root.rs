//! Directory trees whose paths resolve inside them (an installed OS's root,
//! written from outside it): no link leads out, none is followed where a
//! write, mode change or removal lands.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

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

    /// Removes `dir/name` if it is an empty directory (not a link to one).
    /// Nothing there, or no `dir`, is success.
    pub fn remove_empty_dir(&self, dir: &str, name: &str) -> io::Result<()> {
        use rustix::fs::{AtFlags, OFlags};
        let parent = match self.resolve(dir, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&parent, component(name)?, AtFlags::REMOVEDIR) {
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
