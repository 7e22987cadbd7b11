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

pub use target::{DiskTarget, Preread, Target, TargetError};
pub use verify::{VerifyReport, verify};

use crate::format::digest::{Digest, ImageRef};
use crate::format::is_zero;
use crate::format::manifest::{ChunkKind, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::format::repository::{chunk_path, manifest_path, ref_path, signature_path};
use crate::format::signature::{self, Release, SignatureError, Wanted};
use crate::source::{FetchError, Pipeline, RetryCounter, RetryPolicy, Source, fetch_checked};
use ed25519_dalek::VerifyingKey;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
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
            let release = signature::verify(&String::from_utf8_lossy(&sig), &digest, key, wanted)?;
            // An expired release is refused as a bad signature would be; the
            // clock is this machine's, so a clock behind lets it through.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            release.check_fresh(now, None)?;
            Some(release)
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

/// The chunks `range` of the image, in no particular order, in two stages that
/// overlap. Scanners read the target (in offset order, one per core) and
/// settle what is in place, then zero the zero chunks that are not; any other
/// goes to a queue, in the order found, which fetchers (`jobs` of them) take
/// from the seed disk or the source, check and write. A delta's disk reads and
/// fetches thus run side by side, and a fetcher with a pipelined connection
/// keeps a request on the wire while it checks and writes the one before.
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
    let queue = FetchQueue {
        fetchers: jobs,
        ..FetchQueue::default()
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
        let (job, queue) = (&job, &queue);
        let fetchers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(move || {
                    let fetched = Fetcher::new(job).run(queue);
                    if fetched.is_err() {
                        queue.fail();
                    }
                    fetched
                })
            })
            .collect();
        // Should a scanner panic, the fetchers must not wait for it forever.
        let _abandon = AbandonOnDrop(queue);
        // Zero chunks to zero, after the scan: a write can wait (on a host
        // deploy, for the image's head), and the scan must not, or the
        // fetchers would start late.
        let to_zero = Mutex::new(Vec::new());
        let scanned = crate::parallel::for_each_index(
            range.clone(),
            scanners(jobs),
            || vec![0u8; SCAN_PIECE.min(manifest.chunk_size as usize)],
            |piece, index| match queue.failed() {
                true => Ok(()),
                false => scan_chunk(job, queue, &to_zero, piece, index),
            },
        )
        .and_then(|()| {
            let to_zero = to_zero.into_inner().unwrap_or_else(|e| e.into_inner());
            crate::parallel::for_each_index(
                0..to_zero.len(),
                scanners(jobs),
                || (),
                |(), i| match queue.failed() {
                    true => Ok(()),
                    false => zero_chunk(job, to_zero[i]),
                },
            )
        });
        match scanned {
            Ok(()) => queue.close(),
            Err(_) => queue.fail(),
        }
        let mut result = scanned;
        for fetcher in fetchers {
            let fetched = fetcher
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(fetched);
        }
        let _ = stop_tx.send(());
        let _ = reporter.join();
        result
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

/// Scanners for `jobs` chunks in flight: no more than there are cores, since
/// the kernel's readahead keeps a disk read ahead of each and hashing is the
/// CPU's work; more readers only interleave the disk's sequential reads.
fn scanners(jobs: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    jobs.clamp(1, cores.max(1))
}

/// The most of a chunk a scanner reads at once: its memory, whatever the
/// chunk size.
const SCAN_PIECE: usize = 1 << 20;

/// Chunks the scan found not in place, in the order found, for the fetchers.
#[derive(Default)]
struct FetchQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// Fetchers taking from it.
    fetchers: usize,
}

#[derive(Default)]
struct QueueState {
    indices: VecDeque<usize>,
    /// The scan is over: nothing more will come.
    closed: bool,
    /// A stage failed: everyone stops.
    failed: bool,
}

impl FetchQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, index: usize) {
        self.lock().indices.push_back(index);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn fail(&self) {
        let mut state = self.lock();
        state.failed = true;
        state.closed = true;
        self.ready.notify_all();
    }

    fn failed(&self) -> bool {
        self.lock().failed
    }

    /// Whether a fetcher busy with a chunk should send the next one's request
    /// ahead: only while more chunks wait than there are fetchers. Otherwise a
    /// chunk would wait behind another on one connection while a fetcher
    /// sits idle (a delta's few chunks, the last chunks of any deploy).
    fn ahead(&self) -> bool {
        self.lock().indices.len() >= self.fetchers
    }

    /// Fails the queue unless it was closed.
    fn abandon(&self) {
        let mut state = self.lock();
        if !state.closed {
            state.failed = true;
            state.closed = true;
            self.ready.notify_all();
        }
    }

    /// The next chunk to fetch; with `wait`, blocks until there is one or the
    /// queue is closed. None once it is closed and empty, or has failed.
    fn pop(&self, wait: bool) -> Option<usize> {
        let mut state = self.lock();
        loop {
            if state.failed {
                return None;
            }
            if let Some(index) = state.indices.pop_front() {
                return Some(index);
            }
            if state.closed || !wait {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Abandons the queue when dropped before it was closed (a scanner panicked).
struct AbandonOnDrop<'a>(&'a FetchQueue);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.abandon();
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

impl Job<'_> {
    fn io_error(
        &self,
        what: &'static str,
        offset: u64,
    ) -> impl FnOnce(std::io::Error) -> DeployError + '_ {
        move |source| DeployError::TargetIo {
            what,
            target: self.target.describe(),
            offset,
            source,
        }
    }

    /// Counts chunk `index` as done, `how` (a counter of bytes) and by `chunks`.
    fn done(&self, index: usize, how: &AtomicU64, chunks: Option<&AtomicU64>) {
        let len = self.manifest.chunks[index].length as u64;
        how.fetch_add(len, Ordering::Relaxed);
        if let Some(chunks) = chunks {
            chunks.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.done.fetch_add(len, Ordering::Relaxed);
    }
}

/// The scan of chunk `index`: a chunk in place is counted, a zero chunk that
/// is not goes to `to_zero`, any other is queued for the fetchers. Reads go
/// through `piece`, so the scan's memory does not grow with the chunk size.
fn scan_chunk(
    job: &Job,
    queue: &FetchQueue,
    to_zero: &Mutex<Vec<usize>>,
    piece: &mut [u8],
    index: usize,
) -> Result<(), DeployError> {
    let Job {
        manifest,
        target,
        counters,
        ..
    } = *job;
    let chunk = &manifest.chunks[index];
    let (offset, len) = (chunk.offset, chunk.length as u64);
    let in_place = if target.known_zero(offset, len) {
        matches!(chunk.kind, ChunkKind::Zero)
    } else {
        let mut hasher = blake3::Hasher::new();
        let mut zero = true;
        let mut at = 0;
        while at < len && zero {
            let n = (len - at).min(piece.len() as u64) as usize;
            let t = Instant::now();
            target
                .read_at(&mut piece[..n], offset + at)
                .map_err(job.io_error("reading", offset + at))?;
            let t = lap(&counters.disk_ns, t);
            match chunk.kind {
                ChunkKind::Zero => zero = is_zero(&piece[..n]),
                ChunkKind::Data { .. } => {
                    hasher.update(&piece[..n]);
                }
            }
            lap(&counters.verify_ns, t);
            at += n as u64;
        }
        match chunk.kind {
            ChunkKind::Zero => zero,
            // blake3 rather than sha256: same certainty, a third of the CPU, and
            // this check runs over the whole disk on every redeploy and resume.
            ChunkKind::Data { blake3, .. } => hasher.finalize().as_bytes() == &blake3,
        }
    };
    if in_place {
        job.done(index, &counters.skipped, Some(&counters.chunks_skipped));
        return Ok(());
    }
    match chunk.kind {
        ChunkKind::Zero => to_zero
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index),
        ChunkKind::Data { .. } => queue.push(index),
    }
    Ok(())
}

fn zero_chunk(job: &Job, index: usize) -> Result<(), DeployError> {
    let chunk = &job.manifest.chunks[index];
    let t = Instant::now();
    job.target
        .zero_range(chunk.offset, chunk.length as u64)
        .map_err(job.io_error("zeroing", chunk.offset))?;
    lap(&job.counters.disk_ns, t);
    job.done(index, &job.counters.zeroed, None);
    Ok(())
}

/// Chunks a fetcher writes after one before that one leaves the page cache:
/// by then its writeback, started when it was written, is likely done.
const WRITEBACK_LAG: usize = 4;

/// A data chunk's sha256, stored size and length; None for a zero chunk.
fn stored(manifest: &Manifest, index: usize) -> Option<(Digest, u32, usize)> {
    let chunk = &manifest.chunks[index];
    match chunk.kind {
        ChunkKind::Data {
            sha256,
            stored_size,
            ..
        } => Some((sha256, stored_size, chunk.length as usize)),
        ChunkKind::Zero => None,
    }
}

/// Takes the chunks the scan queued, one at a time or, on a pipelined
/// connection, with the next one's request already sent.
struct Fetcher<'a> {
    job: &'a Job<'a>,
    worker: Worker,
    pipeline: Option<Box<dyn Pipeline>>,
    /// Chunks whose requests are on the pipeline, oldest first.
    in_flight: VecDeque<usize>,
    /// Connections the pipeline lost; past a few it is given up.
    lost: u32,
    /// What this fetcher wrote last, oldest first, until its writeback is
    /// likely done and it can leave the page cache.
    written: VecDeque<(u64, u64)>,
}

impl<'a> Fetcher<'a> {
    fn new(job: &'a Job<'a>) -> Fetcher<'a> {
        Fetcher {
            job,
            worker: Worker::new(job.manifest.chunk_size as usize),
            pipeline: job.source.pipeline(),
            in_flight: VecDeque::new(),
            lost: 0,
            written: VecDeque::new(),
        }
    }

    fn run(mut self, queue: &FetchQueue) -> Result<(), DeployError> {
        loop {
            let depth = if self.pipeline.is_some() {
                crate::source::PIPELINE_DEPTH
            } else {
                1
            };
            while self.in_flight.is_empty() || (self.in_flight.len() < depth && queue.ahead()) {
                let Some(index) = queue.pop(self.in_flight.is_empty()) else {
                    break;
                };
                self.start(index)?;
            }
            let Some(index) = self.in_flight.pop_front() else {
                return Ok(());
            };
            self.finish(index)?;
        }
    }

    /// The chunk from the seed disk if it holds it, else its request on the
    /// pipeline, else fetched now.
    fn start(&mut self, index: usize) -> Result<(), DeployError> {
        let job = self.job;
        let chunk = &job.manifest.chunks[index];
        let ChunkKind::Data {
            sha256,
            stored_size,
            blake3,
        } = chunk.kind
        else {
            return Ok(());
        };
        let (offset, len) = (chunk.offset, chunk.length as usize);
        let counters = job.counters;
        if self
            .worker
            .take_from_seed(job.seed, offset, len, &blake3, &sha256, counters)
        {
            self.write(index)?;
            counters.seeded.fetch_add(len as u64, Ordering::Relaxed);
            counters.chunks_seeded.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(pipeline) = self.pipeline.as_mut() {
            let t = Instant::now();
            let sent = pipeline.send(&chunk_path(&sha256));
            lap(&counters.fetch_ns, t);
            match sent {
                Ok(()) => {
                    self.in_flight.push_back(index);
                    return Ok(());
                }
                Err(e) => {
                    log::debug!("{e}; fetching without the pipeline");
                    // The requests before this one went with the connection.
                    let behind: Vec<usize> = self.in_flight.drain(..).collect();
                    self.lose_connection();
                    for index in behind {
                        self.refetch(index, None)?;
                    }
                }
            }
        }
        self.worker.fetch_verified(
            job.source,
            sha256,
            stored_size,
            len,
            &job.opts.retry,
            counters,
        )?;
        self.write(index)
    }

    /// Receives, checks and writes the oldest chunk on the pipeline. A chunk
    /// that fails is fetched again the usual way, its failed answer counted as
    /// its first attempt; when the connection broke, so are those behind it.
    fn finish(&mut self, index: usize) -> Result<(), DeployError> {
        let job = self.job;
        let Some((sha256, stored_size, len)) = stored(job.manifest, index) else {
            return Ok(());
        };
        let counters = job.counters;
        let Some(pipeline) = self.pipeline.as_mut() else {
            return self.refetch(index, None);
        };
        let t = Instant::now();
        let received = pipeline.receive(stored_size as u64, &mut self.worker.compressed);
        let t = lap(&counters.fetch_ns, t);
        let connected = pipeline.pending() == self.in_flight.len();
        let checked = received.and_then(|()| {
            let body = &self.worker.compressed;
            counters
                .fetched
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            let checked = check_chunk(
                body,
                &mut self.worker.content,
                &mut self.worker.decompressor,
                sha256,
                stored_size,
                len,
            );
            lap(&counters.verify_ns, t);
            checked.map_err(|reason| FetchError::Corrupt {
                location: job.source.location(&chunk_path(&sha256)),
                reason,
            })
        });
        // A connection that ended took the requests behind this one with it:
        // closed in order (the server's limit of requests per connection), or
        // broken, which counts against the pipeline.
        let behind: Vec<usize> = match connected {
            true => Vec::new(),
            false => self.in_flight.drain(..).collect(),
        };
        match checked {
            Ok(()) => {
                counters.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                self.write(index)?;
            }
            Err(e) => {
                if !connected {
                    self.lose_connection();
                }
                self.refetch(index, Some(e))?;
            }
        }
        for index in behind {
            self.refetch(index, None)?;
        }
        Ok(())
    }

    fn lose_connection(&mut self) {
        self.lost += 1;
        if self.lost >= 3 && self.pipeline.is_some() {
            log::info!("the repository's connections keep breaking: fetching one chunk at a time");
            self.pipeline = None;
        }
    }

    /// Fetches chunk `index` one request at a time, with retries; `failed` is
    /// the error of an attempt on the pipeline, which counts as the first.
    fn refetch(&mut self, index: usize, failed: Option<FetchError>) -> Result<(), DeployError> {
        let job = self.job;
        let Some((sha256, stored_size, len)) = stored(job.manifest, index) else {
            return Ok(());
        };
        let mut retry = job.opts.retry.clone();
        if let Some(e) = failed.filter(FetchError::is_transient) {
            if retry.attempts <= 1 {
                return Err(FetchError::GaveUp {
                    location: job.source.location(&chunk_path(&sha256)),
                    attempts: 1,
                    last: Box::new(e),
                }
                .into());
            }
            log::warn!("{e}; retrying in {} ms", retry.first_delay.as_millis());
            job.counters.retries.0.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(retry.first_delay);
            retry.attempts -= 1;
            retry.first_delay = (retry.first_delay * 2).min(retry.max_delay);
        }
        let fetched =
            self.worker
                .fetch_verified(job.source, sha256, stored_size, len, &retry, job.counters);
        match fetched {
            Err(DeployError::Fetch(FetchError::GaveUp {
                location,
                attempts,
                last,
            })) if retry.attempts < job.opts.retry.attempts => {
                return Err(FetchError::GaveUp {
                    location,
                    attempts: attempts + 1,
                    last,
                }
                .into());
            }
            other => other?,
        }
        self.write(index)
    }

    /// Writes the verified content of chunk `index`.
    fn write(&mut self, index: usize) -> Result<(), DeployError> {
        let job = self.job;
        let offset = job.manifest.chunks[index].offset;
        let t = Instant::now();
        job.target
            .write_at(&self.worker.content, offset)
            .map_err(job.io_error("writing", offset))?;
        let len = self.worker.content.len() as u64;
        self.written.push_back((offset, len));
        if self.written.len() > WRITEBACK_LAG
            && let Some((offset, len)) = self.written.pop_front()
        {
            job.target.forget_written(offset, len);
        }
        lap(&job.counters.disk_ns, t);
        job.done(index, &job.counters.written, None);
        Ok(())
    }
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
            let counters = Counters::default();
            worker.fetch_verified(
                source,
                sha256,
                stored_size,
                chunk.length as usize,
                retry,
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

/// Per-thread buffers, reused for every chunk the thread handles: the chunk's
/// content (first what is in place, then what replaces it) and its stored bytes.
struct Worker {
    compressed: Vec<u8>,
    content: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

/// The most memory one chunk in flight holds for chunks of `chunk_size`: its
/// fetcher's content, stored bytes (zstd's bound: a little more than the
/// content) and decompressor context, and its scanner's piece.
pub fn worker_memory(chunk_size: u32) -> u64 {
    let c = chunk_size as u64;
    2 * c + c / 128 + (1 << 20) + c.min(SCAN_PIECE as u64)
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
        retry: &RetryPolicy,
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
            retry,
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
        assert!((34 * MIB..36 * MIB).contains(&each), "{each}");
        let jobs = fit_jobs(32, 16 << 20, Some(200 * MIB)).unwrap();
        assert_eq!(jobs, 2);
        assert!(jobs as u64 * each <= 100 * MIB);
        // Unknown memory (no /proc): as asked, never zero.
        assert_eq!(fit_jobs(6, 1 << 20, None).unwrap(), 6);
        assert_eq!(fit_jobs(0, 1 << 20, None).unwrap(), 1);
        assert_eq!(fit_jobs(0, 1 << 20, Some(8 << 30)).unwrap(), 1);
    }

    #[test]
    fn requests_go_ahead_only_while_more_chunks_wait_than_there_are_fetchers() {
        let queue = FetchQueue {
            fetchers: 3,
            ..FetchQueue::default()
        };
        for index in 0..4 {
            queue.push(index);
        }
        assert!(queue.ahead());
        assert_eq!(queue.pop(false), Some(0));
        assert!(queue.ahead(), "3 wait for 3 fetchers");
        assert_eq!(queue.pop(false), Some(1));
        assert!(!queue.ahead(), "an idle fetcher takes the next");
        queue.close();
        assert!(!queue.ahead());
        assert_eq!(queue.pop(true), Some(2));
        assert_eq!(queue.pop(true), Some(3));
        assert_eq!(queue.pop(true), None, "closed and empty");
    }

    #[test]
    fn a_chunk_that_cannot_fit_even_once_is_refused_with_what_to_do() {
        let err = fit_jobs(4, 64 << 20, Some(200 * MIB)).unwrap_err();
        assert!(matches!(err, DeployError::OutOfMemory { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("needs 130 MiB")
                && text.contains("chunks are 64 MiB")
                && text.contains("200 MiB of memory available")
                && text.contains("smaller --chunk-size"),
            "{text}"
        );
    }
}
