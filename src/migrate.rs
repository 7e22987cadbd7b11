//! Configuration migration across an upgrade: the files the old OS's migration
//! list names are captured into a bundle in its own state partition (by
//! `imprint prepare-upgrade` in the old OS, or by the deploy environment from the
//! old OS's root at the upgrade); the new OS restores the ones its own list
//! accepts.
//!
//! Lists (`/etc/imprint/migrate.list`) hold one path a line: an exact path, a
//! directory ending in `/` (taken recursively), or a pattern with `*`, `?` or `[...]`
//! in its last component. `#` starts a comment.

use crate::format::bundle::{self, Bundle, BundleError, Entry, EntryKind};
use crate::format::glob::glob_match;
use crate::sys::{EntryType, Root};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const LIST_PATH: &str = "/etc/imprint/migrate.list";

/// Used when an OS has no migration list of its own.
pub const DEFAULT_LIST: &[&str] = &[
    "/etc/hostname",
    "/etc/hosts",
    "/etc/machine-id",
    "/etc/ssh/ssh_host_*",
    "/etc/imprint/host.d/",
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(
        "capturing {path} would make the configuration bundle larger than the {max} bytes the state partition holds; shorten /etc/imprint/migrate.list"
    )]
    TooLarge { path: String, max: u64 },
    #[error("migration list line {line}: {text:?} must be an absolute path")]
    BadList { line: usize, text: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses a migration list.
pub fn parse_list(text: &str) -> Result<Vec<String>, MigrateError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bare = line.trim_end_matches('/');
        if !bundle::clean_path(bare) {
            return Err(MigrateError::BadList {
                line: i + 1,
                text: line.to_string(),
            });
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// Reads the migration list of the OS rooted at `root`, or the default one.
pub fn read_list(root: &Path) -> Result<Vec<String>, MigrateError> {
    read_list_in(&Root::open(root).map_err(io_err(root))?)
}

/// Does the list accept `path` (an absolute path in the OS)?
pub fn accepts(list: &[String], path: &str) -> bool {
    list.iter().any(|pattern| {
        if let Some(dir) = pattern.strip_suffix('/') {
            path == dir || path.starts_with(pattern.as_str())
        } else {
            glob_match(pattern.as_bytes(), path.as_bytes())
        }
    })
}

/// Most names read from one directory while capturing.
const DIR_LIMIT: usize = 100_000;

/// Bounds what a capture may read: the bundle's room in the state partition.
struct Budget {
    left: u64,
    max: u64,
}

impl Budget {
    fn take(&mut self, path: &str, bytes: u64) -> Result<(), MigrateError> {
        // Each entry costs its path and a fixed header in the bundle too.
        let cost = bytes + path.len() as u64 + 64;
        self.left = self.left.checked_sub(cost).ok_or(MigrateError::TooLarge {
            path: path.to_string(),
            max: self.max,
        })?;
        Ok(())
    }
}

fn entry_for(root: &Root, abs: &str, budget: &mut Budget) -> Result<Option<Entry>, MigrateError> {
    let at = Path::new(abs);
    let info = match root.lstat(abs) {
        Ok(i) => i,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(at)(e)),
    };
    let kind = match info.kind {
        EntryType::Symlink => EntryKind::Symlink(root.read_link(abs).map_err(io_err(at))?),
        EntryType::Dir => EntryKind::Dir,
        EntryType::File => {
            budget.take(abs, info.size)?;
            // Read one byte past the budget: a file that grew is caught too.
            let data = root.read(abs, info.size + 1).map_err(io_err(at))?;
            if data.len() as u64 > info.size {
                budget.take(abs, data.len() as u64)?;
            }
            EntryKind::File(data)
        }
        EntryType::Other => return Ok(None), // devices, sockets, fifos are not configuration
    };
    budget.take(abs, 0)?;
    Ok(Some(Entry {
        path: abs.to_string(),
        mode: info.mode,
        uid: info.uid,
        gid: info.gid,
        mtime: info.mtime,
        kind,
    }))
}

fn walk(
    root: &Root,
    abs: &str,
    out: &mut Vec<Entry>,
    budget: &mut Budget,
) -> Result<(), MigrateError> {
    let Some(entry) = entry_for(root, abs, budget)? else {
        return Ok(());
    };
    let is_dir = entry.kind == EntryKind::Dir;
    out.push(entry);
    if is_dir {
        let names = root.list(abs, DIR_LIMIT).map_err(io_err(Path::new(abs)))?;
        for name in names {
            walk(root, &format!("{abs}/{name}"), out, budget)?;
        }
    }
    Ok(())
}

/// Captures what `list` names in the OS whose root is `root`: the running OS's
/// `/`, or a previous OS's root mounted in the deploy environment. Paths resolve
/// inside that root (its links never lead out of it); at most `max_bytes` are
/// read.
pub fn capture(
    root: &Root,
    list: &[String],
    now: u64,
    max_bytes: u64,
) -> Result<Bundle, MigrateError> {
    let mut budget = Budget {
        left: max_bytes,
        max: max_bytes,
    };
    let mut entries = Vec::new();
    for pattern in list {
        if let Some(dir) = pattern.strip_suffix('/') {
            walk(root, dir, &mut entries, &mut budget)?;
            continue;
        }
        let (parent, last) = pattern.rsplit_once('/').unwrap_or(("", pattern));
        if last.contains(['*', '?', '[']) {
            let parent_dir = if parent.is_empty() { "/" } else { parent };
            let Ok(names) = root.list(parent_dir, DIR_LIMIT) else {
                continue;
            };
            for name in names
                .iter()
                .filter(|n| glob_match(last.as_bytes(), n.as_bytes()))
            {
                if let Some(e) = entry_for(root, &format!("{parent}/{name}"), &mut budget)? {
                    entries.push(e);
                }
            }
        } else if let Some(e) = entry_for(root, pattern, &mut budget)? {
            entries.push(e);
        }
    }
    entries.dedup_by(|a, b| a.path == b.path);
    Ok(Bundle {
        version: bundle::BUNDLE_VERSION,
        created_at: now,
        entries,
    })
}

/// Reads the migration list of the OS whose root is `root` (resolved inside
/// it), or the default one.
pub fn read_list_in(root: &Root) -> Result<Vec<String>, MigrateError> {
    match root.read(LIST_PATH, 1 << 20) {
        Ok(bytes) => parse_list(&String::from_utf8_lossy(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(DEFAULT_LIST.iter().map(|s| s.to_string()).collect())
        }
        Err(e) => Err(io_err(Path::new(LIST_PATH))(e)),
    }
}

/// Restores the entries of `bundle` that `accept` allows into the OS rooted at
/// `root`. Files are written to a temporary name and renamed, so each is either
/// old or new, and running this again gives the same result.
pub fn restore(
    root: &Path,
    bundle: &Bundle,
    accept: &[String],
) -> Result<Vec<String>, MigrateError> {
    let mut restored = Vec::new();
    for entry in &bundle.entries {
        if !accepts(accept, &entry.path) {
            continue;
        }
        let full = root.join(entry.path.trim_start_matches('/'));
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let tmp = full.with_file_name(format!(
            ".{}.imprint-tmp",
            full.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let _ = fs::remove_file(&tmp);
        match &entry.kind {
            EntryKind::Dir => {
                if !full.is_dir() {
                    let _ = fs::remove_file(&full);
                    fs::create_dir_all(&full).map_err(io_err(&full))?;
                }
                fs::set_permissions(&full, fs::Permissions::from_mode(entry.mode))
                    .map_err(io_err(&full))?;
                let _ = std::os::unix::fs::lchown(&full, Some(entry.uid), Some(entry.gid));
            }
            EntryKind::File(data) => {
                let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
                f.write_all(data).map_err(io_err(&tmp))?;
                f.set_permissions(fs::Permissions::from_mode(entry.mode))
                    .map_err(io_err(&tmp))?;
                let _ = std::os::unix::fs::fchown(&f, Some(entry.uid), Some(entry.gid));
                let mtime = std::time::UNIX_EPOCH
                    + std::time::Duration::new(entry.mtime.0.max(0) as u64, entry.mtime.1);
                let _ = f.set_modified(mtime);
                f.sync_all().map_err(io_err(&tmp))?;
                drop(f);
                match replace(&tmp, &full) {
                    // A file mounted over (systemd's read-only transient
                    // /etc/machine-id until it commits one): the mount goes, as
                    // systemd's own commit does it, and the file is replaced.
                    Err(MigrateError::Io { source, .. })
                        if source.raw_os_error()
                            == Some(rustix::io::Errno::BUSY.raw_os_error()) =>
                    {
                        crate::sys::unmount(&full.to_string_lossy()).map_err(io_err(&full))?;
                        replace(&tmp, &full)?;
                    }
                    result => result?,
                }
            }
            EntryKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp))?;
                let _ = std::os::unix::fs::lchown(&tmp, Some(entry.uid), Some(entry.gid));
                replace(&tmp, &full)?;
            }
        }
        restored.push(entry.path.clone());
    }
    Ok(restored)
}

fn replace(tmp: &Path, full: &Path) -> Result<(), MigrateError> {
    if full.is_dir() && !full.is_symlink() {
        fs::remove_dir_all(full).map_err(io_err(full))?;
    }
    fs::rename(tmp, full).map_err(io_err(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let list = parse_list(
            "# comment\n/etc/hostname\n\n/etc/ssh/ssh_host_*  # keys\n/etc/imprint/host.d/\n",
        )
        .unwrap();
        assert_eq!(
            list,
            [
                "/etc/hostname",
                "/etc/ssh/ssh_host_*",
                "/etc/imprint/host.d/"
            ]
        );
        assert!(accepts(&list, "/etc/hostname"));
        assert!(accepts(&list, "/etc/ssh/ssh_host_ed25519_key"));
        assert!(accepts(&list, "/etc/imprint/host.d/a/b"));
        assert!(accepts(&list, "/etc/imprint/host.d"));
        assert!(!accepts(&list, "/etc/passwd"));
        assert!(!accepts(&list, "/etc/imprint/host.dx"));
        assert!(matches!(
            parse_list("etc/hostname"),
            Err(MigrateError::BadList { line: 1, .. })
        ));
        assert!(matches!(
            parse_list("/ok\n/../etc"),
            Err(MigrateError::BadList { line: 2, .. })
        ));
    }
}
