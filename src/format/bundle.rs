//! The configuration bundle an old OS captures before an upgrade: listed files with
//! contents, mode, owner, times, and symlinks as symlinks.
//!
//! It lives in one of the two bundle slots of the state partition
//! ([`crate::statepart`]). A new bundle is written to the slot the current record does not point at;
//! only then does a new record (itself double-buffered) point at it, so the previous
//! bundle stays valid until the new one is whole. The record carries the bundle's
//! length and sha256, so a damaged bundle is detected, never half-restored.

use super::digest::Digest;
use serde::{Deserialize, Serialize};

pub const BUNDLE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub version: u32,
    pub created_at: u64,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute path in the OS that captured it.
    pub path: String,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, Unix seconds and nanoseconds.
    pub mtime: (i64, u32),
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

/// Where a bundle sits in the state partition, as the record names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    pub slot: u8,
    pub len: u64,
    pub sha256: Digest,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error(
        "the configuration bundle is {size} bytes but the state partition holds at most {max}; shorten /etc/imprint/migrate.list (nothing was changed)"
    )]
    TooLarge { size: u64, max: u64 },
    #[error(
        "the configuration bundle is damaged (its hash does not match the record); it is not restored"
    )]
    Damaged,
    #[error("the configuration bundle is of format {0}, newer than this imprint understands")]
    UnknownVersion(u32),
    #[error("the configuration bundle cannot be decoded: {0}")]
    Malformed(String),
    #[error("bundle entry path {0:?} is not a clean absolute path")]
    BadPath(String),
}

/// A clean absolute path: no empty, `.` or `..` segments, no NUL.
pub fn clean_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

impl Bundle {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes `bytes`, which must hash to `sha256`; every path must be clean.
    pub fn decode(bytes: &[u8], sha256: &Digest) -> Result<Bundle, BundleError> {
        if Digest::of(bytes) != *sha256 {
            return Err(BundleError::Damaged);
        }
        match postcard::take_from_bytes::<u32>(bytes) {
            Ok((v, _)) if v != BUNDLE_VERSION => return Err(BundleError::UnknownVersion(v)),
            Ok(_) => {}
            Err(e) => return Err(BundleError::Malformed(e.to_string())),
        }
        let bundle: Bundle =
            postcard::from_bytes(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if let Some(bad) = bundle.entries.iter().find(|e| !clean_path(&e.path)) {
            return Err(BundleError::BadPath(bad.path.clone()));
        }
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            version: BUNDLE_VERSION,
            created_at: 1,
            entries: vec![
                Entry {
                    path: "/etc/hostname".into(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: (1_700_000_000, 5),
                    kind: EntryKind::File(b"node-1\n".to_vec()),
                },
                Entry {
                    path: "/etc/imprint/host.d".into(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: (0, 0),
                    kind: EntryKind::Dir,
                },
                Entry {
                    path: "/etc/localtime".into(),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                    mtime: (0, 0),
                    kind: EntryKind::Symlink("/usr/share/zoneinfo/UTC".into()),
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let b = sample();
        let bytes = b.encode();
        let sha = Digest::of(&bytes);
        assert_eq!(Bundle::decode(&bytes, &sha).unwrap(), b);
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert_eq!(Bundle::decode(&bad, &sha), Err(BundleError::Damaged));
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            assert!(Bundle::decode(part, &Digest::of(part)).is_err());
        }
    }

    #[test]
    fn unclean_paths_are_refused() {
        for p in ["etc/x", "/", "/etc/../x", "/etc//x", "/./x", "/a\0b"] {
            assert!(!clean_path(p), "{p}");
        }
        let mut b = sample();
        b.entries[0].path = "/etc/../../root/.ssh/authorized_keys".into();
        let bytes = b.encode();
        assert!(matches!(
            Bundle::decode(&bytes, &Digest::of(&bytes)),
            Err(BundleError::BadPath(_))
        ));
    }
}
