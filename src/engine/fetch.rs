//! The fetchers: each takes a missing chunk from the queue, finds it in the
//! seed disk or fetches it (pipelined where the source allows), verifies it
//! against the manifest and writes it; with the memory a chunk in flight holds,
//! and how many fit.

use super::progress::{Counters, Progress, lap};
use super::queue::{FetchQueue, Job, SCAN_PIECE, WRITEBACK_LAG, stored};
use super::{DeployError, Target};
use crate::format::digest::Digest;
use crate::format::manifest::{ChunkKind, Manifest};
use crate::format::repository::chunk_path;
use crate::source::{FetchError, Pipeline, RetryPolicy, Source, fetch_checked};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Takes the chunks the scan queued, one at a time or, on a pipelined
/// connection, with the next one's request already sent.
pub(super) struct Fetcher<'a> {
    pub(super) job: &'a Job<'a>,
    pub(super) worker: Worker,
    pub(super) pipeline: Option<Box<dyn Pipeline>>,
    /// Chunks whose requests are on the pipeline, oldest first.
    pub(super) in_flight: VecDeque<usize>,
    /// Connections the pipeline lost; past a few it is given up.
    pub(super) lost: u32,
    /// What this fetcher wrote last, oldest first, until its writeback is
    /// likely done and it can leave the page cache.
    pub(super) written: VecDeque<(u64, u64)>,
}

impl<'a> Fetcher<'a> {
    pub(super) fn new(job: &'a Job<'a>) -> Fetcher<'a> {
        Fetcher {
            job,
            worker: Worker::new(job.manifest.chunk_size as usize),
            pipeline: job.source.pipeline(),
            in_flight: VecDeque::new(),
            lost: 0,
            written: VecDeque::new(),
        }
    }

    pub(super) fn run(mut self, queue: &FetchQueue) -> Result<(), DeployError> {
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
    pub(super) fn start(&mut self, index: usize) -> Result<(), DeployError> {
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
    pub(super) fn finish(&mut self, index: usize) -> Result<(), DeployError> {
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

    pub(super) fn lose_connection(&mut self) {
        self.lost += 1;
        if self.lost >= 3 && self.pipeline.is_some() {
            log::info!("the repository's connections keep breaking: fetching one chunk at a time");
            self.pipeline = None;
        }
    }

    /// Fetches chunk `index` one request at a time, with retries; `failed` is
    /// the error of an attempt on the pipeline, which counts as the first.
    pub(super) fn refetch(
        &mut self,
        index: usize,
        failed: Option<FetchError>,
    ) -> Result<(), DeployError> {
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
    pub(super) fn write(&mut self, index: usize) -> Result<(), DeployError> {
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
pub(super) fn fetch_chunk(
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
pub(super) struct Worker {
    pub(super) compressed: Vec<u8>,
    pub(super) content: Vec<u8>,
    pub(super) decompressor: Option<zstd::bulk::Decompressor<'static>>,
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
    pub(super) fn new(chunk_size: usize) -> Worker {
        Worker {
            compressed: Vec::new(),
            content: Vec::with_capacity(chunk_size),
            decompressor: zstd::bulk::Decompressor::new().ok(),
        }
    }

    /// Looks for the chunk at the same offset of the seed disk; on a match (blake3
    /// first, then the sha256 every written byte is checked against) leaves it in
    /// `self.content`. Read errors on the seed just mean "fetch it".
    pub(super) fn take_from_seed(
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
    pub(super) fn fetch_verified(
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
pub(super) fn check_chunk(
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
