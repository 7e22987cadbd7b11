//! The host's `imprint deploy`: an image written to a disk as it is, byte for
//! byte, with no state record or GPT of its own, in the install sequence's
//! order for what makes a disk look bootable (the boot regions cleared first,
//! the head written last), the head fetched while the data is written.

use super::fetch::fetch_chunk;
use super::install::{boot_regions, reread_partitions, tail_index, write_data, zero_synced};
use super::{DeployError, DeployOptions, DiskTarget, Progress, Target};
use crate::format::digest::Digest;
use crate::format::is_zero;
use crate::format::manifest::{ChunkKind, Manifest};
use crate::source::Source;
use std::io;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// A host deploy that did not complete, and whether it changed the disk: the
/// operator learns whether the old OS still boots or the deploy must be run again.
#[derive(Debug, thiserror::Error)]
#[error("{source}. {}", if *.disk_changed {
    "The disk was partly written and its boot records are cleared, so it does not boot until a deploy completes: run the deploy again (what is in place already is kept)"
} else {
    "Nothing on the disk was changed"
})]
pub struct WriteImageError {
    pub source: DeployError,
    pub disk_changed: bool,
}

impl WriteImageError {
    fn unchanged(source: impl Into<DeployError>) -> Self {
        WriteImageError {
            source: source.into(),
            disk_changed: false,
        }
    }
}

/// The host's deploy: `manifest`'s image onto `disk` as it is, byte for byte, in
/// the install sequence's order for what makes a disk look bootable. The boot
/// regions (the head, and the disk's last bytes where the image reaches them) are
/// zeroed and synced before any other byte changes; then the data, the chunks at
/// the disk's end last and one at a time; then, with all of it synced, the head.
/// Interrupted, the disk does not look bootable, unless it already held the whole
/// image; run again, everything in place is skipped. A disk that holds the image
/// already is only read, and bytes past the image are never touched (so on a
/// larger disk an old backup GPT at its very end stays, as it always did).
pub fn write_image(
    source: &dyn Source,
    manifest: &Manifest,
    disk: &DiskTarget,
    opts: &DeployOptions,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, WriteImageError> {
    let started = std::time::Instant::now();
    let needed = manifest.requirements.min_disk_size.max(manifest.size);
    if disk.size() < needed {
        return Err(WriteImageError::unchanged(super::TargetError::TooSmall {
            path: disk.describe().into(),
            size: disk.size(),
            needed,
        }));
    }
    let [head, end] = boot_regions(manifest, disk.size());
    // Only what is the image's own: the disk's end is left alone when the image
    // does not reach it.
    let regions = [head, end.start..end.end.min(manifest.size)];
    let tail = tail_index(manifest, disk.size());
    // What of the boot regions is in place already, verified, so that taking them
    // down costs no fetch: a delta or a redeploy fetches only what changed.
    let kept = keep_in_place(manifest, disk, &regions, tail).map_err(WriteImageError::unchanged)?;
    let in_place = |chunk: usize| kept.iter().any(|k| k.chunk == chunk);
    let io = |what: &'static str, offset: u64| {
        move |source| DeployError::TargetIo {
            what,
            target: disk.describe(),
            offset,
            source,
        }
    };
    // A head that is not the image's is fetched alongside the data, and the
    // old one goes down before the first write, once the new one is in hand:
    // the old head never boots over new data, and a head that cannot be
    // fetched leaves the disk untouched.
    // Set before the first byte on the disk changes.
    let disk_changed = AtomicBool::new(false);
    let result = std::thread::scope(|scope| -> Result<Progress, DeployError> {
        // The head's fetch while it runs, then what it ended with.
        let head_state = Mutex::new((
            (!in_place(0)).then(|| scope.spawn(|| fetch_chunk(source, manifest, 0, &opts.retry))),
            None::<HeadFetch>,
        ));
        // Waits, once, for the head's fetch to end; an error when it failed.
        let head = || -> io::Result<()> {
            let mut state = head_state.lock().unwrap_or_else(|e| e.into_inner());
            let (fetching, ended) = &mut *state;
            let ended = ended.get_or_insert_with(|| match fetching.take() {
                Some(h) => h
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    .map(Some),
                None => Ok(None),
            });
            match ended {
                Err(_) => Err(io::Error::other(
                    "the image's first chunk could not be fetched",
                )),
                Ok(_) => Ok(()),
            }
        };
        let target = TakeDownFirst {
            inner: disk,
            regions: &regions,
            taken_down: Mutex::new(false),
            changing: &disk_changed,
            first: &head,
        };
        let take_down = || {
            target
                .take_down()
                .map_err(io("invalidating the boot records of", 0))
        };
        let put_back = |chunk: usize| -> Result<(), DeployError> {
            if !target.is_taken_down() {
                return Ok(());
            }
            for k in kept.iter().filter(|k| k.chunk == chunk) {
                disk.write_at(&k.bytes, k.offset)
                    .map_err(io("writing", k.offset))?;
            }
            Ok(())
        };
        let count = manifest.chunks.len();
        let data = write_data(
            source,
            manifest,
            &target,
            None,
            opts,
            on_progress,
            &|index| {
                // Every tail chunk reaches the disk's last bytes. The regions come down
                // before the first if any is to change, so never under one already found
                // in place; each in place is put back just before its turn.
                if index == tail && (tail..count).any(|i| !in_place(i)) {
                    take_down()?;
                }
                put_back(index)
            },
        );
        // The head's own error first: the data pass may have failed for it.
        let _ = head();
        let fetched_head = match head_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .take()
        {
            Some(Ok(fetched)) => fetched,
            Some(Err(e)) => return Err(e),
            None => None,
        };
        // With nothing written, the old head needs no taking down: no new data
        // is under it.
        let data = data?;
        disk.sync().map_err(io("syncing", 0))?;
        let len = manifest.chunks[0].length as u64;
        let mut first = Progress {
            total_bytes: len,
            done_bytes: len,
            chunks: 1,
            ..Progress::default()
        };
        let head_in_place = fetched_head.is_none();
        match fetched_head {
            None => {
                put_back(0)?;
                first.skipped_bytes = len;
                first.chunks_skipped = 1;
            }
            Some((bytes, fetched)) => {
                disk_changed.store(true, Ordering::Relaxed);
                disk.write_at(&bytes, 0).map_err(io("writing", 0))?;
                first = first.merge(&fetched);
                first.chunks = 1;
                match manifest.chunks[0].kind {
                    ChunkKind::Zero => first.zeroed_bytes = len,
                    ChunkKind::Data { .. } => first.written_bytes = len,
                }
            }
        }
        disk.sync().map_err(io("syncing", 0))?;
        // A head found in place is the partition table the kernel read already;
        // re-reading it would only make the kernel drop the disk's page cache.
        if !head_in_place {
            reread_partitions(disk);
        }
        let mut progress = data.merge(&first);
        progress.elapsed = started.elapsed();
        Ok(progress)
    });
    result.map_err(|source| WriteImageError {
        source,
        disk_changed: disk_changed.into_inner(),
    })
}

/// The image's first chunk as fetched, with what the fetch took; None when the
/// disk holds it already.
type HeadFetch = Result<Option<(Vec<u8>, Progress)>, DeployError>;

/// Bytes of a boot region that belong to a chunk found in place.
struct Kept {
    chunk: usize,
    offset: u64,
    bytes: Vec<u8>,
}

/// For chunk 0 and the tail chunks (from `tail`), each that `disk` holds already
/// (checked against the manifest's blake3 and sha256), its bytes within `regions`.
fn keep_in_place(
    manifest: &Manifest,
    disk: &DiskTarget,
    regions: &[Range<u64>],
    tail: usize,
) -> Result<Vec<Kept>, DeployError> {
    let mut kept = Vec::new();
    let mut content = Vec::new();
    for index in std::iter::once(0).chain(tail..manifest.chunks.len()) {
        let chunk = &manifest.chunks[index];
        let span = chunk.offset..chunk.offset + chunk.length as u64;
        if !regions
            .iter()
            .any(|r| r.start < span.end && span.start < r.end)
        {
            continue;
        }
        content.resize(chunk.length as usize, 0);
        disk.read_at(&mut content, chunk.offset)
            .map_err(|source| DeployError::TargetIo {
                what: "reading",
                target: disk.describe(),
                offset: chunk.offset,
                source,
            })?;
        let in_place = match chunk.kind {
            ChunkKind::Zero => is_zero(&content),
            ChunkKind::Data { sha256, blake3, .. } => {
                blake3::hash(&content).as_bytes() == &blake3 && Digest::of(&content) == sha256
            }
        };
        if !in_place {
            continue;
        }
        for r in regions {
            let (start, end) = (r.start.max(span.start), r.end.min(span.end));
            if start < end {
                let at = (start - span.start) as usize..(end - span.start) as usize;
                kept.push(Kept {
                    chunk: index,
                    offset: start,
                    bytes: content[at].to_vec(),
                });
            }
        }
    }
    Ok(kept)
}

/// A target whose boot regions are zeroed, and synced, before the first write
/// reaches it: a disk that already holds every chunk is only read.
struct TakeDownFirst<'a> {
    inner: &'a DiskTarget,
    regions: &'a [Range<u64>],
    taken_down: Mutex<bool>,
    /// Set before the take-down's first write.
    changing: &'a AtomicBool,
    /// Runs before the take-down, which does not happen when it fails: the
    /// new head must be in hand before the old one goes.
    first: &'a (dyn Fn() -> io::Result<()> + Sync),
}

impl TakeDownFirst<'_> {
    fn take_down(&self) -> io::Result<()> {
        let mut done = self
            .taken_down
            .lock()
            .map_err(|_| io::Error::other("a writer panicked"))?;
        if !*done {
            (self.first)()?;
            self.changing.store(true, Ordering::Relaxed);
            zero_synced(self.inner, self.regions)?;
            *done = true;
        }
        Ok(())
    }

    fn is_taken_down(&self) -> bool {
        self.taken_down.lock().map_or(true, |done| *done)
    }
}

impl Target for TakeDownFirst<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.take_down()?;
        self.inner.write_at(buf, offset)
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.take_down()?;
        self.inner.zero_range(offset, len)
    }
    fn forget_written(&self, offset: u64, len: u64) {
        self.inner.forget_written(offset, len)
    }
    fn known_zero(&self, offset: u64, len: u64) -> bool {
        self.inner.known_zero(offset, len)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
