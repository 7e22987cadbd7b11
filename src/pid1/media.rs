//! Repositories on boot media (a USB stick, a CD, a BMC's virtual media): found
//! by file system label or UUID once their drivers are up, mounted read-only,
//! and kept mounted for the whole deploy, so the medium's disk is in use and
//! never a target. What it holds is verified like any other source's.

use super::drivers;
use crate::format::cmdline::MediaId;
use crate::format::fstype::{self, Volume};
use anyhow::{Result, bail};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where media are mounted: one directory per medium, by its place in
/// `imprint.repo=`.
const MOUNT_BASE: &str = "/run/imprint/media";
pub(super) use crate::format::cmdline::MEDIA_INVENTORY as INVENTORY;

/// A mounted medium.
pub(super) struct Medium {
    /// Its mount point.
    pub root: PathBuf,
}

impl MediaId {
    fn matches(&self, v: &Volume) -> bool {
        match self {
            MediaId::Label(l) => !v.label.is_empty() && v.label.eq_ignore_ascii_case(l),
            MediaId::Uuid(u) => !v.uuid.is_empty() && v.uuid.eq_ignore_ascii_case(u),
        }
    }
}

/// What each block device holds, by kernel name (sorted, so a whole disk comes
/// before its partitions): the file systems media carry, or nothing known.
fn volumes() -> Vec<(String, Option<Volume>)> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let mut head = Vec::with_capacity(fstype::HEAD_LEN);
            // An empty drive (a CD tray with nothing in it) cannot be opened.
            let read = std::fs::File::open(format!("/dev/{name}"))
                .and_then(|f| f.take(fstype::HEAD_LEN as u64).read_to_end(&mut head));
            let volume = read.ok().and_then(|_| fstype::volume(&head));
            (name, volume)
        })
        .collect()
}

fn describe(id: &MediaId) -> String {
    match id {
        MediaId::Label(l) => format!("labelled {l}"),
        MediaId::Uuid(u) => format!("with UUID {u}"),
    }
}

/// Finds the file system `id` names, loading drivers for devices as they
/// appear (USB storage enumerates after its controller's driver), for up to
/// `wait`; mounts it read-only as medium number `index`.
pub(super) fn mount(id: &MediaId, index: usize, wait: Duration) -> Result<Medium> {
    let start = Instant::now();
    let mut drivers = drivers::Drivers::open();
    loop {
        let loaded = drivers.coldplug();
        if !loaded.is_empty() {
            log::info!(
                "loaded {} more driver modules: {}",
                loaded.len(),
                loaded.join(" ")
            );
        }
        let seen = volumes();
        if let Some((name, volume)) = seen
            .iter()
            .find_map(|(n, v)| v.as_ref().filter(|v| id.matches(v)).map(|v| (n, v)))
        {
            let device = format!("/dev/{name}");
            let root = PathBuf::from(format!("{MOUNT_BASE}/{index}"));
            crate::sys::mount(&device, &root.to_string_lossy(), volume.kind, true).map_err(
                |e| {
                    anyhow::anyhow!(
                        "mounting the medium {} ({device}, {}): {e}",
                        describe(id),
                        volume.kind
                    )
                },
            )?;
            log::info!(
                "medium {} on {device} ({}, UUID {}) mounted read-only",
                describe(id),
                volume.kind,
                if volume.uuid.is_empty() {
                    "none"
                } else {
                    &volume.uuid
                }
            );
            return Ok(Medium { root });
        }
        if start.elapsed() >= wait {
            let found: Vec<String> = seen
                .iter()
                .map(|(n, v)| match v {
                    Some(v) if v.label.is_empty() => format!("{n}: {} without a label", v.kind),
                    Some(v) => format!("{n}: {} labelled {:?}", v.kind, v.label),
                    None => format!("{n}: nothing a medium holds"),
                })
                .collect();
            bail!(
                "no file system {} appeared within {} s (found: {}); attach the medium, or check its label (`imprint media build --label`) and imprint.repo=",
                describe(id),
                wait.as_secs(),
                if found.is_empty() {
                    "no block devices".to_string()
                } else {
                    found.join("; ")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
