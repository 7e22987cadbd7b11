//! The deploy engine, shared by `imprint deploy` on a host and by the deploy
//! environment's PID 1.
//!
//! One rule does most of the work: for every chunk, if the target already holds
//! exactly that content, skip it. That gives resume after an interruption, cheap
//! re-deploys and delta upgrades. Everything written has been checked against the
//! sha256 in a trusted manifest first; nothing unverified ever reaches the target.

pub mod install;
mod target;
mod verify;

pub use target::{DiskTarget, Target, TargetError};
pub use verify::{VerifyReport, verify};

use crate::format::digest::{Digest, ImageRef};
use crate::format::is_zero;
use crate::format::manifest::{ChunkKind, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::format::repository::{chunk_path, manifest_path, ref_path, signature_path};
use crate::format::signature::{self, Release, SignatureError, Wanted};
use crate::source::{FetchError, RetryCounter, RetryPolicy, Source, fetch_checked};
use ed25519_dalek::VerifyingKey;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "one chunk in flight needs {} MiB (the image's chunks are {} MiB) and this machine has {} MiB of memory available; give it more memory, or build the image with a smaller --chunk-size",
        .needed >> 20, .chunk_size >> 20, .available >> 20
    )]
    OutOfMemory {
        chunk_size: u32,
        needed: u64,
        available: u64,
    },
    #[error("ref {image} is malformed: {reason}")]
    BadRef { image: String, reason: String },
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        source: ManifestError,
    },
    #[error(
        "manifest served as {expected} hashes to {actual}: the pin does not match or the repository is corrupt"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("manifest {0} is not signed (no .sig file) but a public key was given")]
    Unsigned(Digest),
    #[error(
        "manifest {digest} is the image {found:?}, not {asked:?}: the ref points at another image's manifest"
    )]
    NameMismatch {
        digest: Digest,
        asked: String,
        found: String,
    },
    #[error(
        "the signed manifest {digest} is {size} bytes, more than this reader accepts ({limit}); nothing was fetched"
    )]
    ManifestTooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{what} {target} at offset {offset}: {source}")]
    TargetIo {
        what: &'static str,
        target: String,
        offset: u64,
        source: std::io::Error,
    },
}

/// How the manifest came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The operator pinned its digest.
    Pinned,
    /// Signed by the operator's public key.
    Signed,
    /// Only the repository vouches for it (no pin, no key).
    Unverified,
}

pub struct Resolved {
    pub digest: Digest,
    pub manifest: Manifest,
    pub trust: Trust,
    /// The signed release statement, when a key vouched for it.
    pub release: Option<Release>,
}

/// The most manifest bytes a reader takes without a signature stating the size:
/// the format's limit, or an eighth of the memory available (decoding needs a
/// few times the encoded size), whichever is less, but never below 16 MiB.
fn manifest_limit() -> u64 {
    let by_memory = crate::sys::available_memory().map_or(u64::MAX, |m| (m / 8).max(16 << 20));
    MAX_MANIFEST_BYTES.min(by_memory)
}

/// Finds, checks and decodes the manifest `image` names. Nothing is trusted that a
/// digest pin or the given public key does not vouch for.
pub fn resolve(
    source: &dyn Source,
    image: &ImageRef,
    pubkey: Option<&VerifyingKey>,
    policy: &RetryPolicy,
) -> Result<Resolved, DeployError> {
    let retries = RetryCounter::default();
    let mut buf = Vec::new();
    // A mismatch on small metadata is more likely a lie than a transient flip:
    // retry briefly, then say so.
    let meta_policy = RetryPolicy {
        attempts: policy.attempts.min(3),
        ..policy.clone()
    };
    let (digest, pinned) = match image {
        ImageRef::Digest(d) => (*d, true),
        ImageRef::Tag { name, tag } => {
            fetch_checked(
                source,
                &ref_path(name, tag),
                4096,
                &mut buf,
                policy,
                &retries,
                |_| Ok(()),
            )?;
            let text = String::from_utf8_lossy(&buf);
            let digest = text.parse::<Digest>().map_err(|e| DeployError::BadRef {
                image: image.to_string(),
                reason: e.to_string(),
            })?;
            (digest, false)
        }
    };
    // The signature first: it covers the digest (known from the ref or the pin),
    // so nothing the key did not vouch for is fetched, let alone decoded.
    let release = match pubkey {
        Some(key) => {
            let mut sig = Vec::new();
            match fetch_checked(
                source,
                &signature_path(&digest),
                64 << 10,
                &mut sig,
                policy,
                &retries,
                |_| Ok(()),
            ) {
                Err(FetchError::NotFound { .. }) => return Err(DeployError::Unsigned(digest)),
                other => other?,
            }
            let wanted = match image {
                ImageRef::Tag { name, tag } => Wanted::Tag { name, tag },
                ImageRef::Digest(_) => Wanted::Any,
            };
            Some(signature::verify(
                &String::from_utf8_lossy(&sig),
                &digest,
                key,
                wanted,
            )?)
        }
        None => None,
    };
    let limit = manifest_limit();
    let fetch_limit = match &release {
        Some(r) if r.size > limit => {
            return Err(DeployError::ManifestTooLarge {
                digest,
                size: r.size,
                limit,
            });
        }
        Some(r) => r.size,
        None => limit,
    };
    let mut actual = digest;
    let fetched = fetch_checked(
        source,
        &manifest_path(&digest),
        fetch_limit,
        &mut buf,
        &meta_policy,
        &retries,
        |body| {
            actual = Digest::of(body);
            if actual == digest {
                Ok(())
            } else {
                Err(format!("manifest hashes to {actual}"))
            }
        },
    );
    match fetched {
        Err(FetchError::GaveUp { .. }) if actual != digest => {
            return Err(DeployError::DigestMismatch {
                expected: digest,
                actual,
            });
        }
        other => other?,
    }
    let manifest =
        Manifest::decode(&buf).map_err(|source| DeployError::Manifest { digest, source })?;
    // The image asked for, not another one a ref or a signature leads to.
    let asked = match (image, &release) {
        (ImageRef::Tag { name, .. }, _) => Some(name.as_str()),
        (ImageRef::Digest(_), Some(r)) => Some(r.name.as_str()),
        (ImageRef::Digest(_), None) => None,
    };
    if let Some(asked) = asked
        && manifest.name != asked
    {
        return Err(DeployError::NameMismatch {
            digest,
            asked: asked.to_string(),
            found: manifest.name.clone(),
        });
    }
    let trust = match (&release, pinned) {
        (Some(_), _) => Trust::Signed,
        (None, true) => Trust::Pinned,
        (None, false) => Trust::Unverified,
    };
    Ok(Resolved {
        digest,
        manifest,
        trust,
        release,
    })
}

#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// Chunks in flight at once (fetching, checking, writing).
    pub jobs: usize,
    pub retry: RetryPolicy,
    /// How often `on_progress` is called.
    pub progress_interval: Duration,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            jobs: crate::format::cmdline::DEFAULT_JOBS,
            retry: RetryPolicy::default(),
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// Figures for progress lines and the final summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total_bytes: u64,
    /// Image bytes dealt with so far (written, zeroed or already in place).
    pub done_bytes: u64,
    pub written_bytes: u64,
    pub zeroed_bytes: u64,
    /// Already on the target: not fetched, not written.
    pub skipped_bytes: u64,
    /// Compressed bytes received from the source.
    pub fetched_bytes: u64,
    /// Copied from the seed disk (the previous OS) instead of fetched.
    pub seeded_bytes: u64,
    pub chunks: u64,
    pub chunks_fetched: u64,
    pub chunks_skipped: u64,
    pub chunks_seeded: u64,
    pub retries: u64,
    pub elapsed: Duration,
    /// Worker time, summed over the workers: waiting for fetched chunks,
    /// hashing and decompressing, reading and writing disks.
    pub fetch_time: Duration,
    pub verify_time: Duration,
    pub disk_time: Duration,
}

impl Progress {
    /// The figures of two passes over different chunks, as one.
    pub fn merge(&self, other: &Progress) -> Progress {
        Progress {
            total_bytes: self.total_bytes + other.total_bytes,
            done_bytes: self.done_bytes + other.done_bytes,
            written_bytes: self.written_bytes + other.written_bytes,
            zeroed_bytes: self.zeroed_bytes + other.zeroed_bytes,
            skipped_bytes: self.skipped_bytes + other.skipped_bytes,
            fetched_bytes: self.fetched_bytes + other.fetched_bytes,
            seeded_bytes: self.seeded_bytes + other.seeded_bytes,
            chunks: self.chunks + other.chunks,
            chunks_fetched: self.chunks_fetched + other.chunks_fetched,
            chunks_skipped: self.chunks_skipped + other.chunks_skipped,
            chunks_seeded: self.chunks_seeded + other.chunks_seeded,
            retries: self.retries + other.retries,
            elapsed: self.elapsed + other.elapsed,
            fetch_time: self.fetch_time + other.fetch_time,
            verify_time: self.verify_time + other.verify_time,
            disk_time: self.disk_time + other.disk_time,
        }
    }

    pub fn rate_mb_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.done_bytes as f64 / 1e6 / secs
    }

    pub fn eta(&self) -> Option<Duration> {
        let rate = self.done_bytes as f64 / self.elapsed.as_secs_f64();
        if !rate.is_finite() || rate <= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            (self.total_bytes - self.done_bytes) as f64 / rate,
        ))
    }
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    written: AtomicU64,
    zeroed: AtomicU64,
    skipped: AtomicU64,
    fetched: AtomicU64,
    seeded: AtomicU64,
    chunks_fetched: AtomicU64,
    chunks_skipped: AtomicU64,
    chunks_seeded: AtomicU64,
    retries: RetryCounter,
    fetch_ns: AtomicU64,
    verify_ns: AtomicU64,
    disk_ns: AtomicU64,
}

/// Adds the time since `since` to `counter` and returns now.
fn lap(counter: &AtomicU64, since: Instant) -> Instant {
    let now = Instant::now();
    let ns = u64::try_from((now - since).as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Ordering::Relaxed);
    now
}

impl Counters {
    fn snapshot(&self, manifest: &Manifest, range: &Range<usize>, started: Instant) -> Progress {
        let chunks = &manifest.chunks[range.clone()];
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Progress {
            total_bytes: chunks.iter().map(|c| c.length as u64).sum(),
            done_bytes: get(&self.done),
            written_bytes: get(&self.written),
            zeroed_bytes: get(&self.zeroed),
            skipped_bytes: get(&self.skipped),
            fetched_bytes: get(&self.fetched),
            seeded_bytes: get(&self.seeded),
            chunks_seeded: get(&self.chunks_seeded),
            chunks: chunks.len() as u64,
            chunks_fetched: get(&self.chunks_fetched),
            chunks_skipped: get(&self.chunks_skipped),
            retries: get(&self.retries.0),
            elapsed: started.elapsed(),
            fetch_time: Duration::from_nanos(get(&self.fetch_ns)),
            verify_time: Duration::from_nanos(get(&self.verify_ns)),
            disk_time: Duration::from_nanos(get(&self.disk_ns)),
        }
    }
}

/// Writes the image `manifest` describes onto `target`, fetching from `source` only
/// what the target lacks. The target has been checked to be large enough. Chunks
/// land in no particular order; a disk meant to boot is written with
/// [`install::write_image`], which orders its boot records.
pub fn deploy(
    source: &dyn Source,
    manifest: &Manifest,
    target: &dyn Target,
    opts: &DeployOptions,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, DeployError> {
    deploy_with_seed(source, manifest, target, None, opts, on_progress)
}

/// Like [`deploy`], with a seed: a disk (the previous OS) whose chunks at the same
/// offsets are copied locally, after checking them against the manifest, instead
/// of being fetched.
pub fn deploy_with_seed(
    source: &dyn Source,
    manifest: &Manifest,
    target: &dyn Target,
    seed: Option<&dyn Target>,
    opts: &DeployOptions,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, DeployError> {
    let all = 0..manifest.chunks.len();
    deploy_chunks(source, manifest, target, seed, all, opts, on_progress)
}

/// The chunks `range` of the image, in parallel and in no particular order.
fn deploy_chunks(
    source: &dyn Source,
    manifest: &Manifest,
    target: &dyn Target,
    seed: Option<&dyn Target>,
    range: Range<usize>,
    opts: &DeployOptions,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, DeployError> {
    if target.size() < manifest.requirements.min_disk_size {
        return Err(TargetError::TooSmall {
            path: target.describe().into(),
            size: target.size(),
            needed: manifest.requirements.min_disk_size,
        }
        .into());
    }
    let available = crate::sys::available_memory();
    let jobs = fit_jobs(opts.jobs, manifest.chunk_size, available)?;
    if jobs < opts.jobs {
        log::info!(
            "{jobs} chunks in flight, not {}: each needs {} MiB, and {} MiB of memory is available",
            opts.jobs,
            worker_memory(manifest.chunk_size) >> 20,
            available.unwrap_or(0) >> 20
        );
    }
    let started = Instant::now();
    let counters = Counters::default();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let counters = &counters;
    let job = Job {
        source,
        manifest,
        target,
        seed,
        opts,
        counters,
    };
    let written = std::thread::scope(|scope| {
        let range = &range;
        let reporter = scope.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stop_rx.recv_timeout(opts.progress_interval)
            {
                on_progress(&counters.snapshot(manifest, range, started));
            }
        });
        let written = crate::parallel::for_each_index(
            range.clone(),
            jobs,
            || Worker::new(manifest.chunk_size as usize),
            |worker, index| worker.chunk(&job, index),
        );
        let _ = stop_tx.send(());
        let _ = reporter.join();
        written
    });
    // Sync even after a failure: whatever was verified and written stays, so the
    // next attempt resumes from it.
    let synced = target.sync().map_err(|source| DeployError::TargetIo {
        what: "syncing",
        target: target.describe(),
        offset: 0,
        source,
    });
    written?;
    synced?;
    Ok(counters.snapshot(manifest, &range, started))
}

/// Fetches chunk `index` and returns its verified content (zeros for a zero chunk),
/// with what the fetch took (bytes received, retries).
fn fetch_chunk(
    source: &dyn Source,
    manifest: &Manifest,
    index: usize,
    retry: &RetryPolicy,
) -> Result<(Vec<u8>, Progress), DeployError> {
    let chunk = &manifest.chunks[index];
    match chunk.kind {
        ChunkKind::Zero => Ok((vec![0; chunk.length as usize], Progress::default())),
        ChunkKind::Data {
            sha256,
            stored_size,
            ..
        } => {
            let mut worker = Worker::new(manifest.chunk_size as usize);
            let opts = DeployOptions {
                retry: retry.clone(),
                ..DeployOptions::default()
            };
            let counters = Counters::default();
            worker.fetch_verified(
                source,
                sha256,
                stored_size,
                chunk.length as usize,
                &opts,
                &counters,
            )?;
            let taken = Progress {
                fetched_bytes: counters.fetched.load(Ordering::Relaxed),
                chunks_fetched: 1,
                retries: counters.retries.0.load(Ordering::Relaxed),
                ..Progress::default()
            };
            Ok((std::mem::take(&mut worker.content), taken))
        }
    }
}

/// What every chunk of one deploy shares.
#[derive(Clone, Copy)]
struct Job<'a> {
    source: &'a dyn Source,
    manifest: &'a Manifest,
    target: &'a dyn Target,
    seed: Option<&'a dyn Target>,
    opts: &'a DeployOptions,
    counters: &'a Counters,
}

/// Per-thread buffers, reused for every chunk the thread handles: the chunk's
/// content (first what is in place, then what replaces it) and its stored bytes.
struct Worker {
    compressed: Vec<u8>,
    content: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

/// The most memory one worker holds for chunks of `chunk_size`: the content,
/// the stored bytes (zstd's bound: a little more than the content), and the
/// decompressor's context.
pub fn worker_memory(chunk_size: u32) -> u64 {
    let c = chunk_size as u64;
    2 * c + c / 128 + (1 << 20)
}

/// How many chunks may be in flight: `requested`, or fewer where the memory
/// `available` would not hold their buffers in half of it (the other half is
/// left to the page cache the writes go through, and to the rest of the
/// system). At least one; an error when not even one fits.
pub fn fit_jobs(
    requested: usize,
    chunk_size: u32,
    available: Option<u64>,
) -> Result<usize, DeployError> {
    let Some(available) = available else {
        return Ok(requested.max(1));
    };
    let needed = worker_memory(chunk_size);
    let fits = (available / 2) / needed;
    if fits == 0 {
        return Err(DeployError::OutOfMemory {
            chunk_size,
            needed,
            available,
        });
    }
    Ok(requested
        .max(1)
        .min(usize::try_from(fits).unwrap_or(usize::MAX)))
}

impl Worker {
    fn new(chunk_size: usize) -> Worker {
        Worker {
            compressed: Vec::new(),
            content: Vec::with_capacity(chunk_size),
            decompressor: zstd::bulk::Decompressor::new().ok(),
        }
    }

    fn chunk(&mut self, job: &Job, index: usize) -> Result<(), DeployError> {
        let Job {
            source,
            manifest,
            target,
            seed,
            opts,
            counters,
        } = *job;
        let chunk = &manifest.chunks[index];
        let (offset, len) = (chunk.offset, chunk.length as usize);
        let io_error = |what: &'static str| {
            move |source| DeployError::TargetIo {
                what,
                target: target.describe(),
                offset,
                source,
            }
        };
        let mut t = Instant::now();
        let hole = target.known_zero(offset, len as u64);
        self.content.resize(len, 0);
        let existing = &mut self.content[..];
        if !hole {
            target
                .read_at(existing, offset)
                .map_err(io_error("reading"))?;
        }
        t = lap(&counters.disk_ns, t);
        let in_place = match chunk.kind {
            ChunkKind::Zero => hole || is_zero(existing),
            // blake3 rather than sha256: same certainty, a third of the CPU, and
            // this check runs over the whole disk on every redeploy and resume.
            ChunkKind::Data { blake3, .. } => !hole && blake3::hash(existing).as_bytes() == &blake3,
        };
        t = lap(&counters.verify_ns, t);
        if in_place {
            counters.skipped.fetch_add(len as u64, Ordering::Relaxed);
            counters.chunks_skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            match chunk.kind {
                ChunkKind::Zero => {
                    target
                        .zero_range(offset, len as u64)
                        .map_err(io_error("zeroing"))?;
                    lap(&counters.disk_ns, t);
                    counters.zeroed.fetch_add(len as u64, Ordering::Relaxed);
                }
                ChunkKind::Data {
                    sha256,
                    stored_size,
                    blake3,
                } => {
                    if !self.take_from_seed(seed, offset, len, &blake3, &sha256, counters) {
                        self.fetch_verified(source, sha256, stored_size, len, opts, counters)?;
                    } else {
                        counters.seeded.fetch_add(len as u64, Ordering::Relaxed);
                        counters.chunks_seeded.fetch_add(1, Ordering::Relaxed);
                    }
                    let t = Instant::now();
                    target
                        .write_at(&self.content, offset)
                        .map_err(io_error("writing"))?;
                    lap(&counters.disk_ns, t);
                    counters.written.fetch_add(len as u64, Ordering::Relaxed);
                }
            }
        }
        counters.done.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Looks for the chunk at the same offset of the seed disk; on a match (blake3
    /// first, then the sha256 every written byte is checked against) leaves it in
    /// `self.content`. Read errors on the seed just mean "fetch it".
    fn take_from_seed(
        &mut self,
        seed: Option<&dyn Target>,
        offset: u64,
        len: usize,
        blake3: &[u8; 32],
        sha256: &Digest,
        counters: &Counters,
    ) -> bool {
        let Some(seed) = seed else {
            return false;
        };
        if seed.size() < offset + len as u64 {
            return false;
        }
        self.content.clear();
        self.content.resize(len, 0);
        let t = Instant::now();
        let read = seed.read_at(&mut self.content, offset);
        let t = lap(&counters.disk_ns, t);
        if read.is_err() {
            return false;
        }
        let same = blake3::hash(&self.content).as_bytes() == blake3
            && Digest::of(&self.content) == *sha256;
        lap(&counters.verify_ns, t);
        same
    }

    /// Leaves the chunk's verified content in `self.content`.
    fn fetch_verified(
        &mut self,
        source: &dyn Source,
        sha256: Digest,
        stored_size: u32,
        len: usize,
        opts: &DeployOptions,
        counters: &Counters,
    ) -> Result<(), DeployError> {
        let content = &mut self.content;
        let decompressor = &mut self.decompressor;
        // The check's own time is verifying; the rest of the fetch is waiting.
        let started = Instant::now();
        let checking = AtomicU64::new(0);
        let fetched = fetch_checked(
            source,
            &chunk_path(&sha256),
            stored_size as u64,
            &mut self.compressed,
            &opts.retry,
            &counters.retries,
            |body| {
                let t = Instant::now();
                let checked = check_chunk(body, content, decompressor, sha256, stored_size, len);
                lap(&checking, t);
                counters
                    .fetched
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                checked
            },
        );
        let checking = checking.load(Ordering::Relaxed);
        counters.verify_ns.fetch_add(checking, Ordering::Relaxed);
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters
            .fetch_ns
            .fetch_add(waited.saturating_sub(checking), Ordering::Relaxed);
        fetched?;
        counters.chunks_fetched.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The check of a fetched chunk: `body` is `stored_size` bytes that decompress
/// to `len` bytes hashing to `sha256`, left in `content`.
fn check_chunk(
    body: &[u8],
    content: &mut Vec<u8>,
    decompressor: &mut Option<zstd::bulk::Decompressor<'static>>,
    sha256: Digest,
    stored_size: u32,
    len: usize,
) -> Result<(), String> {
    if body.len() != stored_size as usize {
        return Err(format!(
            "{} bytes received, {stored_size} expected",
            body.len()
        ));
    }
    content.clear();
    content.reserve(len);
    let unpacked = match decompressor.as_mut() {
        Some(d) => d.decompress_to_buffer(body, content),
        None => zstd::bulk::decompress_to_buffer(body, content),
    };
    match unpacked {
        Ok(n) if n == len => {}
        Ok(n) => return Err(format!("decompressed to {n} bytes, {len} expected")),
        Err(e) => return Err(format!("does not decompress: {e}")),
    }
    let actual = Digest::of(content);
    if actual != sha256 {
        return Err(format!("content hashes to {actual}, not {sha256}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn chunks_in_flight_fit_in_half_the_memory_available() {
        // Plenty: what was asked for.
        assert_eq!(fit_jobs(4, 1 << 20, Some(8 << 30)).unwrap(), 4);
        // A 256 MiB machine asked for 32 chunks of 16 MiB in flight (over 1 GiB):
        // as many as half of its ~200 MiB available holds.
        let each = worker_memory(16 << 20);
        assert!((32 * MIB..34 * MIB).contains(&each), "{each}");
        let jobs = fit_jobs(32, 16 << 20, Some(200 * MIB)).unwrap();
        assert_eq!(jobs, 3);
        assert!(jobs as u64 * each <= 100 * MIB);
        // Unknown memory (no /proc): as asked, never zero.
        assert_eq!(fit_jobs(6, 1 << 20, None).unwrap(), 6);
        assert_eq!(fit_jobs(0, 1 << 20, None).unwrap(), 1);
        assert_eq!(fit_jobs(0, 1 << 20, Some(8 << 30)).unwrap(), 1);
    }

    #[test]
    fn a_chunk_that_cannot_fit_even_once_is_refused_with_what_to_do() {
        let err = fit_jobs(4, 64 << 20, Some(200 * MIB)).unwrap_err();
        assert!(matches!(err, DeployError::OutOfMemory { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("needs 129 MiB")
                && text.contains("chunks are 64 MiB")
                && text.contains("200 MiB of memory available")
                && text.contains("smaller --chunk-size"),
            "{text}"
        );
    }
}
