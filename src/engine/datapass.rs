//! The data pass: scanners read the target and compare each chunk with the
//! manifest (what is in place is skipped; zero chunks are zeroed after the
//! scan); fetchers take what is missing from a queue.

use super::fetch::{Fetcher, fit_jobs, worker_memory};
use super::progress::{Counters, Progress, lap};
use super::queue::{AbandonOnDrop, FetchQueue, Job, SCAN_PIECE};
use super::{DeployError, DeployOptions, Target, TargetError};
use crate::format::is_zero;
use crate::format::manifest::{ChunkKind, Manifest};
use crate::source::Source;
use std::ops::Range;
use std::sync::{Mutex, mpsc};
use std::time::Instant;

/// Writes the image `manifest` describes onto `target`, fetching from `source` only
/// what the target lacks. The target has been checked to be large enough. Chunks
/// land in no particular order; a disk meant to boot is written with
/// [`super::write_image`], which orders its boot records.
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
pub(super) fn deploy_chunks(
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
pub(super) fn scanners(jobs: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    jobs.clamp(1, cores.max(1))
}

/// The scan of chunk `index`: a chunk in place is counted, a zero chunk that
/// is not goes to `to_zero`, any other is queued for the fetchers. Reads go
/// through `piece`, so the scan's memory does not grow with the chunk size.
pub(super) fn scan_chunk(
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

pub(super) fn zero_chunk(job: &Job, index: usize) -> Result<(), DeployError> {
    let chunk = &job.manifest.chunks[index];
    let t = Instant::now();
    job.target
        .zero_range(chunk.offset, chunk.length as u64)
        .map_err(job.io_error("zeroing", chunk.offset))?;
    lap(&job.counters.disk_ns, t);
    job.done(index, &job.counters.zeroed, None);
    Ok(())
}
