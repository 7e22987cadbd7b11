//! Configuration migration across an upgrade: the old OS captures the files its
//! migration list names into a bundle in its own state partition
//! (`imprint prepare-upgrade`); the new OS restores the ones its own list accepts.
//!
//! Lists (`/etc/imprint/migrate.list`) hold one path a line: an exact path, a
//! directory ending in `/` (taken recursively), or a pattern with `*`, `?` or `[...]`
//! in its last component. `#` starts a comment.

use crate::format::bundle::{self, Bundle, BundleError, Entry, EntryKind};
use crate::format::glob::glob_match;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    let path = root.join(LIST_PATH.trim_start_matches('/'));
    match fs::read_to_string(&path) {
        Ok(text) => parse_list(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(DEFAULT_LIST.iter().map(|s| s.to_string()).collect())
        }
        Err(e) => Err(io_err(&path)(e)),
    }
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

fn entry_for(root: &Path, abs: &str) -> Result<Option<Entry>, MigrateError> {
    let full = root.join(abs.trim_start_matches('/'));
    let meta = match fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&full)(e)),
    };
    let kind = if meta.file_type().is_symlink() {
        let target = fs::read_link(&full).map_err(io_err(&full))?;
        EntryKind::Symlink(target.to_string_lossy().into_owned())
    } else if meta.is_dir() {
        EntryKind::Dir
    } else if meta.is_file() {
        EntryKind::File(fs::read(&full).map_err(io_err(&full))?)
    } else {
        return Ok(None); // devices, sockets, fifos are not configuration
    };
    Ok(Some(Entry {
        path: abs.to_string(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: (meta.mtime(), meta.mtime_nsec() as u32),
        kind,
    }))
}

fn walk(root: &Path, abs: &str, out: &mut Vec<Entry>) -> Result<(), MigrateError> {
    let Some(entry) = entry_for(root, abs)? else {
        return Ok(());
    };
    let is_dir = entry.kind == EntryKind::Dir;
    out.push(entry);
    if is_dir {
        let full = root.join(abs.trim_start_matches('/'));
        let mut names: Vec<String> = fs::read_dir(&full)
            .map_err(io_err(&full))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            walk(root, &format!("{abs}/{name}"), out)?;
        }
    }
    Ok(())
}

/// Captures what `list` names in the OS rooted at `root` (usually `/`).
pub fn capture(root: &Path, list: &[String], now: u64) -> Result<Bundle, MigrateError> {
    let mut entries = Vec::new();
    for pattern in list {
        if let Some(dir) = pattern.strip_suffix('/') {
            walk(root, dir, &mut entries)?;
            continue;
        }
        let (parent, last) = pattern.rsplit_once('/').unwrap_or(("", pattern));
        if last.contains(['*', '?', '[']) {
            let dir = root.join(parent.trim_start_matches('/'));
            let Ok(read) = fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = read
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| glob_match(last.as_bytes(), n.as_bytes()))
                .collect();
            names.sort();
            for name in names {
                if let Some(e) = entry_for(root, &format!("{parent}/{name}"))? {
                    entries.push(e);
                }
            }
        } else if let Some(e) = entry_for(root, pattern)? {
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
                replace(&tmp, &full)?;
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
