//! `imprint firstboot`, run early by the installed OS: finds the disk it booted
//! from, reads the state record the deploy environment left in that disk's
//! `imprint-state` partition, and reports it.

use crate::engine::Window;
use crate::format::gpt::{self, Layout};
use crate::format::state::{self, Record};
use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A disk with a state partition.
pub struct StateDisk {
    pub device: String,
    pub layout: Layout,
    pub state_index: usize,
}

impl StateDisk {
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
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return out;
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
    for name in names {
        let device = format!("/dev/{name}");
        let Ok(mut file) = File::open(&device) else {
            continue;
        };
        let Ok(Some(layout)) = gpt::read(&mut file) else {
            continue;
        };
        if let Some(state_index) = layout
            .partitions
            .iter()
            .position(|p| p.type_guid == state::STATE_TYPE || p.name == state::STATE_NAME)
        {
            out.push(StateDisk {
                device,
                layout,
                state_index,
            });
        }
    }
    out
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
    fn state_range(&self) -> (u64, u64) {
        let p = &self.layout.partitions[self.state_index];
        let ss = self.layout.sector_size as u64;
        (p.first_lba * ss, (p.last_lba - p.first_lba + 1) * ss)
    }

    fn open_rw(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.device)
            .with_context(|| format!("opening {} for writing", self.device))
    }

    fn write_record(&self, record: &Record) -> Result<()> {
        let file = self.open_rw()?;
        let (start, len) = self.state_range();
        state::write(&mut Window::new(&file, start, len), record)
            .with_context(|| format!("writing the state record on {}", self.device))?;
        Ok(())
    }
}

/// Writes `content` to `path` under `root` atomically (temporary name, rename).
fn write_atomic(root: &Path, path: &str, content: &[u8], mode: u32) -> Result<()> {
    let full = root.join(path.trim_start_matches('/'));
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = full.with_extension("imprint-tmp");
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &full).with_context(|| format!("replacing {}", full.display()))?;
    Ok(())
}

/// Applies the per-host settings of a deploy: the host name (file and kernel),
/// and every setting as a file under /etc/imprint/settings/ for the OS's own
/// services to read.
pub fn apply_settings(root: &Path, record: &Record, set_kernel_hostname: bool) -> Result<()> {
    for (key, value) in &record.settings {
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            log::warn!("ignoring setting {key:?}: not a plain name");
            continue;
        }
        write_atomic(
            root,
            &format!("/etc/imprint/settings/{key}"),
            format!("{value}\n").as_bytes(),
            0o644,
        )?;
    }
    if let Some(hostname) = record.settings.get("hostname") {
        write_atomic(
            root,
            "/etc/hostname",
            format!("{hostname}\n").as_bytes(),
            0o644,
        )?;
        if set_kernel_hostname && let Err(e) = crate::sys::set_hostname(hostname) {
            log::warn!("setting the host name: {e}");
        }
    }
    Ok(())
}

pub fn run(root: &Path) -> Result<()> {
    let disk = own_disk()?;
    let (mut record, generation) = disk.read_record()?;
    println!(
        "imprint firstboot: disk={} generation={generation}",
        disk.device
    );
    println!("imprint firstboot: mode={}", record.mode.as_str());
    println!(
        "imprint firstboot: image={} {}",
        record.image_name, record.image_digest
    );
    for (k, v) in &record.settings {
        println!("imprint firstboot: setting {k}={v}");
    }
    match record.mode {
        state::Mode::Committed | state::Mode::RolledBack => {
            println!(
                "imprint firstboot: nothing to do ({})",
                record.mode.as_str()
            );
            return Ok(());
        }
        state::Mode::Deploy => {
            apply_settings(root, &record, root == Path::new("/"))?;
        }
        state::Mode::Upgrade => {
            bail!(
                "upgrade first boot is not supported by this imprint version; the record stays uncommitted"
            );
        }
    }
    record.mode = state::Mode::Committed;
    disk.write_record(&record)?;
    println!("imprint firstboot: committed");
    Ok(())
}

/// `imprint status`: what the state record of this system's disk says.
pub fn status() -> Result<()> {
    let disk = own_disk()?;
    let (record, generation) = disk.read_record()?;
    println!("disk        {}", disk.device);
    println!("generation  {generation}");
    println!("mode        {}", record.mode.as_str());
    println!("deployed as {}", record.deployed_mode.as_str());
    println!("image       {} {}", record.image_name, record.image_digest);
    println!("deployed at {} (Unix time)", record.deployed_at);
    for (k, v) in &record.settings {
        println!("setting     {k}={v}");
    }
    if let Some(b) = &record.bundle {
        println!("bundle      slot {} {} bytes {}", b.slot, b.len, b.sha256);
    }
    Ok(())
}

/// `imprint prepare-upgrade`: captures this OS's configuration into its state
/// partition, for the next OS to migrate.
pub fn prepare_upgrade(root: &Path) -> Result<()> {
    let disk = own_disk()?;
    let list = crate::migrate::read_list(root)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bundle = crate::migrate::capture(root, &list, now)?;
    let file = disk.open_rw()?;
    let (start, len) = disk.state_range();
    let (_, reference) =
        crate::migrate::store(&mut Window::new(&file, start, len), len, &bundle)
            .with_context(|| format!("storing the configuration bundle on {}", disk.device))?;
    println!(
        "imprint prepare-upgrade: captured {} entries ({} bytes, {}) into {}",
        bundle.entries.len(),
        reference.len,
        reference.sha256,
        disk.device
    );
    Ok(())
}
