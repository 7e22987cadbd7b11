//! Capture: a configured machine's disk made into an image of the repository.
//!
//! The disk is opened read-only and read once. File systems the deploy
//! environment understands are read through their allocation maps
//! (`format::usage`): free blocks are taken as zeros, so they cost nothing to
//! store, fetch or write. Chunks are hashed and compressed here, in the
//! repository's format; the store is asked, a batch at a time, which it lacks,
//! and only those travel. The manifest goes last, and the store publishes it
//! whole or not at all, so a capture cut short at any point leaves no image and
//! a second run uploads only what is still missing.
//!
//! Used by the deploy environment (`imprint.mode=capture`) and by
//! `imprint capture` on a host; the store is an `imprint serve` that accepts
//! captures ([`upload::HttpStore`]).

pub mod upload;

use crate::format::digest::Digest;
use crate::format::gpt::{self, Layout};
use crate::format::manifest::{
    Chunk, ChunkKind, Firmware, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Manifest, Requirements,
};
use crate::format::usage::{self, PartUsage, UsedMap};
use crate::statepart::Window;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Compressed bytes one batch may hold in memory at most: what a machine with
/// little memory can spare while it uploads.
const BATCH_BYTES: u64 = 16 << 20;
/// A manifest's size a chunk adds at most (its entry, postcard-encoded), and
/// the largest manifest sent: what `imprint serve` takes, with room for the
/// partition table.
const MANIFEST_BYTES_PER_CHUNK: u64 = 90;
const MAX_MANIFEST: u64 = 60 << 20;
/// Chunk uploads under way at once: enough to keep a link with some delay
/// busy, and what `imprint serve` takes at once.
const UPLOADS: usize = 4;
/// Digests in one "which do you lack" question, at most.
pub const MAX_BATCH: usize = 256;
/// Times a commit the store answers "chunks missing" is tried again (each
/// after uploading what it names): a store that loses chunks as fast as they
/// arrive is broken, not slow.
const COMMIT_ROUNDS: usize = 3;
/// Bytes of the backup GPT's entry array at the end of a disk (128 entries of
/// 128 bytes); its header takes a sector more. The deploy engine writes its
/// own at the target's end.
const BACKUP_GPT_ENTRIES: u64 = 128 * 128;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("reading {disk}: {source}")]
    Read {
        disk: String,
        source: std::io::Error,
    },
    #[error(
        "{0} has no GPT: capture needs one (the deploy engine places partitions by it); convert the disk with sgdisk -g, or capture it with another tool and use imprint image add"
    )]
    NoGpt(String),
    #[error("the partition table of {disk}: {why}")]
    BadTable { disk: String, why: String },
    #[error("reading the file systems of {disk}: {source}")]
    Usage {
        disk: String,
        source: usage::UsageError,
    },
    #[error("chunk size {0} must be a power of two from 64 KiB to 64 MiB")]
    ChunkSize(u32),
    #[error("compressing chunk {index}: {why}")]
    Compress { index: usize, why: String },
    #[error("the captured manifest is invalid ({0}); this is a bug, please report it")]
    Manifest(String),
    #[error("{0}")]
    Store(String),
    #[error(
        "the repository still lacks {0} chunks after {COMMIT_ROUNDS} uploads of them: it loses what it stores; check its disk and its log"
    )]
    StillMissing(usize),
}

/// What the store answered a manifest.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    /// Published under the manifest digest.
    Stored(Digest),
    /// It lacks chunks the manifest names: upload them and commit again.
    Missing,
}

/// Where a capture goes: an `imprint serve` that accepts captures, or a test's
/// stand-in. Every method is retried by the implementation as it sees fit; an
/// error here ends the capture.
pub trait Store: Sync {
    /// The digests among `digests` (at most [`MAX_BATCH`]) the store lacks.
    fn missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CaptureError>;
    /// Stores one chunk: its zstd frame, named by the uncompressed bytes' digest.
    fn put_chunk(&self, digest: &Digest, stored: &[u8]) -> Result<(), CaptureError>;
    /// Publishes the manifest as `name:tag`. The stored size of a chunk the
    /// store held already is the store's: the manifest sent may carry a
    /// placeholder (the chunk's length) for it, the machine never having
    /// compressed it.
    fn commit(&self, name: &str, tag: &str, manifest: &[u8]) -> Result<Commit, CaptureError>;
}

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub chunk_size: u32,
    /// zstd level of the chunks.
    pub level: i32,
    /// Threads reading, hashing and compressing.
    pub jobs: usize,
    /// The firmware the image boots with (the source machine's); empty: what
    /// the disk shows.
    pub firmware: Vec<Firmware>,
    /// Architecture of the source machine.
    pub arch: String,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            chunk_size: crate::format::manifest::DEFAULT_CHUNK_SIZE,
            level: 3,
            jobs: 2,
            firmware: Vec::new(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }
}

/// What a capture did, for the console, the status events and the CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureReport {
    pub digest: Option<Digest>,
    /// The source disk, and the image made of it (through its last partition).
    pub disk_size: u64,
    pub image_size: u64,
    /// Bytes in use by the allocation maps, and bytes read from the disk.
    pub used_bytes: u64,
    pub read_bytes: u64,
    pub chunks: usize,
    pub zero_chunks: usize,
    /// Chunks (and their compressed bytes) the store lacked and got.
    pub uploaded_chunks: usize,
    pub uploaded_bytes: u64,
    /// Chunks the store had already: skipped.
    pub present_chunks: usize,
    pub partitions: Vec<PartUsage>,
}

impl CaptureReport {
    pub fn summary(&self) -> String {
        format!(
            "disk={} image={} used={} read={} chunks={} zero={} uploaded={} uploaded_bytes={} already_stored={}",
            self.disk_size,
            self.image_size,
            self.used_bytes,
            self.read_bytes,
            self.chunks,
            self.zero_chunks,
            self.uploaded_chunks,
            self.uploaded_bytes,
            self.present_chunks
        )
    }
}

/// Progress, as it goes: bytes of the image done, and uploaded.
pub struct Progress<'a> {
    pub done: u64,
    pub total: u64,
    pub uploaded: u64,
    pub report: &'a CaptureReport,
}

/// What the capture found on the disk before reading its data.
pub struct Plan {
    pub layout: Layout,
    pub used: UsedMap,
    pub partitions: Vec<PartUsage>,
    /// Bytes of the image: through the last partition, plus room for the
    /// backup GPT, 1 MiB aligned.
    pub image_size: u64,
    /// Byte range left out: the deploy's own state partition, if the disk has
    /// one (its record is the source's).
    pub left_out: Option<Range<u64>>,
}

/// Reads the disk's partition table and allocation maps.
pub fn plan(disk: &File, disk_size: u64, name: &str) -> Result<Plan, CaptureError> {
    let mut reader = Window::new(disk, 0, disk_size);
    let layout = gpt::read(&mut reader)
        .map_err(|e| CaptureError::BadTable {
            disk: name.into(),
            why: e.to_string(),
        })?
        .ok_or_else(|| CaptureError::NoGpt(name.into()))?;
    let mut reader = Window::new(disk, 0, disk_size);
    let (used, partitions) =
        usage::disk_usage(&mut reader, disk_size).map_err(|source| CaptureError::Usage {
            disk: name.into(),
            source,
        })?;
    let sector = layout.sector_size as u64;
    let last_end = layout
        .partitions
        .iter()
        .map(|p| (p.last_lba + 1) * sector)
        .max()
        .unwrap_or(layout.first_usable_lba * sector);
    let backup = 1 + BACKUP_GPT_ENTRIES.div_ceil(sector);
    let mut image_size = (last_end + backup * sector)
        .div_ceil(1 << 20)
        .saturating_mul(1 << 20)
        .min(disk_size);
    let left_out = crate::statepart::find(&layout).map(|p| {
        let (start, len) = crate::statepart::byte_range(&layout, p);
        start..start + len
    });
    let mut layout = layout;
    // The image ends before the source disk does: the GPT it carries says so,
    // as one made for a disk of the image's size would. A last partition that
    // runs to the disk's end (no room left for the backup GPT's rule) keeps
    // the disk whole.
    let last_usable = (image_size / sector).saturating_sub(backup + 1);
    if last_end <= (last_usable + 1) * sector {
        layout.last_usable_lba = layout.last_usable_lba.min(last_usable);
    } else {
        image_size = disk_size;
    }
    // What the manifest will be checked for, checked before a byte is read.
    if layout.last_usable_lba >= image_size / sector
        || layout
            .partitions
            .iter()
            .any(|p| p.first_lba > p.last_lba || p.last_lba > layout.last_usable_lba)
    {
        return Err(CaptureError::BadTable {
            disk: name.into(),
            why: "a partition lies past the last usable sector the GPT names, or the GPT names a disk larger than this one; repair it (sgdisk -e, gdisk)".into(),
        });
    }
    Ok(Plan {
        layout,
        used,
        partitions,
        image_size,
        left_out,
    })
}

/// Captures `disk` (`disk_size` bytes, opened read-only) as `name:tag` into
/// `store`. `on_progress` hears each batch.
pub fn capture(
    disk: &File,
    disk_size: u64,
    disk_name: &str,
    (name, tag): (&str, &str),
    opts: &CaptureOptions,
    store: &dyn Store,
    on_progress: &dyn Fn(&Progress),
) -> Result<CaptureReport, CaptureError> {
    let mut cs = opts.chunk_size;
    if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
        return Err(CaptureError::ChunkSize(cs));
    }
    let plan = plan(disk, disk_size, disk_name)?;
    let size = plan.image_size;
    // A manifest the server takes: larger chunks for a disk so large that
    // its chunk table would not fit.
    while size.div_ceil(cs as u64) * MANIFEST_BYTES_PER_CHUNK > MAX_MANIFEST && cs < MAX_CHUNK_SIZE
    {
        cs *= 2;
    }
    if cs != opts.chunk_size {
        log::info!(
            "chunks of {cs} bytes, not {}: the manifest of a {size}-byte image stays within what the server takes",
            opts.chunk_size
        );
    }
    let mut report = CaptureReport {
        disk_size,
        image_size: size,
        used_bytes: used_in(&plan, 0..size).map(|r| r.end - r.start).sum(),
        partitions: plan.partitions.clone(),
        ..CaptureReport::default()
    };
    let count = size.div_ceil(cs as u64) as usize;
    report.chunks = count;
    let batch = ((BATCH_BYTES / cs as u64) as usize).clamp(1, MAX_BATCH);
    let mut chunks: Vec<Chunk> = Vec::with_capacity(count);
    let read_bytes = AtomicU64::new(0);
    // The disk is read (hashed, compressed) a batch ahead of the uploads, so
    // the cores and the link work at the same time; at most two batches are
    // held.
    let (batches, ready) = std::sync::mpsc::sync_channel::<Vec<Done>>(0);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            // Owned here, so the uploads see the end when the reading ends.
            let batches = batches;
            for first in (0..count).step_by(batch) {
                let indices = first..(first + batch).min(count);
                let done = read_batch(disk, disk_name, &plan, cs, indices, opts, &read_bytes)?;
                if batches.send(done).is_err() {
                    break; // the uploads stopped: their error is the one told
                }
            }
            Ok::<(), CaptureError>(())
        });
        let uploaded = (|| {
            for done in ready {
                chunks.extend(upload_batch(done, store, opts.level, &mut report)?);
                report.read_bytes = read_bytes.load(Ordering::Relaxed);
                on_progress(&Progress {
                    done: chunks.last().map_or(0, |c| c.offset + c.length as u64),
                    total: size,
                    uploaded: report.uploaded_bytes,
                    report: &report,
                });
            }
            Ok(())
        })();
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(CaptureError::Store("the disk reader panicked".into())));
        uploaded.and(read)
    })?;
    let manifest = Manifest {
        name: name.to_string(),
        size,
        chunk_size: cs,
        requirements: Requirements {
            arch: Some(opts.arch.clone()),
            firmware: if opts.firmware.is_empty() {
                detect_firmware(disk, &plan.layout)
            } else {
                opts.firmware.clone()
            },
            min_disk_size: size,
            ..Requirements::default()
        },
        chunks,
        layout: Some(plan.layout.clone()),
        boot: None,
        generalized: true,
    };
    manifest
        .validate()
        .map_err(|e| CaptureError::Manifest(e.to_string()))?;
    let bytes = manifest.encode();
    for _ in 0..COMMIT_ROUNDS {
        match store.commit(name, tag, &bytes)? {
            Commit::Stored(digest) => {
                report.digest = Some(digest);
                report.read_bytes = read_bytes.load(Ordering::Relaxed);
                return Ok(report);
            }
            Commit::Missing => {
                let sent = upload_missing(disk, disk_name, &plan, &manifest, opts, store)?;
                report.uploaded_chunks += sent.0;
                report.uploaded_bytes += sent.1;
            }
        }
    }
    let still = missing_of(&manifest, store)?.len();
    Err(CaptureError::StillMissing(still))
}

/// Uploads what the store lacks of one batch, compressed, up to [`UPLOADS`]
/// at once; the batch's manifest entries, with the stored sizes of what was
/// sent.
fn upload_batch(
    done: Vec<Done>,
    store: &dyn Store,
    level: i32,
    report: &mut CaptureReport,
) -> Result<Vec<Chunk>, CaptureError> {
    let digests: Vec<Digest> = done
        .iter()
        .filter_map(|(chunk, _)| match chunk.kind {
            ChunkKind::Data { sha256, .. } => Some(sha256),
            ChunkKind::Zero => None,
        })
        .collect();
    report.zero_chunks += done.len() - digests.len();
    let lacking = if digests.is_empty() {
        Vec::new()
    } else {
        store.missing(&digests)?
    };
    // Each lacking chunk once (one listed twice in a batch goes once).
    let mut sends: Vec<usize> = Vec::new();
    for (i, (chunk, _)) in done.iter().enumerate() {
        if let ChunkKind::Data { sha256, .. } = chunk.kind
            && lacking.contains(&sha256)
            && !sends.iter().any(|&j| done[j].0.kind == chunk.kind)
        {
            sends.push(i);
        }
    }
    let sizes: Vec<AtomicU64> = sends.iter().map(|_| AtomicU64::new(0)).collect();
    crate::parallel::for_each_index(
        0..sends.len(),
        UPLOADS,
        || (),
        |(), k| {
            let (chunk, data) = &done[sends[k]];
            let (ChunkKind::Data { sha256, .. }, Some(data)) = (chunk.kind, data) else {
                return Ok(());
            };
            let stored = compress(data, level, sends[k])?;
            store.put_chunk(&sha256, &stored)?;
            sizes[k].store(stored.len() as u64, Ordering::Relaxed);
            Ok(())
        },
    )?;
    let mut chunks: Vec<Chunk> = done.into_iter().map(|(chunk, _)| chunk).collect();
    for (k, &i) in sends.iter().enumerate() {
        let size = sizes[k].load(Ordering::Relaxed);
        report.uploaded_bytes += size;
        let sent = chunks[i].kind;
        for chunk in chunks.iter_mut().filter(|c| c.kind == sent) {
            if let ChunkKind::Data { stored_size, .. } = &mut chunk.kind {
                *stored_size = size as u32;
            }
        }
    }
    report.uploaded_chunks += sends.len();
    report.present_chunks += digests.len() - sends.len();
    Ok(chunks)
}

fn compress(data: &[u8], level: i32, index: usize) -> Result<Vec<u8>, CaptureError> {
    zstd::bulk::compress(data, level).map_err(|e| CaptureError::Compress {
        index,
        why: e.to_string(),
    })
}

/// The used byte ranges of `span`, without the part left out.
fn used_in(plan: &Plan, span: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
    let hole = plan.left_out.clone().unwrap_or(0..0);
    plan.used
        .used_within(span.start, span.end)
        .flat_map(move |r| {
            let before = r.start..r.end.min(hole.start);
            let after = r.start.max(hole.end)..r.end;
            [before, after]
        })
        .filter(|r| r.start < r.end)
}

/// One chunk read, hashed and compressed: its manifest entry, and its stored
/// bytes when it holds data.
type Done = (Chunk, Option<Vec<u8>>);

fn read_batch(
    disk: &File,
    disk_name: &str,
    plan: &Plan,
    cs: u32,
    indices: Range<usize>,
    opts: &CaptureOptions,
    read_bytes: &AtomicU64,
) -> Result<Vec<Done>, CaptureError> {
    let slots: Vec<Mutex<Option<Done>>> = indices.clone().map(|_| Mutex::new(None)).collect();
    let first = indices.start;
    crate::parallel::for_each_index(
        indices,
        opts.jobs,
        || vec![0u8; cs as usize],
        |buf, index| {
            let done = read_chunk(disk, disk_name, plan, cs, index, buf, read_bytes)?;
            *slots[index - first]
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(done);
            Ok(())
        },
    )?;
    Ok(slots
        .into_iter()
        .filter_map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect())
}

fn read_chunk(
    disk: &File,
    disk_name: &str,
    plan: &Plan,
    cs: u32,
    index: usize,
    buf: &mut [u8],
    read_bytes: &AtomicU64,
) -> Result<Done, CaptureError> {
    let offset = index as u64 * cs as u64;
    let length = (plan.image_size - offset).min(cs as u64) as u32;
    let buf = &mut buf[..length as usize];
    buf.fill(0);
    let mut any = false;
    for r in used_in(plan, offset..offset + length as u64) {
        let at = (r.start - offset) as usize..(r.end - offset) as usize;
        disk.read_exact_at(&mut buf[at], r.start)
            .map_err(|source| CaptureError::Read {
                disk: disk_name.into(),
                source,
            })?;
        read_bytes.fetch_add(r.end - r.start, Ordering::Relaxed);
        any = true;
    }
    let chunk = |kind| Chunk {
        offset,
        length,
        kind,
    };
    if !any || buf.iter().all(|&b| b == 0) {
        return Ok((chunk(ChunkKind::Zero), None));
    }
    // Compressed only once the store says it lacks the chunk: until then
    // its stored size is a placeholder (the store takes the size of what it
    // holds; see `Store::commit`).
    let kind = ChunkKind::Data {
        sha256: Digest::of(buf),
        blake3: *blake3::hash(buf).as_bytes(),
        stored_size: length,
    };
    Ok((chunk(kind), Some(buf.to_vec())))
}

/// The manifest's data chunks the store lacks.
fn missing_of(manifest: &Manifest, store: &dyn Store) -> Result<Vec<Digest>, CaptureError> {
    let data: Vec<Digest> = manifest
        .chunks
        .iter()
        .filter_map(|c| match c.kind {
            ChunkKind::Data { sha256, .. } => Some(sha256),
            ChunkKind::Zero => None,
        })
        .collect();
    let mut lacking = Vec::new();
    for batch in data.chunks(MAX_BATCH) {
        lacking.extend(store.missing(batch)?);
    }
    Ok(lacking)
}

/// After a commit the store refused for missing chunks: reads those chunks
/// again and uploads them. Returns chunks and bytes sent.
fn upload_missing(
    disk: &File,
    disk_name: &str,
    plan: &Plan,
    manifest: &Manifest,
    opts: &CaptureOptions,
    store: &dyn Store,
) -> Result<(usize, u64), CaptureError> {
    // Each sent once, however often the manifest names it.
    let mut lacking: std::collections::HashSet<Digest> =
        missing_of(manifest, store)?.into_iter().collect();
    let mut sent = (0, 0);
    let mut buf = vec![0u8; manifest.chunk_size as usize];
    let unused = AtomicU64::new(0);
    for (index, chunk) in manifest.chunks.iter().enumerate() {
        let ChunkKind::Data { sha256, .. } = chunk.kind else {
            continue;
        };
        if !lacking.remove(&sha256) {
            continue;
        }
        let (again, stored) = read_chunk(
            disk,
            disk_name,
            plan,
            manifest.chunk_size,
            index,
            &mut buf,
            &unused,
        )?;
        match (again.kind, stored) {
            (ChunkKind::Data { sha256: now, .. }, Some(data)) if now == sha256 => {
                let stored = compress(&data, opts.level, index)?;
                store.put_chunk(&sha256, &stored)?;
                sent.0 += 1;
                sent.1 += stored.len() as u64;
            }
            _ => {
                return Err(CaptureError::Store(format!(
                    "chunk {index} of {disk_name} changed while it was captured: capture a disk nothing writes to (the deploy environment opens it read-only, but another machine may share it)"
                )));
            }
        }
    }
    Ok(sent)
}

/// The firmware a disk boots with, by what it holds (see [`Firmware::of_disk`]).
pub fn detect_firmware(disk: &File, layout: &Layout) -> Vec<Firmware> {
    let mut mbr = vec![0u8; 512];
    if disk.read_exact_at(&mut mbr, 0).is_err() {
        mbr.clear();
    }
    Firmware::of_disk(&mbr, Some(layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::gpt::ESP_TYPE;
    use crate::format::gpt::tests::image_with;
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::atomic::AtomicBool;

    /// A store in memory; it can lose a chunk once, at the first commit.
    #[derive(Default)]
    struct MemStore {
        chunks: Mutex<HashMap<Digest, Vec<u8>>>,
        published: Mutex<Vec<Vec<u8>>>,
        lose_one: AtomicBool,
    }

    impl Store for MemStore {
        fn missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CaptureError> {
            assert!(digests.len() <= MAX_BATCH);
            let chunks = self.chunks.lock().unwrap();
            Ok(digests
                .iter()
                .filter(|d| !chunks.contains_key(d))
                .copied()
                .collect())
        }
        fn put_chunk(&self, digest: &Digest, stored: &[u8]) -> Result<(), CaptureError> {
            let plain = zstd::bulk::decompress(stored, MAX_CHUNK_SIZE as usize).unwrap();
            assert_eq!(Digest::of(&plain), *digest, "uploaded under its own name");
            self.chunks.lock().unwrap().insert(*digest, stored.to_vec());
            Ok(())
        }
        fn commit(&self, _: &str, _: &str, manifest: &[u8]) -> Result<Commit, CaptureError> {
            let mut m = Manifest::decode(manifest).unwrap();
            if self.lose_one.swap(false, Ordering::Relaxed) {
                let mut chunks = self.chunks.lock().unwrap();
                let victim = *chunks.keys().next().unwrap();
                chunks.remove(&victim);
            }
            let chunks = self.chunks.lock().unwrap();
            let complete = m.chunks.iter().all(|c| match c.kind {
                ChunkKind::Data { sha256, .. } => chunks.contains_key(&sha256),
                ChunkKind::Zero => true,
            });
            if !complete {
                return Ok(Commit::Missing);
            }
            // As imprint serve does: the stored sizes are the store's.
            for c in &mut m.chunks {
                if let ChunkKind::Data {
                    sha256,
                    stored_size,
                    ..
                } = &mut c.kind
                {
                    *stored_size = chunks[sha256].len() as u32;
                }
            }
            let published = m.encode();
            let digest = Digest::of(&published);
            self.published.lock().unwrap().push(published);
            Ok(Commit::Stored(digest))
        }
    }

    impl MemStore {
        /// The last published image, as bytes.
        fn image(&self) -> (Manifest, Vec<u8>) {
            let m = Manifest::decode(self.published.lock().unwrap().last().unwrap()).unwrap();
            let chunks = self.chunks.lock().unwrap();
            let mut out = Vec::new();
            for c in &m.chunks {
                match c.kind {
                    ChunkKind::Data { sha256, .. } => out.extend(
                        zstd::bulk::decompress(&chunks[&sha256], c.length as usize).unwrap(),
                    ),
                    ChunkKind::Zero => out.resize(out.len() + c.length as usize, 0),
                }
            }
            (m, out)
        }
    }

    const SECTORS: u64 = 32768; // 16 MiB
    const DATA: Range<u64> = 2048..6144; // partition 1, 2 MiB of noise
    const STATE: Range<u64> = 6144..22528; // the source's state partition

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn disk() -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut img = image_with(
            SECTORS,
            &[
                (ESP_TYPE, DATA.start, DATA.end - 1, "esp"),
                (
                    crate::statepart::TYPE_GUID,
                    STATE.start,
                    STATE.end - 1,
                    crate::statepart::NAME,
                ),
            ],
        );
        let bytes = |r: &Range<u64>| r.start as usize * 512..r.end as usize * 512;
        // Neither a FAT nor an ext4 signature: partition 1 is read raw.
        img[bytes(&DATA)].copy_from_slice(&noise(bytes(&DATA).len(), 1));
        img[bytes(&STATE)].copy_from_slice(&noise(bytes(&STATE).len(), 2));
        let tail = STATE.end as usize * 512..img.len() - 64 * 512;
        img[tail.clone()].copy_from_slice(&noise(tail.len(), 3));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&img).unwrap();
        (file, img)
    }

    fn run(file: &File, store: &MemStore) -> CaptureReport {
        let opts = CaptureOptions {
            chunk_size: MIN_CHUNK_SIZE,
            jobs: 3,
            ..CaptureOptions::default()
        };
        let size = file.metadata().unwrap().len();
        capture(file, size, "disk", ("golden", "1"), &opts, store, &|_| {}).unwrap()
    }

    #[test]
    fn a_capture_stores_what_is_used_and_a_second_uploads_nothing() {
        let (file, img) = disk();
        let store = MemStore::default();
        let first = run(file.as_file(), &store);
        let (m, image) = store.image();
        // The image ends after the last partition and room for a backup GPT,
        // 1 MiB aligned: the noise after it is not the image's.
        assert_eq!(first.image_size, 12 << 20);
        assert_eq!(m.size, first.image_size);
        assert_eq!(m.requirements.min_disk_size, m.size);
        assert_eq!(m.requirements.firmware, [Firmware::Uefi]);
        assert!(m.generalized);
        let layout = m.layout.as_ref().unwrap();
        assert!(layout.last_usable_lba < m.size / 512);
        // Byte for byte, except the state partition, which reads as zeros.
        let state = STATE.start as usize * 512..STATE.end as usize * 512;
        assert_eq!(image[..state.start], img[..state.start]);
        assert!(image[state.clone()].iter().all(|&b| b == 0));
        assert_eq!(
            image[state.end..],
            img[state.end..m.size as usize],
            "the backup GPT's room"
        );
        let data = m
            .chunks
            .iter()
            .filter(|c| matches!(c.kind, ChunkKind::Data { .. }))
            .count();
        assert_eq!(first.uploaded_chunks, data);
        assert_eq!(first.present_chunks, 0);
        assert_eq!(first.zero_chunks, m.chunks.len() - data);
        // Only the used bytes were read: not the state partition.
        assert!(first.read_bytes < (8 << 20), "{}", first.read_bytes);

        let second = run(file.as_file(), &store);
        assert_eq!(second.uploaded_chunks, 0);
        assert_eq!(second.present_chunks, data);
        assert_eq!(second.digest, first.digest);

        // One byte changed: one chunk travels.
        file.as_file()
            .write_all_at(
                &[!img[DATA.start as usize * 512 + 70_000]],
                DATA.start * 512 + 70_000,
            )
            .unwrap();
        let third = run(file.as_file(), &store);
        assert_eq!(third.uploaded_chunks, 1);
        assert_ne!(third.digest, first.digest);
    }

    #[test]
    fn chunks_the_store_lost_before_the_commit_are_read_and_sent_again() {
        let (file, _) = disk();
        let store = MemStore::default();
        store.lose_one.store(true, Ordering::Relaxed);
        let report = run(file.as_file(), &store);
        assert!(report.digest.is_some());
        let data = store
            .image()
            .0
            .chunks
            .iter()
            .filter(|c| matches!(c.kind, ChunkKind::Data { .. }))
            .count();
        assert_eq!(
            report.uploaded_chunks,
            data + 1,
            "the lost chunk went twice"
        );
    }

    #[test]
    fn a_4k_sector_disk_whose_last_partition_runs_to_its_end_is_taken_whole() {
        use crate::format::gpt::tests::image_with_sector_size;
        // 8 MiB of 4 KiB sectors; the partition ends at the last usable one.
        let sectors = 2048u64;
        let mut img = image_with_sector_size(4096, sectors, &[(ESP_TYPE, 256, sectors - 6, "esp")]);
        let part = 256 * 4096..(sectors as usize - 5) * 4096;
        img[part.clone()].copy_from_slice(&noise(part.len(), 9));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&img).unwrap();
        let store = MemStore::default();
        let report = run(file.as_file(), &store);
        assert_eq!(report.image_size, img.len() as u64);
        let (m, image) = store.image();
        assert_eq!(image[part.clone()], img[part]);
        assert_eq!(m.layout.unwrap().last_usable_lba, sectors - 6);
    }

    #[test]
    fn a_disk_without_a_gpt_is_refused_by_name() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&noise(1 << 20, 5)).unwrap();
        let err = capture(
            file.as_file(),
            1 << 20,
            "/dev/vda",
            ("golden", "1"),
            &CaptureOptions::default(),
            &MemStore::default(),
            &|_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("/dev/vda has no GPT"), "{err}");
    }
}
