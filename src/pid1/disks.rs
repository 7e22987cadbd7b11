//! Finding the target disk: what /sys/block shows, and the choice among it.
//! The choice is a pure function so its rules are unit tested.

use crate::format::cmdline::{DiskHints, DiskSelector};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    pub size: u64,
    pub removable: bool,
    pub read_only: bool,
    pub serial: String,
    pub model: String,
    /// Resolved sysfs device path (e.g. /sys/devices/pci0000:00/0000:00:04.0/virtio1).
    pub sys_path: String,
    /// Mounted (or holding a mounted partition): it carries the running system or
    /// the boot medium.
    pub in_use: bool,
}

impl DiskInfo {
    pub fn dev_path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// The device node of partition `number`, once the kernel has made it (it
    /// appears shortly after the partition table is re-read).
    pub fn wait_for_partition(&self, number: u32) -> Result<String, String> {
        let device = partition_path(&self.dev_path(), number);
        let start = std::time::Instant::now();
        while !Path::new(&device).exists() {
            if start.elapsed() > std::time::Duration::from_secs(10) {
                return Err(format!(
                    "{device} did not appear after re-reading the partition table"
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(device)
    }

    fn describe(&self) -> String {
        let mut s = format!("{} ({} bytes", self.dev_path(), self.size);
        if !self.model.is_empty() {
            s.push_str(&format!(", model {}", self.model));
        }
        if !self.serial.is_empty() {
            s.push_str(&format!(", serial {}", self.serial));
        }
        if self.removable {
            s.push_str(", removable");
        }
        if self.in_use {
            s.push_str(", in use");
        }
        s.push(')');
        s
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskError {
    #[error(
        "no disk found{0}; check that the machine has a disk and its driver is in the initramfs"
    )]
    NoDisks(String),
    #[error("imprint.disk={wanted} matches no disk; disks present: {present}")]
    NoMatch { wanted: String, present: String },
    #[error(
        "several disks could be the target ({0}); choose one with imprint.disk= (a path or serial:, model:, size:, by-path: hints)"
    )]
    Ambiguous(String),
    #[error(
        "{disk} is too small: the image needs a disk of at least {needed} bytes; nothing was written. Give it a larger disk (imprint.disk=), or deploy an image made for this one"
    )]
    TooSmall { disk: String, needed: u64 },
    #[error("{0} is the boot medium or in use; it is never a target")]
    InUse(String),
    #[error("{0} is read-only")]
    ReadOnly(String),
}

/// Block devices that can be disks (not loop, RAM, optical, or mapper devices).
/// The device node of partition `number` of the disk `device` (`/dev/vda` →
/// `/dev/vda3`, `/dev/nvme0n1` → `/dev/nvme0n1p3`).
pub fn partition_path(device: &str, number: u32) -> String {
    let separator = if device.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    format!("{device}{separator}{number}")
}

pub fn scan() -> Vec<DiskInfo> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut disks = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return disks;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "sr", "dm-", "md", "fd", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let base = entry.path();
        let read = |rel: &str| {
            std::fs::read_to_string(base.join(rel))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let sectors: u64 = read("size").parse().unwrap_or(0);
        let serial = [read("serial"), read("device/serial"), read("device/wwid")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let sys_path = std::fs::canonicalize(base.join("device"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let in_use = mounts.lines().any(|l| {
            let dev = l.split_whitespace().next().unwrap_or("");
            dev == format!("/dev/{name}")
                || (dev.starts_with(&format!("/dev/{name}"))
                    && Path::new(&base.join(&dev[5..])).exists())
        });
        disks.push(DiskInfo {
            size: sectors * 512,
            removable: read("removable") == "1",
            read_only: read("ro") == "1",
            serial,
            model: read("device/model"),
            sys_path,
            in_use,
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

fn matches(d: &DiskInfo, h: &DiskHints) -> bool {
    h.serial.as_ref().is_none_or(|s| d.serial == *s)
        && h.model.as_ref().is_none_or(|m| d.model == *m)
        && h.size.is_none_or(|s| d.size.abs_diff(s) <= s / 20)
        && h.by_path.as_ref().is_none_or(|p| {
            let p = p.strip_prefix("pci-").unwrap_or(p);
            d.sys_path.contains(p)
        })
}

/// Picks the target disk. With a selector: the one disk it names. Without: the one
/// fixed (non-removable), writable, unused disk large enough for the image.
pub fn choose<'a>(
    disks: &'a [DiskInfo],
    selector: Option<&DiskSelector>,
    needed: u64,
) -> Result<&'a DiskInfo, DiskError> {
    let list = |ds: &[&DiskInfo]| {
        ds.iter()
            .map(|d| d.describe())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<&DiskInfo> = disks.iter().collect();
    let chosen = match selector {
        Some(sel) => {
            let found: Vec<&DiskInfo> = match sel {
                DiskSelector::Path(p) => {
                    let name = p.trim_start_matches("/dev/");
                    disks.iter().filter(|d| d.name == name).collect()
                }
                DiskSelector::Hints(h) => disks.iter().filter(|d| matches(d, h)).collect(),
            };
            let wanted = match sel {
                DiskSelector::Path(p) => p.clone(),
                DiskSelector::Hints(h) => format!("{h:?}"),
            };
            match found.as_slice() {
                [] => {
                    return Err(DiskError::NoMatch {
                        wanted,
                        present: if all.is_empty() {
                            "none".into()
                        } else {
                            list(&all)
                        },
                    });
                }
                [one] => *one,
                many => return Err(DiskError::Ambiguous(list(many))),
            }
        }
        None => {
            if disks.is_empty() {
                return Err(DiskError::NoDisks(String::new()));
            }
            let fit: Vec<&DiskInfo> = disks
                .iter()
                .filter(|d| !d.removable && !d.read_only && !d.in_use && d.size >= needed)
                .collect();
            // Fixed disks all too small: no wait for another makes them fit.
            let largest = disks
                .iter()
                .filter(|d| !d.removable && !d.read_only && !d.in_use)
                .max_by_key(|d| d.size);
            match fit.as_slice() {
                [one] => *one,
                [] if largest.is_some_and(|d| d.size < needed) => {
                    return Err(DiskError::TooSmall {
                        disk: largest.map(|d| d.describe()).unwrap_or_default(),
                        needed,
                    });
                }
                [] => {
                    return Err(DiskError::NoMatch {
                        wanted: format!("(a fixed, unused disk of at least {needed} bytes)"),
                        present: list(&all),
                    });
                }
                many => return Err(DiskError::Ambiguous(list(many))),
            }
        }
    };
    if chosen.in_use {
        return Err(DiskError::InUse(chosen.dev_path()));
    }
    if chosen.read_only {
        return Err(DiskError::ReadOnly(chosen.dev_path()));
    }
    if chosen.size < needed {
        return Err(DiskError::TooSmall {
            disk: chosen.describe(),
            needed,
        });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            size: gib << 30,
            removable: false,
            read_only: false,
            serial: format!("SER-{name}"),
            model: "QEMU HARDDISK".into(),
            sys_path: format!("/sys/devices/pci0000:00/0000:00:0{}.0/virtio1", name.len()),
            in_use: false,
        }
    }

    #[test]
    fn the_one_fixed_disk_large_enough() {
        let mut usb = disk("sda", 16);
        usb.removable = true;
        let disks = vec![usb, disk("vda", 2), disk("vdb", 20)];
        assert_eq!(choose(&disks, None, 10 << 30).unwrap().name, "vdb");
        assert!(matches!(
            choose(&disks, None, 1 << 30),
            Err(DiskError::Ambiguous(_))
        ));
        // Every fixed disk too small: said so, naming the largest.
        let err = choose(&disks, None, 100 << 30).unwrap_err();
        assert!(
            matches!(&err, DiskError::TooSmall { disk, needed } if disk.contains("vdb") && *needed == 100 << 30),
            "{err}"
        );
        // Only a removable one: nothing to choose (yet).
        let mut stick = disk("sda", 64);
        stick.removable = true;
        assert!(matches!(
            choose(&[stick], None, 1 << 30),
            Err(DiskError::NoMatch { .. })
        ));
        assert!(matches!(choose(&[], None, 1), Err(DiskError::NoDisks(_))));
    }

    #[test]
    fn selectors() {
        let disks = vec![disk("vda", 2), disk("vdb", 20), disk("nvme0n1", 20)];
        let path = DiskSelector::Path("/dev/vda".into());
        assert_eq!(choose(&disks, Some(&path), 1).unwrap().name, "vda");
        assert!(matches!(
            choose(&disks, Some(&path), 10 << 30),
            Err(DiskError::TooSmall { .. })
        ));
        let serial = DiskSelector::Hints(DiskHints {
            serial: Some("SER-vdb".into()),
            ..DiskHints::default()
        });
        assert_eq!(choose(&disks, Some(&serial), 1).unwrap().name, "vdb");
        let size = DiskSelector::Hints(DiskHints {
            size: Some(20 << 30),
            ..DiskHints::default()
        });
        assert!(matches!(
            choose(&disks, Some(&size), 1),
            Err(DiskError::Ambiguous(_))
        ));
        let by_path = DiskSelector::Hints(DiskHints {
            by_path: Some("pci-0000:00:07.0".into()),
            ..DiskHints::default()
        });
        assert_eq!(choose(&disks, Some(&by_path), 1).unwrap().name, "nvme0n1");
        let none = DiskSelector::Path("/dev/sdz".into());
        assert!(matches!(
            choose(&disks, Some(&none), 1),
            Err(DiskError::NoMatch { .. })
        ));
    }

    #[test]
    fn never_the_boot_medium() {
        let mut boot = disk("vda", 20);
        boot.in_use = true;
        let disks = vec![boot];
        assert!(matches!(
            choose(&disks, None, 1),
            Err(DiskError::NoMatch { .. })
        ));
        let path = DiskSelector::Path("/dev/vda".into());
        assert!(matches!(
            choose(&disks, Some(&path), 1),
            Err(DiskError::InUse(_))
        ));
    }
}
