//! `imprint repo check`: every ref names a manifest, every manifest decodes, every
//! chunk a manifest references is present, decompresses and hashes right.

use super::{LocalRepo, RepoError, chunk_path, manifest_path};
use crate::format::digest::Digest;
use crate::format::manifest::{ChunkKind, Manifest};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct CheckReport {
    pub manifests: usize,
    pub chunks_checked: usize,
    /// One line per problem found, e.g. "missing chunk sha256:… (used by …)".
    pub problems: Vec<String>,
}

pub fn check(repo: &LocalRepo, jobs: usize) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();
    for (name, tag, digest) in repo.list_refs()? {
        if !repo.exists(&manifest_path(&digest)) {
            report
                .problems
                .push(format!("ref {name}:{tag} names missing manifest {digest}"));
        }
    }
    // Each distinct chunk once, with its expected length and one manifest using it.
    let mut wanted: BTreeMap<Digest, (u32, u32, [u8; 32], Digest)> = BTreeMap::new();
    for digest in repo.list_manifests()? {
        report.manifests += 1;
        let bytes = repo.read(&manifest_path(&digest))?;
        if Digest::of(&bytes) != digest {
            report.problems.push(format!(
                "manifest {digest} is corrupt: its content hashes differently"
            ));
            continue;
        }
        let manifest = match Manifest::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(format!("manifest {digest}: {e}"));
                continue;
            }
        };
        for chunk in &manifest.chunks {
            if let ChunkKind::Data {
                sha256,
                blake3,
                stored_size,
            } = chunk.kind
            {
                wanted
                    .entry(sha256)
                    .or_insert((chunk.length, stored_size, blake3, digest));
            }
        }
    }
    let wanted: Vec<_> = wanted.into_iter().collect();
    let problems = Mutex::new(Vec::new());
    let _ = crate::parallel::for_each_index(
        0..wanted.len(),
        jobs,
        || (),
        |(), i| {
            let (sha, (length, stored_size, blake3, used_by)) = &wanted[i];
            if let Err(problem) = check_chunk(repo, sha, *length, *stored_size, blake3)
                && let Ok(mut p) = problems.lock()
            {
                p.push((*sha, format!("{problem} (used by manifest {used_by})")));
            }
            Ok::<(), ()>(())
        },
    );
    let mut chunk_problems = problems.into_inner().unwrap_or_default();
    chunk_problems.sort();
    report
        .problems
        .extend(chunk_problems.into_iter().map(|(_, p)| p));
    report.chunks_checked = wanted.len();
    Ok(report)
}

/// What is wrong with a stored chunk, against what a manifest says of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkProblem {
    #[error("missing chunk {0}")]
    Missing(Digest),
    #[error("unreadable chunk {0}: {1}")]
    Unreadable(Digest, String),
    /// Present but not what the manifest says (its size, content or digests).
    #[error("{0}")]
    Wrong(String),
}

/// Checks the stored chunk `sha` against a manifest's entry for it: its
/// size, then that it decompresses to `length` bytes whose SHA-256 and BLAKE3
/// are the manifest's. A file of another size is not read.
pub(super) fn check_chunk(
    repo: &LocalRepo,
    sha: &Digest,
    length: u32,
    stored_size: u32,
    blake3: &[u8; 32],
) -> Result<(), ChunkProblem> {
    let path = repo.path(&chunk_path(sha));
    let unreadable = |e: std::io::Error| ChunkProblem::Unreadable(*sha, e.to_string());
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ChunkProblem::Missing(*sha));
        }
        Err(e) => return Err(unreadable(e)),
    };
    let size = file.metadata().map_err(unreadable)?.len();
    if size != u64::from(stored_size) {
        return Err(ChunkProblem::Wrong(format!(
            "corrupt chunk {sha}: {size} bytes stored, manifest says {stored_size}"
        )));
    }
    let mut stored = Vec::with_capacity(stored_size as usize);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&mut file, u64::from(stored_size)),
        &mut stored,
    )
    .map_err(unreadable)?;
    let content = zstd::bulk::decompress(&stored, length as usize).map_err(|e| {
        ChunkProblem::Wrong(format!("corrupt chunk {sha}: does not decompress ({e})"))
    })?;
    if content.len() != length as usize || Digest::of(&content) != *sha {
        return Err(ChunkProblem::Wrong(format!(
            "corrupt chunk {sha}: content does not match its name"
        )));
    }
    if blake3::hash(&content).as_bytes() != blake3 {
        return Err(ChunkProblem::Wrong(format!(
            "chunk {sha}: the manifest's blake3 digest does not match its content"
        )));
    }
    Ok(())
}
