//! Disks that carry an `imprint-state` partition, found by reading their GPTs
//! directly (a disk whose boot record an upgrade neutralised has no partitions in
//! the kernel's view, but its GPT is still there).

use crate::engine::Window;
use crate::format::gpt::{self, Layout};
use crate::format::state::{self, Record};
use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;

/// A disk with a state partition.
#[derive(Debug, Clone)]
pub struct StateDisk {
    pub device: String,
    pub layout: Layout,
    pub state_index: usize,
}

impl StateDisk {
    /// The disk (or disk image) at `device`, if its GPT has a state partition.
    pub fn open(device: &str) -> Option<StateDisk> {
        let mut file = File::open(device).ok()?;
        let layout = gpt::read(&mut file).ok()??;
        let state_index = layout
            .partitions
            .iter()
            .position(|p| p.type_guid == state::STATE_TYPE || p.name == state::STATE_NAME)?;
        Some(StateDisk {
            device: device.to_string(),
            layout,
            state_index,
        })
    }

    pub fn read_record(&self) -> Result<(Record, u64)> {
        let file = File::open(&self.device).with_context(|| format!("opening {}", self.device))?;
        let p = &self.layout.partitions[self.state_index];
        let ss = self.layout.sector_size as u64;
        let mut w = Window::new(&file, p.first_lba * ss, (p.last_lba - p.first_lba + 1) * ss);
        state::read(&mut w).with_context(|| format!("reading the state record on {}", self.device))
    }
}

/// The PARTUUID of the root file system, from the kernel command line.
pub fn root_partuuid(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("root=PARTUUID="))
        .map(|u| u.to_ascii_uppercase())
}

/// Every whole disk whose GPT has a state partition.
pub fn state_disks() -> Vec<StateDisk> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "sr", "dm-", "md"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|name| StateDisk::open(&format!("/dev/{name}")))
        .collect()
}

/// The state disk this system booted from: the one holding the root partition,
/// or the only one there is.
pub fn own_disk() -> Result<StateDisk> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let root = root_partuuid(&cmdline);
    let mut disks = state_disks();
    if let Some(root) = &root
        && let Some(i) = disks.iter().position(|d| {
            d.layout
                .partitions
                .iter()
                .any(|p| p.unique_guid.to_string() == *root)
        })
    {
        return Ok(disks.swap_remove(i));
    }
    match disks.len() {
        0 => bail!("no disk with an imprint-state partition; was this system deployed by imprint?"),
        1 => Ok(disks.remove(0)),
        _ => Err(anyhow!(
            "several disks have an imprint-state partition and none holds root={}; boot with root=PARTUUID=",
            root.unwrap_or_else(|| "?".into())
        )),
    }
}

impl StateDisk {
    pub fn state_range(&self) -> (u64, u64) {
        let p = &self.layout.partitions[self.state_index];
        let ss = self.layout.sector_size as u64;
        (p.first_lba * ss, (p.last_lba - p.first_lba + 1) * ss)
    }

    pub fn open_rw(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.device)
            .with_context(|| format!("opening {} for writing", self.device))
    }

    pub fn write_record(&self, record: &Record) -> Result<()> {
        let file = self.open_rw()?;
        let (start, len) = self.state_range();
        state::write(&mut Window::new(&file, start, len), record)
            .with_context(|| format!("writing the state record on {}", self.device))?;
        Ok(())
    }
}
