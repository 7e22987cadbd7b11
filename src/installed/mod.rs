//! The installed-OS role: the agent that runs in the OS imprint deployed.
//!
//! - [`firstboot`] — early in boot, reads the state record; after a deploy applies
//!   the per-host settings, after an upgrade migrates the previous OS's
//!   configuration; then commits and reports.
//! - [`status`], [`rollback`], [`prepare_upgrade`] — the other installed-OS commands.
//!
//! Each returns what it found or did; the command line prints it.

pub mod firstboot;

use crate::bootswitch;
use crate::format::bundle::BundleRef;
use crate::format::state::Record;
use crate::migrate;
use crate::statepart::{own_disk, state_disks};
use anyhow::{Context, Result};
use std::path::Path;

/// What `imprint status` shows: the record of this system's disk.
pub struct StatusReport {
    pub device: String,
    pub generation: u64,
    pub record: Record,
}

/// `imprint status`: what the state record of this system's disk says.
pub fn status() -> Result<StatusReport> {
    let (disk, _) = own_disk()?;
    let (record, generation) = disk.read_record()?;
    Ok(StatusReport {
        device: disk.device,
        generation,
        record,
    })
}

/// `imprint rollback` on a running system: undo an upgrade that has not
/// committed (BIOS: restore the previous disk's boot record). Returns what was
/// done, one line each.
pub fn rollback() -> Result<Vec<String>> {
    bootswitch::rollback(&state_disks())
}

/// What `imprint prepare-upgrade` captured.
pub struct CaptureReport {
    pub device: String,
    pub entries: usize,
    pub bundle: BundleRef,
}

/// `imprint prepare-upgrade`: captures this OS's configuration into its state
/// partition, for the next OS to migrate.
pub fn prepare_upgrade(root: &Path) -> Result<CaptureReport> {
    let (disk, _) = own_disk()?;
    let root =
        crate::sys::Root::open(root).with_context(|| format!("opening {}", root.display()))?;
    let (entries, reference) = migrate::capture_into(&root, &disk)?;
    Ok(CaptureReport {
        device: disk.device,
        entries,
        bundle: reference,
    })
}
