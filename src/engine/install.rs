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
//! GPT of its own, but in the same order for what makes a disk look bootable
//! (`writeimage.rs`).

use super::datapass::deploy_chunks;
use super::fetch::fetch_chunk;
use super::{DeployError, DeployOptions, DiskTarget, Progress, Target};
use crate::format::gpt::{self, Guid, Layout, Partition, RelocateError};
use crate::format::manifest::Manifest;
use crate::format::state::{self, Record, StateError};
use crate::source::Source;
use crate::statepart::{self, Window};
use crate::sys;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

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
pub(super) fn write_synced(
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
pub(super) fn boot_regions(manifest: &Manifest, disk_size: u64) -> [Range<u64>; 2] {
    let head = (manifest.chunks[0].length as u64).min(BOOT_RECORD_SPAN);
    [
        0..head,
        disk_size.saturating_sub(BOOT_RECORD_SPAN)..disk_size,
    ]
}

/// Zeroes `regions` of `target` and syncs.
pub(super) fn zero_synced(target: &dyn Target, regions: &[Range<u64>]) -> io::Result<()> {
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
pub(super) fn write_data(
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
pub(super) fn tail_index(manifest: &Manifest, disk_size: u64) -> usize {
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
pub(super) fn write_head(disk: &DiskTarget, head: &[u8]) -> Result<(), InstallError> {
    write_synced(disk, head, 0, "writing the boot record and GPT of")?;
    reread_partitions(disk);
    Ok(())
}

/// Asks the kernel to read a block device's new partition table.
pub(super) fn reread_partitions(disk: &DiskTarget) {
    if disk.is_block_device()
        && let Err(e) = sys::reread_partitions(disk.file())
    {
        log::warn!("re-reading the partition table of {}: {e}", disk.describe());
    }
}

#[cfg(test)]
mod tests;
