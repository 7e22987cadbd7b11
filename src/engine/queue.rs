//! What the scanners and the fetchers share: the queue of chunks to fetch (with
//! the rule for sending requests ahead), a deploy's job, and the sizes that
//! bound a chunk's memory and its writeback.

use super::progress::Counters;
use super::{DeployError, DeployOptions, Target};
use crate::format::digest::Digest;
use crate::format::manifest::{ChunkKind, Manifest};
use crate::source::Source;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// The most of a chunk a scanner reads at once: its memory, whatever the
/// chunk size.
pub(super) const SCAN_PIECE: usize = 1 << 20;

/// Chunks the scan found not in place, in the order found, for the fetchers.
#[derive(Default)]
pub(super) struct FetchQueue {
    pub(super) state: Mutex<QueueState>,
    pub(super) ready: Condvar,
    /// Fetchers taking from it.
    pub(super) fetchers: usize,
}

#[derive(Default)]
pub(super) struct QueueState {
    pub(super) indices: VecDeque<usize>,
    /// The scan is over: nothing more will come.
    pub(super) closed: bool,
    /// A stage failed: everyone stops.
    pub(super) failed: bool,
}

impl FetchQueue {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn push(&self, index: usize) {
        self.lock().indices.push_back(index);
        self.ready.notify_one();
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    pub(super) fn fail(&self) {
        let mut state = self.lock();
        state.failed = true;
        state.closed = true;
        self.ready.notify_all();
    }

    pub(super) fn failed(&self) -> bool {
        self.lock().failed
    }

    /// Whether a fetcher busy with a chunk should send the next one's request
    /// ahead: only while more chunks wait than there are fetchers. Otherwise a
    /// chunk would wait behind another on one connection while a fetcher
    /// sits idle (a delta's few chunks, the last chunks of any deploy).
    pub(super) fn ahead(&self) -> bool {
        self.lock().indices.len() >= self.fetchers
    }

    /// Fails the queue unless it was closed.
    pub(super) fn abandon(&self) {
        let mut state = self.lock();
        if !state.closed {
            state.failed = true;
            state.closed = true;
            self.ready.notify_all();
        }
    }

    /// The next chunk to fetch; with `wait`, blocks until there is one or the
    /// queue is closed. None once it is closed and empty, or has failed.
    pub(super) fn pop(&self, wait: bool) -> Option<usize> {
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
pub(super) struct AbandonOnDrop<'a>(pub(super) &'a FetchQueue);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// What every chunk of one deploy shares.
#[derive(Clone, Copy)]
pub(super) struct Job<'a> {
    pub(super) source: &'a dyn Source,
    pub(super) manifest: &'a Manifest,
    pub(super) target: &'a dyn Target,
    pub(super) seed: Option<&'a dyn Target>,
    pub(super) opts: &'a DeployOptions,
    pub(super) counters: &'a Counters,
}

impl Job<'_> {
    pub(super) fn io_error(
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
    pub(super) fn done(&self, index: usize, how: &AtomicU64, chunks: Option<&AtomicU64>) {
        let len = self.manifest.chunks[index].length as u64;
        how.fetch_add(len, Ordering::Relaxed);
        if let Some(chunks) = chunks {
            chunks.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.done.fetch_add(len, Ordering::Relaxed);
    }
}

/// Chunks a fetcher writes after one before that one leaves the page cache:
/// by then its writeback, started when it was written, is likely done.
pub(super) const WRITEBACK_LAG: usize = 4;

/// A data chunk's sha256, stored size and length; None for a zero chunk.
pub(super) fn stored(manifest: &Manifest, index: usize) -> Option<(Digest, u32, usize)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
