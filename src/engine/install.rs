//! The install sequence: the ordered steps that turn a disk into a deployed one.
//!
//! The order is what keeps a half-written disk from booting. The old boot records
//! go first (boot code, protective MBR, both GPT copies); then the image's data,
//! every chunk checked before it is written; then what makes the disk bootable,
//! last and each synced before the next: the state record, the backup GPT at the
//! disk's real end, and finally the head (boot code, protective MBR, primary GPT).
//! Interrupted anywhere, the disk either does not look bootable or holds the
//! whole image; run again, the sequence skips what is already in place.
//!
//! The host's `imprint deploy` writes an image as it is, with no state record or
//! GPT of its own, but in the same order for what makes a disk look bootable:
//! [`write_image`].

use super::datapass::deploy_chunks;
use super::fetch::fetch_chunk;
use super::{DeployError, DeployOptions, DiskTarget, Progress, Target};
use crate::format::digest::Digest;
use crate::format::gpt::{self, Guid, Layout, Partition, RelocateError};
use crate::format::is_zero;
use crate::format::manifest::{ChunkKind, Manifest};
use crate::format::state::{self, Record, StateError};
use crate::source::Source;
use crate::statepart::{self, Window};
use crate::sys;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes cleared at each end of the disk before anything else is written: the
/// boot code, protective MBR and primary GPT at the start, the backup GPT at the
/// end (128 entries of 128 bytes plus headers, for 512- and 4096-byte sectors).
const BOOT_RECORD_SPAN: u64 = 64 << 10;

/// The steps, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The old boot code, protective MBR and both GPT copies are zeroed.
    InvalidateBootRecords,
    /// Every chunk but the first (which holds the boot records) is in place.
    WriteData,
    /// The image's GPT is rewritten for this disk, and the first chunk's bytes
    /// past the partition table (the start of partitions that begin inside it)
    /// are written: still invisible, since no partition table is valid yet.
    RewritePartitionTable,
    /// The state record is in the state partition.
    WriteStateRecord,
    /// The backup GPT is at the disk's real end.
    WriteBackupGpt,
    /// Boot code, protective MBR and primary GPT are written: the disk boots.
    /// (`Plan::before_head` runs just before.)
    WriteHead,
}

impl Step {
    pub const ORDER: [Step; 6] = [
        Step::InvalidateBootRecords,
        Step::WriteData,
        Step::RewritePartitionTable,
        Step::WriteStateRecord,
        Step::WriteBackupGpt,
        Step::WriteHead,
    ];

    /// A stable name for the console and logs.
    pub fn name(self) -> &'static str {
        match self {
            Step::InvalidateBootRecords => "invalidate-boot-records",
            Step::WriteData => "write-data",
            Step::RewritePartitionTable => "rewrite-partition-table",
            Step::WriteStateRecord => "write-state-record",
            Step::WriteBackupGpt => "write-backup-gpt",
            Step::WriteHead => "write-head",
        }
    }
}

/// What the caller decided about this disk before the install runs.
pub struct Plan<'a> {
    /// GPT disk GUID of the deployed disk: every deploy gets a fresh one, so two
    /// disks deployed from one image can be told apart.
    pub disk_guid: Guid,
    /// GUID of the state partition created when the image has none.
    pub state_guid: Guid,
    /// Upgrades: the previous OS's layout. Every partition of the new disk that
    /// shares its GUID with one there gets the next of `fresh_guids` (in
    /// partition order): firmware boot entries name the ESP by GUID, and
    /// `root=PARTUUID=` and the like must find the new disk's partition alone.
    pub previous: Option<&'a Layout>,
    pub fresh_guids: &'a [Guid],
    /// The record for the state partition.
    pub record: &'a Record,
    /// A disk whose chunks at the same offsets are copied instead of fetched.
    pub seed: Option<&'a dyn Target>,
    pub opts: DeployOptions,
    /// Runs with every byte of the install on the disk but the head, with the
    /// disk's layout: what it changes in the partitions' file systems is in place
    /// before anything (firmware, GRUB, a kernel) can find them by partition. An
    /// upgrade gives file systems fresh identities here.
    pub before_head: Option<&'a (dyn Fn(&Layout) + Sync)>,
}

/// What the install did.
#[derive(Debug)]
pub struct Installed {
    pub progress: Progress,
    /// The disk's partition table as written.
    pub layout: Layout,
    /// The state partition, if the install created it.
    pub added_state: Option<Partition>,
    /// Partitions that shared a GUID with the previous OS's (as the image has
    /// them), with the fresh GUID each has now.
    pub renewed: Vec<(Partition, Guid)>,
    /// Partitions still sharing a GUID with the previous OS's: more of them
    /// than fresh GUIDs were given.
    pub shared_guids: Vec<Partition>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "image {0} has no GPT partition table; imprint deploys GPT disk images (its state lives in a partition). Nothing was written"
    )]
    NoPartitionTable(String),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error("{what} {disk}: {source}")]
    Io {
        what: &'static str,
        disk: String,
        source: io::Error,
    },
    #[error("rewriting the partition table for {disk}: {source}")]
    PartitionTable { disk: String, source: RelocateError },
    #[error("no imprint-state partition on {0} after rewriting the GPT")]
    NoStatePartition(String),
    #[error("writing the state record on {disk}: {source}")]
    StateRecord { disk: String, source: StateError },
    #[error("stopped after {0:?}")]
    Stopped(Step),
}

/// The disk size `manifest` needs: the image, plus room after its last partition
/// for a state partition (1 MiB aligned) and the backup GPT if it has none.
pub fn required_size(manifest: &Manifest) -> Result<u64, InstallError> {
    let layout = manifest
        .layout
        .as_ref()
        .ok_or_else(|| InstallError::NoPartitionTable(manifest.name.clone()))?;
    let needed = manifest.requirements.min_disk_size.max(manifest.size);
    if statepart::find(layout).is_some() {
        return Ok(needed);
    }
    let end = layout
        .partitions
        .iter()
        .map(|p| p.last_lba + 1)
        .max()
        .unwrap_or(0)
        * layout.sector_size as u64;
    Ok(needed.max(end.div_ceil(1 << 20) * (1 << 20) + statepart::CREATE_SIZE + BOOT_RECORD_SPAN))
}

/// Runs the install sequence of `manifest` onto `disk`. `on_progress` hears the
/// data step's progress; `after` hears each step as it completes and may stop the
/// sequence there by returning false.
pub fn install(
    source: &dyn Source,
    manifest: &Manifest,
    disk: &DiskTarget,
    plan: &Plan,
    on_progress: &(dyn Fn(&Progress) + Sync),
    after: &mut dyn FnMut(Step) -> bool,
) -> Result<Installed, InstallError> {
    let mut done = |step: Step| {
        if after(step) {
            Ok(())
        } else {
            Err(InstallError::Stopped(step))
        }
    };
    if manifest.layout.is_none() {
        return Err(InstallError::NoPartitionTable(manifest.name.clone()));
    }
    // A chunk this machine cannot hold is refused before the old OS is touched.
    super::fit_jobs(
        plan.opts.jobs,
        manifest.chunk_size,
        crate::sys::available_memory(),
    )?;
    invalidate_boot_records(disk, manifest)?;
    done(Step::InvalidateBootRecords)?;
    let progress = write_data(
        source,
        manifest,
        disk,
        plan.seed,
        &plan.opts,
        on_progress,
        &|_| Ok(()),
    )?;
    done(Step::WriteData)?;
    let (mut head, _) = fetch_chunk(source, manifest, 0, &plan.opts.retry)?;
    let (relocated, mut installed) = rewrite_partition_table(&mut head, disk, manifest, plan)?;
    installed.progress = progress;
    let span = head_span(&relocated.layout, head.len());
    write_synced(
        disk,
        &head[span..],
        span as u64,
        "writing the first chunk of",
    )?;
    done(Step::RewritePartitionTable)?;
    write_state_record(disk, &relocated.layout, plan.record)?;
    done(Step::WriteStateRecord)?;
    write_synced(
        disk,
        &relocated.backup,
        relocated.backup_offset,
        "writing the backup GPT of",
    )?;
    done(Step::WriteBackupGpt)?;
    if let Some(before_head) = plan.before_head {
        before_head(&relocated.layout);
    }
    write_head(disk, &head[..span])?;
    done(Step::WriteHead)?;
    Ok(installed)
}

fn io_error(disk: &DiskTarget, what: &'static str) -> impl FnOnce(io::Error) -> InstallError {
    let disk = disk.describe();
    move |source| InstallError::Io { what, disk, source }
}

/// Writes `bytes` at `offset` and syncs, so the next step starts from a disk that
/// holds them.
fn write_synced(
    disk: &DiskTarget,
    bytes: &[u8],
    offset: u64,
    what: &'static str,
) -> Result<(), InstallError> {
    let file = disk.file();
    file.write_all_at(bytes, offset)
        .and_then(|()| file.sync_all())
        .map_err(io_error(disk, what))
}

/// The boot regions of a disk of `disk_size` bytes taking `manifest`'s image: the
/// start, where the boot code, protective MBR and primary GPT are (within the
/// image's first chunk, which is written last), and the disk's last
/// [`BOOT_RECORD_SPAN`] bytes, where the backup GPT is.
fn boot_regions(manifest: &Manifest, disk_size: u64) -> [Range<u64>; 2] {
    let head = (manifest.chunks[0].length as u64).min(BOOT_RECORD_SPAN);
    [
        0..head,
        disk_size.saturating_sub(BOOT_RECORD_SPAN)..disk_size,
    ]
}

/// Zeroes `regions` of `target` and syncs.
fn zero_synced(target: &dyn Target, regions: &[Range<u64>]) -> io::Result<()> {
    let zeros = vec![0u8; BOOT_RECORD_SPAN as usize];
    for region in regions {
        let mut at = region.start;
        while at < region.end {
            let n = (region.end - at).min(zeros.len() as u64);
            target.write_at(&zeros[..n as usize], at)?;
            at += n;
        }
    }
    target.sync()
}

/// Zeroes the old boot code, protective MBR and primary GPT and the old backup GPT
/// at the disk's end.
fn invalidate_boot_records(disk: &DiskTarget, manifest: &Manifest) -> Result<(), InstallError> {
    zero_synced(disk, &boot_regions(manifest, disk.size()))
        .map_err(io_error(disk, "invalidating the old boot records of"))
}

/// Every chunk but the first. Chunks that reach into the disk's last
/// [`BOOT_RECORD_SPAN`] bytes go after all the others, one at a time in order
/// (`before_tail_chunk` runs before each): on a disk no larger than the image they
/// hold the image's own backup GPT, which must not be found at the disk's end while
/// data is still missing.
fn write_data(
    source: &dyn Source,
    manifest: &Manifest,
    target: &dyn Target,
    seed: Option<&dyn Target>,
    opts: &DeployOptions,
    on_progress: &(dyn Fn(&Progress) + Sync),
    before_tail_chunk: &dyn Fn(usize) -> Result<(), DeployError>,
) -> Result<Progress, DeployError> {
    let tail = tail_index(manifest, target.size());
    let mut done = deploy_chunks(source, manifest, target, seed, 1..tail, opts, on_progress)?;
    for index in tail..manifest.chunks.len() {
        before_tail_chunk(index)?;
        let so_far = done.clone();
        let chunk = deploy_chunks(
            source,
            manifest,
            target,
            seed,
            index..index + 1,
            opts,
            &|p| on_progress(&so_far.merge(p)),
        )?;
        done = done.merge(&chunk);
    }
    Ok(done)
}

/// The first chunk (never chunk 0) that reaches into the last [`BOOT_RECORD_SPAN`]
/// bytes of a disk of `disk_size` bytes; the chunk count if none does.
fn tail_index(manifest: &Manifest, disk_size: u64) -> usize {
    let tail_start = disk_size.saturating_sub(BOOT_RECORD_SPAN);
    manifest
        .chunks
        .iter()
        .position(|c| c.offset + c.length as u64 > tail_start)
        .unwrap_or(manifest.chunks.len())
        .max(1)
}

/// Patches the GPT in `head` (the image's first chunk) for this disk: a fresh
/// disk GUID, the backup at the real end, a state partition if the image has
/// none, and an ESP GUID distinct from the previous OS's.
fn rewrite_partition_table(
    head: &mut [u8],
    disk: &DiskTarget,
    manifest: &Manifest,
    plan: &Plan,
) -> Result<(gpt::Relocated, Installed), InstallError> {
    let gpt_error = |source| InstallError::PartitionTable {
        disk: disk.describe(),
        source,
    };
    let layout = manifest
        .layout
        .as_ref()
        .ok_or_else(|| InstallError::NoPartitionTable(manifest.name.clone()))?;
    let mut renewed = Vec::new();
    let mut shared_guids = Vec::new();
    let mut fresh = plan.fresh_guids.iter();
    if let Some(previous) = plan.previous {
        for p in &layout.partitions {
            if !previous
                .partitions
                .iter()
                .any(|q| q.unique_guid == p.unique_guid)
            {
                continue;
            }
            match fresh.next() {
                Some(&guid) => {
                    gpt::renew_partition_guid(head, p.number, guid).map_err(gpt_error)?;
                    renewed.push((p.clone(), guid));
                }
                None => shared_guids.push(p.clone()),
            }
        }
    }
    let new_state = statepart::find(layout)
        .is_none()
        .then(|| gpt::NewPartition {
            type_guid: statepart::TYPE_GUID,
            unique_guid: plan.state_guid,
            name: statepart::NAME.into(),
            size: statepart::CREATE_SIZE,
        });
    let relocated = gpt::relocate(head, disk.size(), new_state.as_ref(), Some(plan.disk_guid))
        .map_err(gpt_error)?;
    let installed = Installed {
        progress: Progress::default(),
        layout: relocated.layout.clone(),
        added_state: relocated.added.clone(),
        renewed,
        shared_guids,
    };
    Ok((relocated, installed))
}

/// Writes `record` into the state partition of `layout` and syncs. Whatever
/// record the partition held (the replaced OS's, of any format, or the image's
/// own) gives way to it: this is the disk's first record, not an update.
fn write_state_record(
    disk: &DiskTarget,
    layout: &Layout,
    record: &Record,
) -> Result<(), InstallError> {
    let part =
        statepart::find(layout).ok_or_else(|| InstallError::NoStatePartition(disk.describe()))?;
    let file = disk.file();
    state::write_fresh(&mut Window::of_partition(file, layout, part), record).map_err(
        |source| InstallError::StateRecord {
            disk: disk.describe(),
            source,
        },
    )?;
    file.sync_all().map_err(io_error(disk, "syncing"))
}

/// How much of the first chunk is boot code, protective MBR and primary GPT: up
/// to the first sector a partition may use.
fn head_span(layout: &Layout, chunk_len: usize) -> usize {
    let table_end = layout
        .first_usable_lba
        .saturating_mul(layout.sector_size as u64);
    usize::try_from(table_end).map_or(chunk_len, |end| end.min(chunk_len))
}

/// The head last: boot code, protective MBR and primary GPT. Then the kernel is
/// asked to read the new partition table.
fn write_head(disk: &DiskTarget, head: &[u8]) -> Result<(), InstallError> {
    write_synced(disk, head, 0, "writing the boot record and GPT of")?;
    reread_partitions(disk);
    Ok(())
}

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

/// Asks the kernel to read a block device's new partition table.
fn reread_partitions(disk: &DiskTarget) {
    if disk.is_block_device()
        && let Err(e) = sys::reread_partitions(disk.file())
    {
        log::warn!("re-reading the partition table of {}: {e}", disk.describe());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::digest::Digest;
    use crate::format::manifest::{Chunk, ChunkKind, FORMAT_VERSION, Requirements};
    use crate::format::repository::chunk_path;
    use crate::format::state::Mode;
    use crate::source::{FetchError, RetryPolicy};
    use std::collections::HashMap;
    use std::io::Cursor;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const CHUNK: usize = 64 << 10;
    const SECTORS: u64 = 8192; // a 4 MiB image
    const LINUX_TYPE: Guid = Guid::from_fields(
        0x0FC63DAF,
        0x8483,
        0x4772,
        [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
    );

    /// A repository in memory that can be told to fail after `budget` chunks, or
    /// on one file.
    struct MemorySource {
        files: HashMap<String, Vec<u8>>,
        budget: AtomicUsize,
        refuse: Mutex<Option<String>>,
        /// A file held back until this many others were served (or 10 s passed).
        held: Mutex<Option<(String, usize)>>,
        /// Every file served, and when.
        served: Mutex<Vec<(String, std::time::Instant)>>,
    }

    impl Source for MemorySource {
        fn fetch(&self, path: &str, _limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
            let refused = self
                .budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                .is_err();
            if self.refuse.lock().unwrap().as_deref() == Some(path) {
                // Slow to fail, as a network is: other chunks go on meanwhile.
                std::thread::sleep(Duration::from_millis(300));
                return Err(FetchError::NotFound {
                    location: path.to_string(),
                });
            }
            let held = self.held.lock().unwrap().clone();
            if let Some((held, others)) = held
                && held == path
            {
                let start = std::time::Instant::now();
                while self.served.lock().unwrap().len() < others
                    && start.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            match self.files.get(path) {
                Some(bytes) if !refused => {
                    buf.clear();
                    buf.extend_from_slice(bytes);
                    let now = std::time::Instant::now();
                    self.served.lock().unwrap().push((path.to_string(), now));
                    Ok(())
                }
                _ => Err(FetchError::NotFound {
                    location: path.to_string(),
                }),
            }
        }

        fn location(&self, path: &str) -> String {
            path.to_string()
        }
    }

    /// A GPT image with boot code and a protective MBR, an ESP and a root
    /// partition filled from `seed`, and some all-zero chunks.
    fn image(seed: u8) -> Vec<u8> {
        let mut img = gpt::tests::image_with(
            SECTORS,
            &[
                (gpt::ESP_TYPE, 2048, 4095, "EFI system"),
                (LINUX_TYPE, 4096, SECTORS - 2048, "root"),
            ],
        );
        img[..8].copy_from_slice(&[0xEB, 0x63, 0x90, seed, 1, 2, 3, 4]);
        img[446 + 4] = 0xEE;
        img[510..512].copy_from_slice(&[0x55, 0xAA]);
        let mut x = seed as u64 + 1;
        for (i, b) in img[1 << 20..3 << 20].iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every fourth chunk stays zero.
            if (i / CHUNK) % 4 != 3 {
                *b = x as u8;
            }
        }
        img
    }

    fn manifest_and_source(img: &[u8], name: &str) -> (Manifest, MemorySource) {
        let mut files = HashMap::new();
        let chunks = img
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, content)| {
                let kind = if crate::format::is_zero(content) {
                    ChunkKind::Zero
                } else {
                    let sha256 = Digest::of(content);
                    let stored = zstd::bulk::compress(content, 1).unwrap();
                    let stored_size = stored.len() as u32;
                    files.insert(chunk_path(&sha256), stored);
                    ChunkKind::Data {
                        sha256,
                        blake3: *blake3::hash(content).as_bytes(),
                        stored_size,
                    }
                };
                Chunk {
                    offset: (i * CHUNK) as u64,
                    length: content.len() as u32,
                    kind,
                }
            })
            .collect();
        let manifest = Manifest {
            version: FORMAT_VERSION,
            name: name.into(),
            size: img.len() as u64,
            chunk_size: CHUNK as u32,
            chunks,
            requirements: Requirements {
                arch: None,
                firmware: vec![],
                min_disk_size: img.len() as u64,
            },
            layout: gpt::read(&mut Cursor::new(img)).unwrap(),
            boot: None,
        };
        let source = MemorySource {
            files,
            budget: AtomicUsize::new(usize::MAX),
            refuse: Mutex::new(None),
            held: Mutex::new(None),
            served: Mutex::new(Vec::new()),
        };
        (manifest, source)
    }

    fn record(name: &str) -> Record {
        Record::new(Mode::Deploy, name, Digest::of(name.as_bytes()))
    }

    fn plan(record: &Record) -> Plan<'_> {
        Plan {
            disk_guid: Guid([0x11; 16]),
            state_guid: Guid([0x22; 16]),
            previous: None,
            fresh_guids: &[Guid([0x33; 16])],
            record,
            seed: None,
            before_head: None,
            opts: DeployOptions {
                jobs: 3,
                retry: RetryPolicy {
                    attempts: 1,
                    ..RetryPolicy::default()
                },
                progress_interval: Duration::from_secs(60),
            },
        }
    }

    /// Runs the install onto the disk file at `path`, stopping after `stop`.
    fn run(
        path: &std::path::Path,
        manifest: &Manifest,
        source: &MemorySource,
        record: &Record,
        stop: Option<Step>,
    ) -> Result<Installed, InstallError> {
        let needed = required_size(manifest).unwrap();
        let disk = DiskTarget::open_for_write(path, needed).unwrap();
        install(
            source,
            manifest,
            &disk,
            &plan(record),
            &|_| {},
            &mut |step| Some(step) != stop,
        )
    }

    /// Whether any firmware could take the disk for a bootable GPT disk: a boot
    /// signature, or a primary or backup GPT header.
    fn looks_bootable(disk: &[u8]) -> bool {
        disk[510..512] == [0x55, 0xAA]
            || &disk[512..520] == b"EFI PART"
            || &disk[disk.len() - 512..disk.len() - 504] == b"EFI PART"
    }

    fn region(disk: &[u8], start: usize, len: usize) -> &[u8] {
        &disk[start..start + len]
    }

    /// The safety invariant: a disk that looks bootable holds every data chunk of
    /// the new image, its state record, and the new backup GPT, and its head is
    /// either cleared or the new one (never the old boot code over new data).
    /// The record in `disk`'s state partition, where `layout_from`'s GPT puts it.
    fn read_record(disk: &[u8], layout_from: &[u8]) -> Option<Record> {
        let layout = gpt::read(&mut Cursor::new(layout_from)).unwrap().unwrap();
        let (start, len) = statepart::byte_range(&layout, statepart::find(&layout).unwrap());
        let part = &disk[start as usize..(start + len) as usize];
        state::read(&mut Cursor::new(part)).ok().map(|(r, _)| r)
    }

    /// The disk equals `reference` but for the state record's slots (which hold
    /// other generations after a rerun), and holds the same record.
    fn assert_same_install(disk: &[u8], reference: &[u8], when: &str) {
        let layout = gpt::read(&mut Cursor::new(reference)).unwrap().unwrap();
        let (start, _) = statepart::byte_range(&layout, statepart::find(&layout).unwrap());
        let slots = (start as usize)..(start + 2 * state::SLOT_SIZE) as usize;
        assert!(
            disk[..slots.start] == reference[..slots.start]
                && disk[slots.end..] == reference[slots.end..],
            "{when}: the disk differs from an uninterrupted install"
        );
        assert_eq!(
            read_record(disk, reference),
            read_record(reference, reference),
            "{when}"
        );
    }

    fn assert_never_half_bootable(disk: &[u8], reference: &[u8], img: &[u8], when: &str) {
        if !looks_bootable(disk) {
            return;
        }
        let span = BOOT_RECORD_SPAN as usize;
        assert_eq!(
            region(disk, CHUNK, img.len() - CHUNK),
            region(img, CHUNK, img.len() - CHUNK),
            "{when}: the disk looks bootable but the image's data is not all there"
        );
        assert_eq!(
            read_record(disk, reference),
            Some(read_record(reference, reference).unwrap()),
            "{when}: the disk looks bootable but has no state record"
        );
        let end = disk.len() - span;
        assert_eq!(
            region(disk, end, span),
            region(reference, end, span),
            "{when}: the disk looks bootable but its backup GPT is not the new one"
        );
        let head = region(disk, 0, CHUNK);
        assert!(
            crate::format::is_zero(&head[..span]) || head == region(reference, 0, CHUNK),
            "{when}: the disk looks bootable with an old or partial head"
        );
    }

    #[test]
    fn an_install_stopped_anywhere_never_boots_half_written_and_a_rerun_completes() {
        let dir = tempfile::tempdir().unwrap();
        let (old_img, new_img) = (image(1), image(2));
        let (old_manifest, old_source) = manifest_and_source(&old_img, "old");
        let (manifest, source) = manifest_and_source(&new_img, "new");
        let new_record = record("new");

        // The disk as it is before: a complete, bootable install of another image.
        let old_path = dir.path().join("old.img");
        run(&old_path, &old_manifest, &old_source, &record("old"), None).unwrap();
        let old_disk = std::fs::read(&old_path).unwrap();
        assert!(looks_bootable(&old_disk));

        // What a whole, uninterrupted install leaves.
        let ref_path = dir.path().join("reference.img");
        std::fs::write(&ref_path, &old_disk).unwrap();
        let full = run(&ref_path, &manifest, &source, &new_record, None).unwrap();
        let reference = std::fs::read(&ref_path).unwrap();
        assert_eq!(full.layout.disk_guid, Guid([0x11; 16]));
        assert!(full.added_state.is_some());
        assert_eq!(
            region(&reference, CHUNK, new_img.len() - CHUNK),
            region(&new_img, CHUNK, new_img.len() - CHUNK)
        );
        assert_eq!(
            read_record(&reference, &reference),
            Some(new_record.clone())
        );

        // Stopped after each step, then rerun.
        let path = dir.path().join("disk.img");
        for stop in Step::ORDER {
            std::fs::write(&path, &old_disk).unwrap();
            let stopped = run(&path, &manifest, &source, &new_record, Some(stop));
            assert!(matches!(stopped, Err(InstallError::Stopped(s)) if s == stop));
            let disk = std::fs::read(&path).unwrap();
            assert_never_half_bootable(&disk, &reference, &new_img, &format!("after {stop:?}"));
            let rerun = run(&path, &manifest, &source, &new_record, None).unwrap();
            let disk = std::fs::read(&path).unwrap();
            assert_same_install(&disk, &reference, &format!("rerun after {stop:?}"));
            if stop != Step::InvalidateBootRecords {
                assert_eq!(rerun.progress.chunks_fetched, 0, "after {stop:?}");
            }
        }

        // Failed part-way through the data: the source gives out after some chunks.
        for budget in [0, 1, 5, 17] {
            std::fs::write(&path, &old_disk).unwrap();
            source.budget.store(budget, Ordering::SeqCst);
            let failed = run(&path, &manifest, &source, &new_record, None);
            assert!(matches!(failed, Err(InstallError::Deploy(_))), "{failed:?}");
            let disk = std::fs::read(&path).unwrap();
            assert!(!looks_bootable(&disk), "failed after {budget} chunks");
            source.budget.store(usize::MAX, Ordering::SeqCst);
            run(&path, &manifest, &source, &new_record, None).unwrap();
            let disk = std::fs::read(&path).unwrap();
            assert_same_install(&disk, &reference, &format!("rerun after {budget} chunks"));
        }
    }

    /// A partition that begins inside the first chunk: its bytes are on the disk
    /// when `before_head` runs, while the disk does not look bootable yet, and
    /// what the hook changes there is kept (the head no longer covers it).
    #[test]
    fn what_runs_before_the_head_finds_the_partitions_and_is_kept() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let mut img = gpt::tests::image_with(
            SECTORS,
            &[
                (gpt::ESP_TYPE, 64, 2047, "EFI system"),
                (LINUX_TYPE, 2048, SECTORS - 2048, "root"),
            ],
        );
        img[446 + 4] = 0xEE;
        img[510..512].copy_from_slice(&[0x55, 0xAA]);
        let esp_start = 64 * 512;
        assert!(esp_start < CHUNK);
        img[esp_start..esp_start + 8].copy_from_slice(b"OLD-FS-1");
        let (manifest, source) = manifest_and_source(&img, "early");
        let path = dir.path().join("disk.img");
        let seen = Mutex::new(None);
        let hook = |layout: &Layout| {
            let disk = std::fs::read(&path).unwrap();
            let esp = layout
                .partitions
                .iter()
                .find(|p| p.type_guid == gpt::ESP_TYPE)
                .unwrap();
            let start = esp.first_lba * layout.sector_size as u64;
            let at = start as usize;
            // The backup GPT is there by now; without a protective MBR nothing
            // reads it.
            let head = disk[510..512] == [0x55, 0xAA] || &disk[512..520] == b"EFI PART";
            *seen.lock().unwrap() = Some((head, disk[at..at + 8].to_vec()));
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(b"NEW-FS-2", start).unwrap();
        };
        let r = record("early");
        let mut p = plan(&r);
        p.before_head = Some(&hook);
        let disk = DiskTarget::open_for_write(&path, required_size(&manifest).unwrap()).unwrap();
        install(&source, &manifest, &disk, &p, &|_| {}, &mut |_| true).unwrap();
        assert_eq!(
            seen.into_inner().unwrap(),
            Some((false, b"OLD-FS-1".to_vec()))
        );
        let disk = std::fs::read(&path).unwrap();
        assert!(looks_bootable(&disk));
        assert_eq!(&disk[esp_start..esp_start + 8], b"NEW-FS-2");
    }

    #[test]
    fn a_record_left_by_a_newer_imprint_gives_way_to_the_deploys_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let (manifest, source) = manifest_and_source(&image(5), "new");
        run(&path, &manifest, &source, &record("old"), None).unwrap();
        // A newer imprint updated the record since: generation 2, of the format
        // after this build's.
        let mut disk = std::fs::read(&path).unwrap();
        let layout = gpt::read(&mut Cursor::new(&disk)).unwrap().unwrap();
        let (start, _) = statepart::byte_range(&layout, statepart::find(&layout).unwrap());
        let payload = [state::RECORD_VERSION as u8 + 1, 1, 2, 3];
        let slot = &mut disk[(start + state::SLOT_SIZE) as usize..];
        slot[..8].copy_from_slice(state::MAGIC);
        slot[8..16].copy_from_slice(&2u64.to_le_bytes());
        slot[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        slot[20..24].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        slot[24..28].copy_from_slice(&payload);
        std::fs::write(&path, &disk).unwrap();
        assert!(read_record(&disk, &disk).is_none());

        let r = record("new");
        run(&path, &manifest, &source, &r, None).unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(read_record(&disk, &disk), Some(r));
    }

    #[test]
    fn every_step_has_its_own_name() {
        let mut names: Vec<&str> = Step::ORDER.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Step::ORDER.len());
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        );
    }

    #[test]
    fn on_a_disk_no_larger_than_the_image_the_tail_goes_last() {
        // The image carries its own state partition, so the disk can be exactly
        // the image's size and the image's own backup GPT lands at the disk's end.
        let mut img = gpt::tests::image_with(
            SECTORS,
            &[
                (gpt::ESP_TYPE, 2048, 4095, "EFI system"),
                (statepart::TYPE_GUID, 4096, SECTORS - 40, statepart::NAME),
            ],
        );
        img[446 + 4] = 0xEE;
        img[510..512].copy_from_slice(&[0x55, 0xAA]);
        for (i, b) in img[1 << 20..2 << 20].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        // The image's own backup GPT header at its last sector.
        let backup = img[512..1024].to_vec();
        let len = img.len();
        img[len - 512..].copy_from_slice(&backup);
        let (manifest, source) = manifest_and_source(&img, "exact");
        assert_eq!(required_size(&manifest).unwrap(), img.len() as u64);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let r = record("exact");
        // The last chunk holds the image's backup GPT, now at the disk's end. A
        // chunk before it that cannot be fetched must keep it off the disk.
        let data: Vec<_> = manifest
            .chunks
            .iter()
            .filter_map(|c| match c.kind {
                ChunkKind::Data { sha256, .. } => Some(chunk_path(&sha256)),
                ChunkKind::Zero => None,
            })
            .collect();
        assert!(data.len() > 3);
        for missing in &data[data.len() - 3..data.len() - 1] {
            std::fs::write(&path, vec![0u8; img.len()]).unwrap();
            *source.refuse.lock().unwrap() = Some(missing.clone());
            assert!(run(&path, &manifest, &source, &r, None).is_err());
            let disk = std::fs::read(&path).unwrap();
            assert!(!looks_bootable(&disk), "without {missing}");
        }
        *source.refuse.lock().unwrap() = None;
        run(&path, &manifest, &source, &r, None).unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(read_record(&disk, &disk), Some(r));
    }

    /// The host's deploy of `manifest` onto the file at `path`, with `jobs` workers.
    fn write_image_to(
        path: &std::path::Path,
        manifest: &Manifest,
        source: &MemorySource,
        jobs: usize,
    ) -> Result<Progress, WriteImageError> {
        let disk = DiskTarget::open_for_write(path, manifest.size).unwrap();
        let opts = DeployOptions {
            jobs,
            ..plan(&record("x")).opts
        };
        write_image(source, manifest, &disk, &opts, &|_| {})
    }

    /// `image(seed)` cut to end half-way through a chunk, with a backup GPT header
    /// in its last sector: two chunks then reach into the disk's last 64 KiB.
    fn uneven_image(seed: u8) -> Vec<u8> {
        let mut img = image(seed);
        img.truncate(img.len() - CHUNK / 2);
        let header = img[512..1024].to_vec();
        let len = img.len();
        img[len - 512..].copy_from_slice(&header);
        img
    }

    #[test]
    fn the_host_deploy_fetches_data_while_the_head_is_still_coming() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let new = image(5);
        let (manifest, source) = manifest_and_source(&new, "new");
        // A disk of other bytes: its zero chunks must be zeroed, and no write
        // can happen before the new head is in hand.
        let mut x = 99u64;
        let other: Vec<u8> = (0..new.len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&path, &other).unwrap();
        let ChunkKind::Data { sha256: head, .. } = manifest.chunks[0].kind else {
            panic!("the head is data");
        };
        let head = chunk_path(&head);
        let jobs = 3;
        *source.held.lock().unwrap() = Some((head.clone(), jobs));
        let p = write_image_to(&path, &manifest, &source, jobs).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), new);
        assert!(p.zeroed_bytes > 0, "{p:?}");
        // Every fetcher got a chunk while the head was fetched: the zero
        // chunks before the first data (the scan meets them first) wait for
        // the head, the scan does not.
        let served = source.served.lock().unwrap();
        let head_at = served.iter().find(|(p, _)| *p == head).unwrap().1;
        let before = served
            .iter()
            .filter(|(p, at)| *p != head && *at < head_at)
            .count();
        assert!(before >= jobs, "{before} chunks fetched before the head");
    }

    #[test]
    fn the_host_deploy_takes_the_head_down_first_and_puts_it_back_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let (old, new) = (uneven_image(1), uneven_image(2));
        let (old_manifest, old_source) = manifest_and_source(&old, "old");
        let (manifest, source) = manifest_and_source(&new, "new");
        assert_eq!(
            tail_index(&manifest, new.len() as u64),
            manifest.chunks.len() - 2
        );
        write_image_to(&path, &old_manifest, &old_source, 3).unwrap();
        let old_disk = std::fs::read(&path).unwrap();
        assert_eq!(old_disk, old);
        assert!(looks_bootable(&old_disk) && looks_bootable(&new));

        // Failed part-way: the source gives out after some chunks, up to the last
        // one a whole deploy over the old image fetches.
        let whole = write_image_to(&path, &manifest, &source, 3).unwrap();
        let fetches = whole.chunks_fetched as usize;
        assert!(fetches > 20, "{whole:?}");
        for budget in [0, 1, 5, 17, fetches - 2, fetches - 1] {
            std::fs::write(&path, &old_disk).unwrap();
            source.budget.store(budget, Ordering::SeqCst);
            let failed = write_image_to(&path, &manifest, &source, 3)
                .expect_err(&format!("budget {budget}"));
            // Untouched (the head could not be fetched: nothing was written) or
            // not bootable, and the error says which.
            let disk = std::fs::read(&path).unwrap();
            assert!(
                disk == old_disk || !looks_bootable(&disk),
                "failed after {budget} chunks"
            );
            assert_eq!(
                failed.disk_changed,
                disk != old_disk,
                "budget {budget}: {failed}"
            );
            if budget == 0 {
                assert!(disk == old_disk, "nothing fetched, nothing written");
            }
            source.budget.store(usize::MAX, Ordering::SeqCst);
            write_image_to(&path, &manifest, &source, 3).unwrap();
            assert!(std::fs::read(&path).unwrap() == new, "rerun after {budget}");
        }

        // Deployed again: only read.
        let again = write_image_to(&path, &manifest, &source, 3).unwrap();
        assert_eq!(again.written_bytes + again.zeroed_bytes, 0, "{again:?}");
        assert_eq!(again.chunks_fetched, 0);
        assert_eq!(again.skipped_bytes, new.len() as u64);
        assert_eq!(again.total_bytes, new.len() as u64);

        // Changes in one place each: only that chunk is fetched, the head and the
        // tail chunks in place are put back from what was read. One worker, so the
        // first tail chunk is found in place before the second one takes the
        // regions down under it.
        let last = new.len() - 1;
        let mut changed = new.clone();
        for at in [last - 600, 2 * CHUNK + 9, 100] {
            changed[at] ^= 0x5A;
            let (manifest, source) = manifest_and_source(&changed, "changed");
            let p = write_image_to(&path, &manifest, &source, 1).unwrap();
            assert!(std::fs::read(&path).unwrap() == changed, "change at {at}");
            assert_eq!(p.chunks_fetched, 1, "change at {at}: {p:?}");
            assert!(p.fetched_bytes > 0);
        }
    }

    /// An upgrade from an image of the same family: every partition the new
    /// disk shares a GUID with on the previous disk gets a fresh one, so that
    /// `root=PARTUUID=` and firmware entries find only the new disk's.
    #[test]
    fn an_upgrade_gives_partitions_shared_with_the_previous_disk_fresh_guids() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(5);
        let (manifest, source) = manifest_and_source(&img, "new");
        let previous = manifest.layout.clone().unwrap();
        let shared = previous.partitions.len();
        assert!(shared >= 2, "{previous:?}");
        let fresh: Vec<Guid> = (0..shared as u8).map(|i| Guid([0x40 + i; 16])).collect();
        let path = dir.path().join("disk.img");
        let disk = DiskTarget::open_for_write(&path, required_size(&manifest).unwrap()).unwrap();
        let r = record("new");
        let mut p = plan(&r);
        p.previous = Some(&previous);
        p.fresh_guids = &fresh;
        let installed = install(&source, &manifest, &disk, &p, &|_| {}, &mut |_| true).unwrap();
        assert!(installed.shared_guids.is_empty(), "{installed:?}");
        assert_eq!(installed.renewed.len(), shared);
        let written = gpt::read(&mut Cursor::new(std::fs::read(&path).unwrap()))
            .unwrap()
            .unwrap();
        for (old, guid) in &installed.renewed {
            let now = written
                .partitions
                .iter()
                .find(|q| q.number == old.number)
                .unwrap();
            assert_eq!(now.unique_guid, *guid);
            assert_eq!(now.type_guid, old.type_guid);
            assert!(!previous.partitions.iter().any(|q| q.unique_guid == *guid));
        }
        // Fewer fresh GUIDs than shared partitions: the rest are said to share.
        let mut p = plan(&r);
        p.previous = Some(&previous);
        p.fresh_guids = &fresh[..1];
        let installed = install(&source, &manifest, &disk, &p, &|_| {}, &mut |_| true).unwrap();
        assert_eq!(installed.renewed.len(), 1);
        assert_eq!(installed.shared_guids.len(), shared - 1);
    }

    #[test]
    fn an_image_without_a_partition_table_is_refused_before_any_write() {
        let (mut manifest, source) = manifest_and_source(&image(3), "raw");
        manifest.layout = None;
        assert!(matches!(
            required_size(&manifest),
            Err(InstallError::NoPartitionTable(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, image(4)).unwrap();
        let disk = DiskTarget::open_for_write(&path, 1).unwrap();
        let r = record("raw");
        let result = install(&source, &manifest, &disk, &plan(&r), &|_| {}, &mut |_| true);
        assert!(matches!(result, Err(InstallError::NoPartitionTable(_))));
        assert_eq!(std::fs::read(&path).unwrap(), image(4));
    }
}
