//! Configuration migration across an upgrade: the files the old OS's migration
//! list names are captured into a bundle in its own state partition (by
//! `imprint prepare-upgrade` in the old OS, or by the deploy environment from the
//! old OS's root at the upgrade); the new OS restores the ones its own list
//! accepts.
//!
//! Lists (`/etc/imprint/migrate.list`) hold one path a line: an exact path, a
//! directory ending in `/` (taken recursively), or a pattern with `*`, `?` or `[...]`
//! in its last component. `#` starts a comment.

use crate::format::bundle::{self, Bundle, BundleError, BundleRef, Entry, EntryKind};
use crate::format::glob::{glob_match, glob_match_path};
use crate::statepart::StateDisk;
use crate::sys::{EntryType, Root, RootDir};
use std::collections::HashSet;
use std::io::{self, Write};
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
    #[error(
        "bundle entry {path} lies beneath {parent}, which the bundle restores as a link or a file, not a directory; the bundle is refused and nothing was restored"
    )]
    BeneathBundleEntry { path: String, parent: String },
    #[error(
        "{path}: {link} is a symbolic link in the target root, and restoring never follows links; make {link} a real directory or remove {path} from /etc/imprint/migrate.list (nothing was restored)"
    )]
    LinkInTarget { path: String, link: String },
    #[error(
        "{path}: {parent} in the target root is not a directory; remove it or remove {path} from /etc/imprint/migrate.list (nothing was restored)"
    )]
    NotADirectory { path: String, parent: String },
    #[error(
        "{path} is a directory with contents in the target root, where the bundle holds a file or a link; it is not removed: empty it or remove {path} from /etc/imprint/migrate.list (nothing was restored)"
    )]
    DirectoryInTheWay { path: String },
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

/// Does the list accept `path` (a clean absolute path in the OS)? A pattern's
/// wildcards match within one path component, never across a `/`.
pub fn accepts(list: &[String], path: &str) -> bool {
    bundle::clean_path(path)
        && list.iter().any(|pattern| {
            if let Some(dir) = pattern.strip_suffix('/') {
                path == dir || path.starts_with(pattern.as_str())
            } else {
                glob_match_path(pattern, path)
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

/// Captures into `disk`'s state partition what the migration list in `root`
/// names, for the next OS to migrate: done by the installed OS at every
/// shutdown (`imprint prepare-upgrade`), and by the deploy environment from a
/// previous root that left no bundle. Returns the number of entries and where
/// the bundle went.
pub fn capture_into(root: &Root, disk: &StateDisk) -> anyhow::Result<(usize, BundleRef)> {
    let list = read_list_in(root)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bundle = capture(root, &list, now, disk.bundle_capacity())?;
    let reference = disk.store_bundle(&bundle)?;
    Ok((bundle.entries.len(), reference))
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
/// `root`, and returns their paths in the order restored (parents first).
///
/// Every path is resolved beneath `root` without following any symlink: a link
/// in the target root, or one the bundle itself restores, never redirects a
/// write, a change of mode or owner, or a removal. Links the bundle holds are
/// restored as links; their targets are data. Files get their owner and mode
/// before their content, are written to a temporary name and renamed, so each
/// is either old or new, and running this again gives the same result.
pub fn restore(
    root: &Path,
    bundle: &Bundle,
    accept: &[String],
) -> Result<Vec<String>, MigrateError> {
    if let Some(bad) = bundle.entries.iter().find(|e| !bundle::clean_path(&e.path)) {
        return Err(BundleError::BadPath(bad.path.clone()).into());
    }
    let target = Root::open(root).map_err(io_err(root))?;
    let mut entries: Vec<&Entry> = bundle
        .entries
        .iter()
        .filter(|e| accepts(accept, &e.path))
        .collect();
    // A path sorts before every path beneath it: each directory is in place
    // before what it holds. Entries of one path keep the bundle's order.
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    // All entries are checked before the first is written: an entry that
    // cannot be restored safely refuses the whole bundle rather than being
    // skipped, because a configuration restored in part (host keys without the
    // host name, say) is worse than none, and the error names what to change.
    check(&target, &entries)?;
    let mut restored = Vec::new();
    for entry in entries {
        restore_entry(&target, entry)?;
        restored.push(entry.path.clone());
    }
    Ok(restored)
}

/// Whether each entry (clean, sorted parents first) can be restored into
/// `target` without following a link and without removing anything that has
/// contents.
fn check(target: &Root, entries: &[&Entry]) -> Result<(), MigrateError> {
    let dirs: HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .map(|e| e.path.as_str())
        .collect();
    let not_dirs: HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind != EntryKind::Dir)
        .map(|e| e.path.as_str())
        .collect();
    for entry in entries {
        let path = &entry.path;
        let parts: Vec<&str> = path[1..].split('/').collect();
        let mut at = String::new();
        // Whether `at` may still exist in the target root: not once a part of
        // it is missing or is replaced by one of the bundle's directories.
        let mut present = true;
        for (i, part) in parts.iter().enumerate() {
            at.push('/');
            at.push_str(part);
            let last = i + 1 == parts.len();
            if !last && not_dirs.contains(at.as_str()) {
                return Err(MigrateError::BeneathBundleEntry {
                    path: path.clone(),
                    parent: at,
                });
            }
            if !present {
                continue;
            }
            let info = match target.lstat_nofollow(&at) {
                Ok(info) => info,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    present = false;
                    continue;
                }
                Err(e) => return Err(io_err(Path::new(&at))(e)),
            };
            match info.kind {
                EntryType::Symlink if !last || entry.kind == EntryKind::Dir => {
                    return Err(MigrateError::LinkInTarget {
                        path: path.clone(),
                        link: at,
                    });
                }
                EntryType::Dir if last && entry.kind != EntryKind::Dir => {
                    if !target.is_empty_dir(&at).map_err(io_err(Path::new(&at)))? {
                        return Err(MigrateError::DirectoryInTheWay { path: path.clone() });
                    }
                }
                EntryType::Dir => {}
                // Replaced: a file or link by the rename, anything else (not a
                // directory) by the bundle's directory.
                _ if last => {}
                _ if dirs.contains(at.as_str()) => present = false,
                _ => {
                    return Err(MigrateError::NotADirectory {
                        path: path.clone(),
                        parent: at,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Restores one entry checked by [`check`]. Everything goes through the parent
/// directory's descriptor by name, so a link put in place since the check is
/// refused, not followed.
fn restore_entry(target: &Root, entry: &Entry) -> Result<(), MigrateError> {
    let at = Path::new(&entry.path);
    let (parent, name) = entry.path.rsplit_once('/').unwrap_or(("", &entry.path));
    let dir = target
        .create_dirs_nofollow(parent, 0o755)
        .map_err(io_err(at))?;
    let owner = Some((entry.uid, entry.gid));
    match &entry.kind {
        EntryKind::Dir => {
            match dir.lstat(name) {
                Ok(info) if info.kind == EntryType::Dir => {}
                Ok(info) if info.kind == EntryType::Symlink => {
                    return Err(MigrateError::LinkInTarget {
                        path: entry.path.clone(),
                        link: entry.path.clone(),
                    });
                }
                // A file or anything else not a directory: the bundle's
                // directory takes its place.
                Ok(_) => {
                    dir.remove_file(name).map_err(io_err(at))?;
                    dir.make_dir(name, entry.mode & 0o777).map_err(io_err(at))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    dir.make_dir(name, entry.mode & 0o777).map_err(io_err(at))?;
                }
                Err(e) => return Err(io_err(at)(e)),
            }
            dir.set_dir_mode(name, entry.mode, owner)
                .map_err(io_err(at))?;
        }
        EntryKind::File(data) => {
            let tmp = temporary_name(name);
            // A leftover of an interrupted run.
            dir.remove_file(&tmp).map_err(io_err(at))?;
            let mut file = dir
                .create_file(&tmp, entry.mode, owner)
                .map_err(io_err(at))?;
            let mtime = std::time::UNIX_EPOCH
                + std::time::Duration::new(entry.mtime.0.max(0) as u64, entry.mtime.1);
            let written = file.write_all(data).and_then(|()| {
                // Best effort, as the owner: the content is what matters.
                let _ = file.set_modified(mtime);
                file.sync_all()
            });
            drop(file);
            if let Err(e) = written {
                let _ = dir.remove_file(&tmp);
                return Err(io_err(at)(e));
            }
            put_in_place(&dir, &tmp, name).map_err(io_err(at))?;
        }
        EntryKind::Symlink(link_target) => {
            let tmp = temporary_name(name);
            dir.remove_file(&tmp).map_err(io_err(at))?;
            dir.symlink(link_target, &tmp).map_err(io_err(at))?;
            let _ = dir.set_owner(&tmp, entry.uid, entry.gid);
            let _ = dir.set_mtime(&tmp, entry.mtime);
            put_in_place(&dir, &tmp, name).map_err(io_err(at))?;
        }
    }
    Ok(())
}

fn temporary_name(name: &str) -> String {
    format!(".{name}.imprint-tmp")
}

/// Renames `tmp` over `name` in `dir`. An empty directory there makes room (one
/// with contents stays, and the rename fails). A file mounted over (systemd's
/// read-only transient /etc/machine-id until it commits one) is unmounted, as
/// systemd's own commit does it, and replaced: detached, so a process that has
/// it open for a moment does not stand in the way, and again while mounts are
/// stacked there. If `tmp` cannot take the place, it is removed.
fn put_in_place(dir: &RootDir, tmp: &str, name: &str) -> io::Result<()> {
    let busy = |r: &io::Result<()>| matches!(r, Err(e) if e.kind() == io::ErrorKind::ResourceBusy);
    let mut placed = match dir.rename(tmp, name) {
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => dir
            .remove_empty_dir(name)
            .and_then(|()| dir.rename(tmp, name)),
        placed => placed,
    };
    for _ in 0..4 {
        if !busy(&placed) {
            break;
        }
        placed = dir.unmount(name).and_then(|()| dir.rename(tmp, name));
    }
    if placed.is_err() {
        let _ = dir.remove_file(tmp);
    }
    placed
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
