//! What a capture sends the repository (`imprint serve`'s `/capture/`): which
//! chunks it lacks, each chunk checked as it arrives, and a manifest
//! published, as `image add` publishes one, once every chunk it names is
//! there and right.

use super::add::{Signing, publish};
use super::check::{ChunkProblem, check_chunk};
use super::{LocalRepo, RepoError, chunk_path};
use crate::format::digest::{Digest, RefError, check_name};
use crate::format::manifest::{
    ChunkKind, MAX_CHUNK_SIZE, Manifest, ManifestError, max_stored_size,
};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::sync::Mutex;
use zstd::stream::raw::{Decoder, Operation};

/// The digests among `asked` whose chunk the repository does not hold, in the
/// order asked.
pub fn missing(repo: &LocalRepo, asked: &[Digest]) -> Vec<Digest> {
    asked
        .iter()
        .filter(|d| !repo.path(&chunk_path(d)).is_file())
        .copied()
        .collect()
}

/// Why an uploaded chunk is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRefusal {
    #[error("the body is not a zstd frame ({0}); a chunk is stored as one zstd frame")]
    NotZstd(String),
    #[error(
        "the chunk decompresses to more than {MAX_CHUNK_SIZE} bytes, more than a chunk can hold"
    )]
    TooLarge,
    #[error("the body holds more than one zstd frame; a chunk is stored as exactly one")]
    MoreThanOneFrame,
    #[error("the zstd frame ends before its end: the body is cut short")]
    Incomplete,
    #[error("chunk does not match its name: its content hashes to {0}")]
    Mismatch(Digest),
}

/// Checks a chunk's stored form as it arrives: one zstd frame, decompressed
/// as it comes and its output counted (the size a frame declares is never
/// trusted), whose content must hash to the chunk's name. It holds zstd's
/// window and a buffer of output, never the chunk.
pub struct ChunkCheck {
    want: Digest,
    decoder: Decoder<'static>,
    sha: Sha256,
    out: Vec<u8>,
    produced: u64,
    /// The frame is decoded and its output all taken.
    ended: bool,
}

/// Output taken from zstd at a time (its own advice, `ZSTD_DStreamOutSize`).
const OUT: usize = 128 << 10;

impl ChunkCheck {
    /// A check of the chunk named `want`; an error only when zstd cannot get
    /// its memory.
    pub fn new(want: Digest) -> std::io::Result<ChunkCheck> {
        Ok(ChunkCheck {
            want,
            decoder: Decoder::new()?,
            sha: Sha256::new(),
            out: vec![0; OUT],
            produced: 0,
            ended: false,
        })
    }

    /// The next bytes of the body.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), ChunkRefusal> {
        while !input.is_empty() {
            if self.ended {
                return Err(ChunkRefusal::MoreThanOneFrame);
            }
            let status = self
                .decoder
                .run_on_buffers(input, &mut self.out)
                .map_err(|e| ChunkRefusal::NotZstd(e.to_string()))?;
            if status.bytes_read == 0 && status.bytes_written == 0 {
                return Err(ChunkRefusal::NotZstd("the decoder made no progress".into()));
            }
            self.take(status.bytes_written)?;
            input = &input[status.bytes_read..];
            // zstd says 0 once a frame is decoded and all its output given.
            self.ended = status.remaining == 0;
        }
        Ok(())
    }

    /// The body has ended: the frame must have too, and its content hash
    /// to the chunk's name.
    pub fn finish(mut self) -> Result<(), ChunkRefusal> {
        while !self.ended {
            let status = self
                .decoder
                .run_on_buffers(&[], &mut self.out)
                .map_err(|e| ChunkRefusal::NotZstd(e.to_string()))?;
            self.take(status.bytes_written)?;
            if status.remaining == 0 {
                self.ended = true;
            } else if status.bytes_written == 0 {
                return Err(ChunkRefusal::Incomplete);
            }
        }
        let got = Digest(self.sha.finalize().into());
        if got == self.want {
            Ok(())
        } else {
            Err(ChunkRefusal::Mismatch(got))
        }
    }

    fn take(&mut self, n: usize) -> Result<(), ChunkRefusal> {
        self.produced += n as u64;
        if self.produced > u64::from(MAX_CHUNK_SIZE) {
            return Err(ChunkRefusal::TooLarge);
        }
        self.sha.update(&self.out[..n]);
        Ok(())
    }
}

/// Why a capture's manifest was not published.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Name(#[from] RefError),
    #[error("the manifest does not decode: {0}")]
    Manifest(ManifestError),
    #[error(
        "the manifest is of image {found:?}, not {name:?}: a manifest's name is the NAME it is published as"
    )]
    OtherName { name: String, found: String },
    #[error(
        "{count} of the manifest's {total} stored chunks are not in the repository (the first: {first}): upload them (POST /capture/missing says which) and commit again"
    )]
    Missing {
        count: usize,
        total: usize,
        first: Digest,
    },
    #[error("{count} of the manifest's chunks do not match it; the first: {first}")]
    Wrong { count: usize, first: String },
    #[error("the repository cannot read its own chunk files: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Publishes the manifest `bytes` as `name:tag` once every chunk it names is
/// in the repository, its size the manifest's, and decompresses to content
/// whose SHA-256 and BLAKE3 are the manifest's (checked on `jobs` threads);
/// signed with `signing` if given. Returns the manifest's digest. Chunks that
/// are absent are found (and refused) before any is read.
pub fn commit(
    repo: &LocalRepo,
    name: &str,
    tag: &str,
    bytes: &[u8],
    signing: Option<&Signing>,
    jobs: usize,
) -> Result<Digest, CommitError> {
    check_name("image name", name)?;
    check_name("tag", tag)?;
    let manifest = Manifest::decode(bytes).map_err(CommitError::Manifest)?;
    if manifest.name != name {
        return Err(CommitError::OtherName {
            name: name.to_string(),
            found: manifest.name,
        });
    }
    let (manifest, bytes) = with_stored_sizes(repo, manifest, bytes);
    // Each distinct entry once (one content listed with two sizes is two).
    let entries: BTreeSet<(Digest, u32, u32, [u8; 32])> = manifest
        .chunks
        .iter()
        .filter_map(|c| match c.kind {
            ChunkKind::Data {
                sha256,
                blake3,
                stored_size,
            } => Some((sha256, c.length, stored_size, blake3)),
            ChunkKind::Zero => None,
        })
        .collect();
    let entries: Vec<_> = entries.into_iter().collect();
    let stored: BTreeSet<Digest> = entries.iter().map(|e| e.0).collect();
    let absent: Vec<Digest> = stored
        .iter()
        .filter(|d| !repo.path(&chunk_path(d)).is_file())
        .copied()
        .collect();
    if let Some(first) = absent.first() {
        return Err(CommitError::Missing {
            count: absent.len(),
            total: stored.len(),
            first: *first,
        });
    }
    let problems = Mutex::new(Vec::new());
    let _ = crate::parallel::for_each_index(
        0..entries.len(),
        jobs,
        || (),
        |(), i| {
            let (sha, length, stored_size, blake3) = &entries[i];
            if let Err(p) = check_chunk(repo, sha, *length, *stored_size, blake3)
                && let Ok(mut all) = problems.lock()
            {
                all.push(p);
            }
            Ok::<(), ()>(())
        },
    );
    let mut problems = problems.into_inner().unwrap_or_default();
    problems.sort_by_key(ToString::to_string);
    if problems
        .iter()
        .any(|p| matches!(p, ChunkProblem::Unreadable(..)))
    {
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(CommitError::Unreadable(all.join("; ")));
    }
    if let Some(first) = problems.first() {
        return Err(CommitError::Wrong {
            count: problems.len(),
            first: first.to_string(),
        });
    }
    Ok(publish(repo, name, tag, &manifest, &bytes, signing, jobs)?)
}

/// The manifest with each chunk's stored size taken from the repository's
/// own file, where it holds the chunk already: one stored before (by `image
/// add`, another capture) may be compressed otherwise than the machine's, and
/// the content, checked next, is what counts. Re-encoded only if a size changed.
fn with_stored_sizes(
    repo: &LocalRepo,
    mut manifest: Manifest,
    bytes: &[u8],
) -> (Manifest, Vec<u8>) {
    let mut changed = false;
    for chunk in &mut manifest.chunks {
        if let ChunkKind::Data {
            sha256,
            stored_size,
            ..
        } = &mut chunk.kind
            && let Ok(meta) = std::fs::metadata(repo.path(&chunk_path(sha256)))
            && meta.len() > 0
            && meta.len() <= max_stored_size(chunk.length)
            && meta.len() != u64::from(*stored_size)
        {
            *stored_size = meta.len() as u32;
            changed = true;
        }
    }
    let bytes = if changed {
        manifest.encode()
    } else {
        bytes.to_vec()
    };
    (manifest, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8], name: Digest) -> Result<(), ChunkRefusal> {
        let mut c = ChunkCheck::new(name).unwrap();
        // In pieces of all sizes, as a connection hands them over.
        for piece in body.chunks(7777) {
            c.feed(piece)?;
        }
        c.finish()
    }

    #[test]
    fn a_chunk_is_one_frame_of_its_named_content_within_the_largest_size() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let name = Digest::of(&content);
        let frame = zstd::bulk::compress(&content, 3).unwrap();
        assert_eq!(check(&frame, name), Ok(()));
        assert!(matches!(
            check(&frame, Digest::of(b"other")),
            Err(ChunkRefusal::Mismatch(d)) if d == name
        ));
        assert_eq!(
            check(&frame[..frame.len() - 3], name),
            Err(ChunkRefusal::Incomplete)
        );
        assert_eq!(check(&[], name), Err(ChunkRefusal::Incomplete));
        let twice = [frame.clone(), frame.clone()].concat();
        assert_eq!(check(&twice, name), Err(ChunkRefusal::MoreThanOneFrame));
        assert!(matches!(
            check(b"not zstd at all", name),
            Err(ChunkRefusal::NotZstd(_))
        ));
        // A frame of a little more than the largest chunk: refused as it
        // decompresses, whatever it says of its size.
        let big = vec![0u8; MAX_CHUNK_SIZE as usize + 1];
        let bomb = zstd::bulk::compress(&big, 3).unwrap();
        assert!(bomb.len() < 64 << 10);
        assert_eq!(check(&bomb, Digest::of(&big)), Err(ChunkRefusal::TooLarge));
    }
}
