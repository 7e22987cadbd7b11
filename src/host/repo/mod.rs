//! The repository on the host: a directory of immutable, content-addressed files
//! laid out as [`crate::format::repository`] says.
//!
//! Every file is written under a temporary name in its final directory, synced, and
//! renamed into place, so a crash never exposes a partial file. A rename is durable
//! only once its directory is synced too; `image add` orders those syncs so that
//! what a ref names is on disk before the ref is (see [`add_image`]).

mod add;
mod check;
mod receive;

pub use add::{AddOptions, AddReport, Signing, add_image};
pub use check::{CheckReport, check};
pub use receive::{ChunkCheck, ChunkRefusal, CommitError, commit, missing};

use crate::format::digest::{Digest, check_name};
use crate::format::manifest::Manifest;
use crate::format::repository::{chunk_path, manifest_path, ref_path, ref_text, signature_path};
use crate::format::signature::{self, Release};
use ed25519_dalek::SigningKey;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not a repository directory (create it first)")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Name(#[from] crate::format::digest::RefError),
    #[error("image {0} is empty: nothing to add")]
    EmptyImage(PathBuf),
    #[error(transparent)]
    Gpt(#[from] crate::format::gpt::GptError),
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        source: crate::format::manifest::ManifestError,
    },
    #[error("ref {0} is malformed: {1}")]
    BadRef(String, crate::format::digest::DigestError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A repository directory on a local filesystem.
pub struct LocalRepo {
    root: PathBuf,
    /// The durability steps taken, in order, when a test watches them.
    journal: Option<Mutex<Vec<Durable>>>,
}

/// A step that makes a write durable, as a test watching the repository sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Durable {
    /// The file (by its final name) had its content synced, under its temporary name.
    File(String),
    /// The file was renamed to its final name.
    Rename(String),
    /// The directory was synced: the renames and creations in it are durable.
    Dir(String),
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What [`LocalRepo::write_once`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The file is new.
    New,
    /// It was there already, and left as it was.
    Present,
}

/// Renames `from` to `to` unless `to` exists; false when it does. Where the
/// file system cannot refuse to replace in the rename itself, an existing
/// `to` is looked for first (two writers of one content-named file then
/// race, and the later one's equal content wins).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if to.exists() {
                return Ok(false);
            }
            fs::rename(from, to).map(|()| true)
        }
        Err(e) => Err(e.into()),
    }
}

impl LocalRepo {
    /// Opens (and lays out) a repository at `root`, which must exist.
    pub fn open(root: &Path) -> Result<LocalRepo, RepoError> {
        if !root.is_dir() {
            return Err(RepoError::NotADirectory(root.to_path_buf()));
        }
        Ok(LocalRepo {
            root: root.to_path_buf(),
            journal: None,
        })
    }

    /// Like [`LocalRepo::open`], noting every durability step for [`Self::journal`].
    #[cfg(test)]
    pub(crate) fn open_watched(root: &Path) -> Result<LocalRepo, RepoError> {
        Ok(LocalRepo {
            journal: Some(Mutex::new(Vec::new())),
            ..LocalRepo::open(root)?
        })
    }

    /// The durability steps taken so far, in order (empty unless opened watched).
    #[cfg(test)]
    pub(crate) fn journal(&self) -> Vec<Durable> {
        self.journal
            .as_ref()
            .and_then(|j| j.lock().ok().map(|j| j.clone()))
            .unwrap_or_default()
    }

    fn note(&self, step: impl FnOnce() -> Durable) {
        if let Some(Ok(mut journal)) = self.journal.as_ref().map(|j| j.lock()) {
            journal.push(step());
        }
    }

    /// Like [`LocalRepo::open`], creating the directory first if it is missing.
    pub fn open_or_create(root: &Path) -> Result<LocalRepo, RepoError> {
        std::fs::create_dir_all(root).map_err(|source| RepoError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        LocalRepo::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).is_file()
    }

    pub fn read(&self, rel: &str) -> Result<Vec<u8>, RepoError> {
        let path = self.path(rel);
        fs::read(&path).map_err(io_err(&path))
    }

    /// Writes `bytes` to `rel` atomically: temporary file, fsync, rename. The
    /// rename is durable once `rel`'s directory is synced ([`Self::sync_dir`]),
    /// which is left to the caller so that many files share one directory sync.
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), RepoError> {
        let (path, tmp) = self.temporary(rel)?;
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            self.note(|| Durable::File(rel.to_string()));
            fs::rename(&tmp, &path)?;
            self.note(|| Durable::Rename(rel.to_string()));
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err(&path))
    }

    /// `rel`'s full path, and a temporary name beside it (its directory made).
    fn temporary(&self, rel: &str) -> Result<(PathBuf, PathBuf), RepoError> {
        let path = self.path(rel);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{name}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        Ok((path, tmp))
    }

    /// Writes `rel`, a file named by its content, unless it is there already:
    /// `fill` writes it under a temporary name in its final directory; then it
    /// is synced, renamed into place without replacing one that appeared
    /// meanwhile, and its directory is synced. A file there already is left
    /// as it is, whatever its compression: a manifest may have given its size.
    /// When `fill` fails, nothing is left behind.
    pub fn write_once<E: From<RepoError>>(
        &self,
        rel: &str,
        fill: impl FnOnce(&mut File) -> Result<(), E>,
    ) -> Result<Stored, E> {
        let (path, tmp) = self.temporary(rel)?;
        let mut file = File::create(&tmp).map_err(io_err(&path))?;
        let filled = fill(&mut file).and_then(|()| {
            file.sync_all().map_err(|e| E::from(io_err(&path)(e)))?;
            self.note(|| Durable::File(rel.to_string()));
            Ok(())
        });
        drop(file);
        if let Err(e) = filled {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let placed = match rename_no_replace(&tmp, &path) {
            Ok(placed) => placed,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io_err(&path)(e).into());
            }
        };
        if !placed {
            let _ = fs::remove_file(&tmp);
            return Ok(Stored::Present);
        }
        self.note(|| Durable::Rename(rel.to_string()));
        self.sync_dir(rel.rsplit_once('/').map_or("", |(dir, _)| dir))?;
        Ok(Stored::New)
    }

    /// Creates `rel_dir` and its missing parents (their entries become durable
    /// when their parents are synced).
    pub fn create_dir(&self, rel_dir: &str) -> Result<(), RepoError> {
        let path = self.path(rel_dir);
        fs::create_dir_all(&path).map_err(io_err(&path))
    }

    /// Makes renames and creations in `rel_dir` durable.
    pub fn sync_dir(&self, rel_dir: &str) -> Result<(), RepoError> {
        let path = self.path(rel_dir);
        File::open(&path)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&path))?;
        self.note(|| Durable::Dir(rel_dir.to_string()));
        Ok(())
    }

    /// Signs the manifest `digest` as release `name:tag`, issued at `issued`
    /// (Unix seconds), expiring at `expires` if given: its line in the `.sig`
    /// file replaces this key's earlier line for the tag; other signers' lines
    /// stay. The caller syncs the directory.
    pub fn sign(
        &self,
        key: &SigningKey,
        name: &str,
        tag: &str,
        digest: &Digest,
        issued: u64,
        expires: Option<u64>,
    ) -> Result<Release, RepoError> {
        let size = fs::metadata(self.path(&manifest_path(digest)))
            .map_err(io_err(&self.path(&manifest_path(digest))))?
            .len();
        let release = Release {
            name: name.to_string(),
            tag: tag.to_string(),
            digest: *digest,
            size,
            issued,
            expires,
        };
        let sig_rel = signature_path(digest);
        let old = match self.read(&sig_rel) {
            Ok(old) => String::from_utf8_lossy(&old).into_owned(),
            Err(_) => String::new(),
        };
        let mut text = signature::without(&old, &key.verifying_key(), tag);
        text.push_str(&signature::sign_line(key, &release));
        self.write_atomic(&sig_rel, text.as_bytes())?;
        Ok(release)
    }

    pub fn resolve_ref(&self, name: &str, tag: &str) -> Result<Digest, RepoError> {
        check_name("image name", name)?;
        check_name("tag", tag)?;
        let rel = ref_path(name, tag);
        let text = self.read(&rel)?;
        String::from_utf8_lossy(&text)
            .parse()
            .map_err(|e| RepoError::BadRef(format!("{name}:{tag}"), e))
    }

    pub fn load_manifest(&self, digest: &Digest) -> Result<Manifest, RepoError> {
        let bytes = self.read(&manifest_path(digest))?;
        Manifest::decode(&bytes).map_err(|source| RepoError::Manifest {
            digest: *digest,
            source,
        })
    }

    /// All refs as (name, tag, digest), sorted.
    pub fn list_refs(&self) -> Result<Vec<(String, String, Digest)>, RepoError> {
        let mut out = Vec::new();
        let refs = self.path("refs");
        if !refs.is_dir() {
            return Ok(out);
        }
        for name in read_dir_sorted(&refs)? {
            let dir = refs.join(&name);
            if !dir.is_dir() || check_name("image name", &name).is_err() {
                continue;
            }
            for tag in read_dir_sorted(&dir)? {
                if check_name("tag", &tag).is_err() {
                    continue;
                }
                let digest = self.resolve_ref(&name, &tag)?;
                out.push((name.clone(), tag, digest));
            }
        }
        Ok(out)
    }

    /// Digests of every manifest stored, sorted.
    pub fn list_manifests(&self) -> Result<Vec<Digest>, RepoError> {
        let dir = self.path("manifests/sha256");
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        Ok(read_dir_sorted(&dir)?
            .iter()
            .filter_map(|n| Digest::from_hex(n).ok())
            .collect())
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<String>, RepoError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}
