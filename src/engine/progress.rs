//! What a deploy did, counted as it goes: chunks and bytes by where they came
//! from, and the time each stage of the data pass took.

use crate::format::manifest::Manifest;
use crate::source::RetryCounter;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
pub(super) struct Counters {
    pub(super) done: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) zeroed: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) fetched: AtomicU64,
    pub(super) seeded: AtomicU64,
    pub(super) chunks_fetched: AtomicU64,
    pub(super) chunks_skipped: AtomicU64,
    pub(super) chunks_seeded: AtomicU64,
    pub(super) retries: RetryCounter,
    pub(super) fetch_ns: AtomicU64,
    pub(super) verify_ns: AtomicU64,
    pub(super) disk_ns: AtomicU64,
}

/// Adds the time since `since` to `counter` and returns now.
pub(super) fn lap(counter: &AtomicU64, since: Instant) -> Instant {
    let now = Instant::now();
    let ns = u64::try_from((now - since).as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Ordering::Relaxed);
    now
}

impl Counters {
    pub(super) fn snapshot(
        &self,
        manifest: &Manifest,
        range: &Range<usize>,
        started: Instant,
    ) -> Progress {
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
