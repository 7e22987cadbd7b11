//! The `imprint-state` partition: the one owner of its identity (type GUID, name),
//! its layout, and the lifecycle of what it holds.
//!
//! Layout, from the start of the partition:
//!
//! ```text
//! [record slot 0][record slot 1 ... rescue][bundle slot 0][bundle slot 1]
//!  SLOT_SIZE      SLOT_SIZE                 rest / 2, 4 KiB aligned (each)
//! ```
//!
//! The record slots hold the double-buffered state record
//! ([`crate::format::state`]), which never writes the last 4 KiB of a slot; the
//! last of slot 1 is the rescue area, where a BIOS front disk keeps its own boot
//! sector for the chain stub to fall back to. The bundle slots hold configuration bundles
//! ([`crate::format::bundle`]) captured before an upgrade, written so that the
//! bundle a record names is never the one being overwritten.
//!
//! Disks are found by reading their GPTs directly: a disk whose boot record an
//! upgrade neutralised has no partitions in the kernel's view, but its GPT is
//! still there.

use crate::format::bundle::{Bundle, BundleError, BundleRef};
use crate::format::digest::Digest;
use crate::format::gpt::{self, Guid, Layout, Partition};
use crate::format::state::{self, Mode, Record, SLOT_SIZE, StateError};
use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// GPT partition type of the state partition.
pub const TYPE_GUID: Guid = Guid::from_fields(
    0x6E1C4D36,
    0x93F4,
    0x4E7A,
    [0x9C, 0x51, 0x2F, 0x4B, 0x8D, 0x0A, 0x7E, 0x31],
);
/// GPT partition name of the state partition.
pub const NAME: &str = "imprint-state";
/// Size of the state partition the deploy creates when an image has none.
pub const CREATE_SIZE: u64 = 8 << 20;
/// Bytes at the start of the partition taken by the two record slots.
const RECORDS_LEN: u64 = 2 * SLOT_SIZE;
/// Offset in the partition of the rescue area: the reserved tail of record slot 1.
pub const RESCUE_OFFSET: u64 = RECORDS_LEN - state::SLOT_RESERVED;

/// Whether `p` is a state partition (by type, or by name for images made by hand).
pub fn is_state_partition(p: &Partition) -> bool {
    p.type_guid == TYPE_GUID || p.name == NAME
}

/// The state partition of `layout`, if it has one.
pub fn find(layout: &Layout) -> Option<&Partition> {
    layout.partitions.iter().find(|p| is_state_partition(p))
}

/// Byte offset and length of partition `p` on a disk with `layout`.
pub fn byte_range(layout: &Layout, p: &Partition) -> (u64, u64) {
    let ss = layout.sector_size as u64;
    (p.first_lba * ss, (p.last_lba - p.first_lba + 1) * ss)
}

/// Offset (in the partition) and capacity of bundle slot `slot` (0 or 1) in a
/// state partition of `partition_len` bytes: the space after the two record
/// slots, split in two.
pub fn bundle_slot(partition_len: u64, slot: u8) -> (u64, u64) {
    let each = partition_len.saturating_sub(RECORDS_LEN) / 2 / 4096 * 4096;
    (RECORDS_LEN + slot as u64 * each, each)
}

#[derive(Debug, thiserror::Error)]
pub enum StatePartError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// Stores `bundle` in the state partition `part` (of `part_len` bytes) and points
/// the record at it. The slot the current record uses is never touched, and the
/// record changes only after the new bundle is written and flushed.
pub fn store_bundle<P: Read + Write + Seek>(
    part: &mut P,
    part_len: u64,
    bundle: &Bundle,
) -> Result<(Record, BundleRef), StatePartError> {
    let (mut record, _) = state::read(part)?;
    let bytes = bundle.encode();
    let slot = match &record.bundle {
        Some(b) if b.slot == 0 => 1,
        _ => 0,
    };
    let (offset, capacity) = bundle_slot(part_len, slot);
    if bytes.len() as u64 > capacity {
        return Err(BundleError::TooLarge {
            size: bytes.len() as u64,
            max: capacity,
        }
        .into());
    }
    let io = |e: io::Error| StatePartError::State(StateError::Io(e));
    part.seek(SeekFrom::Start(offset)).map_err(io)?;
    part.write_all(&bytes).map_err(io)?;
    part.flush().map_err(io)?;
    let reference = BundleRef {
        slot,
        len: bytes.len() as u64,
        sha256: Digest::of(&bytes),
    };
    record.bundle = Some(reference.clone());
    state::write(part, &record)?;
    Ok((record, reference))
}

/// Reads and checks the bundle `reference` names.
pub fn load_bundle<P: Read + Seek>(
    part: &mut P,
    part_len: u64,
    reference: &BundleRef,
) -> Result<Bundle, StatePartError> {
    let (offset, capacity) = bundle_slot(part_len, reference.slot);
    if reference.len > capacity {
        return Err(BundleError::Damaged.into());
    }
    let mut bytes = vec![0u8; reference.len as usize];
    let io = |e: io::Error| StatePartError::State(StateError::Io(e));
    part.seek(SeekFrom::Start(offset)).map_err(io)?;
    part.read_exact(&mut bytes).map_err(io)?;
    Ok(Bundle::decode(&bytes, &reference.sha256)?)
}

/// A byte range of a file or disk (a partition) as a `Read + Write + Seek`
/// stream, for the formats that work on streams.
pub struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Window<'a> {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }

    /// The state partition of a disk with `layout`, open as `file`.
    pub fn of_partition(file: &'a File, layout: &Layout, p: &Partition) -> Window<'a> {
        let (start, len) = byte_range(layout, p);
        Window::new(file, start, len)
    }
}

impl io::Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl io::Seek for Window<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let new = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

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
        let state_index = layout.partitions.iter().position(is_state_partition)?;
        Some(StateDisk {
            device: device.to_string(),
            layout,
            state_index,
        })
    }

    /// Byte offset and length of the state partition on the disk.
    pub fn state_range(&self) -> (u64, u64) {
        byte_range(&self.layout, &self.layout.partitions[self.state_index])
    }

    /// Byte offset on the disk of the rescue area (see the module's layout).
    pub fn rescue_offset(&self) -> u64 {
        self.state_range().0 + RESCUE_OFFSET
    }

    pub fn open_rw(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.device)
            .with_context(|| format!("opening {} for writing", self.device))
    }

    pub fn read_record(&self) -> Result<(Record, u64)> {
        let file = File::open(&self.device).with_context(|| format!("opening {}", self.device))?;
        let (start, len) = self.state_range();
        state::read(&mut Window::new(&file, start, len))
            .with_context(|| format!("reading the state record on {}", self.device))
    }

    pub fn write_record(&self, record: &Record) -> Result<()> {
        let file = self.open_rw()?;
        let (start, len) = self.state_range();
        state::write(&mut Window::new(&file, start, len), record)
            .with_context(|| format!("writing the state record on {}", self.device))?;
        Ok(())
    }

    /// Marks the record committed (the OS it describes is now the permanent
    /// one), remembering the mode it was deployed in. Returns that mode.
    pub fn commit(&self, record: &mut Record) -> Result<Mode> {
        let deployed = record.mode;
        record.mode = Mode::Committed;
        record.deployed_mode = deployed;
        self.write_record(record)?;
        Ok(deployed)
    }

    /// Reads this disk's record, lets `change` change it, and writes it back.
    /// Returns the record as written.
    pub fn update_record(&self, change: impl FnOnce(&mut Record)) -> Result<Record> {
        let (mut record, _) = self.read_record()?;
        change(&mut record);
        self.write_record(&record)?;
        Ok(record)
    }

    /// Marks an upgrade on this disk rolled back. Returns the record as written.
    pub fn mark_rolled_back(&self) -> Result<Record> {
        self.update_record(|r| r.mode = Mode::RolledBack)
    }

    /// Captures `bundle` into this disk's state partition and points the record
    /// at it.
    pub fn store_bundle(&self, bundle: &Bundle) -> Result<BundleRef> {
        let file = self.open_rw()?;
        let (start, len) = self.state_range();
        let (_, reference) = store_bundle(&mut Window::new(&file, start, len), len, bundle)
            .with_context(|| format!("storing the configuration bundle on {}", self.device))?;
        Ok(reference)
    }

    /// The most bytes a configuration bundle may take on this disk.
    pub fn bundle_capacity(&self) -> u64 {
        bundle_slot(self.state_range().1, 0).1
    }

    /// Reads the bundle `reference` names from this disk's state partition.
    pub fn load_bundle(&self, reference: &BundleRef) -> Result<Bundle> {
        let file = File::open(&self.device).with_context(|| format!("opening {}", self.device))?;
        let (start, len) = self.state_range();
        load_bundle(&mut Window::new(&file, start, len), len, reference)
            .with_context(|| format!("reading the configuration bundle on {}", self.device))
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

/// The whole disk under block device `major:minor`, named as in /dev, from sysfs
/// mounted at `sys`: a partition's disk, a whole disk itself, or for a mapped
/// device (LVM, dm-crypt, RAID) the disk under its first slave.
pub fn disk_of_device(sys: &Path, major: u32, minor: u32) -> Option<String> {
    let mut node = std::fs::canonicalize(sys.join(format!("dev/block/{major}:{minor}"))).ok()?;
    // Stacks of mapped devices are shallow; the bound only guards against loops.
    for _ in 0..8 {
        if node.join("partition").is_file() {
            return Some(node.parent()?.file_name()?.to_str()?.to_string());
        }
        let slave = std::fs::read_dir(node.join("slaves"))
            .ok()
            .and_then(|entries| {
                let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
                names.sort();
                names.into_iter().next()
            });
        match slave {
            Some(name) => node = std::fs::canonicalize(sys.join("class/block").join(name)).ok()?,
            None => return Some(node.file_name()?.to_str()?.to_string()),
        }
    }
    None
}

/// The disk holding the file system mounted at `root`, found through sysfs at
/// `sys`, whatever named the root on the kernel command line (UUID=, LABEL=,
/// PARTUUID=, or an initrd of its own).
pub fn disk_of_mount(root: &Path, sys: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(root).ok()?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    // Major 0 is an anonymous device (tmpfs, overlay, btrfs subvolumes): no disk.
    if major == 0 {
        return None;
    }
    disk_of_device(sys, major, minor)
}

/// How [`own_disk`] found the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundBy {
    /// It holds the mounted root file system.
    RootMount,
    /// It holds the partition `root=PARTUUID=` names.
    RootPartuuid,
    /// It is the only disk with a state partition.
    OnlyOne,
}

impl FoundBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FoundBy::RootMount => "the disk holding /",
            FoundBy::RootPartuuid => "named by root=PARTUUID=",
            FoundBy::OnlyOne => "the only disk with a state partition",
        }
    }
}

/// The state disk this system booted from: the disk holding the mounted root
/// file system; else the one whose partition `root=PARTUUID=` names; else the
/// only one there is.
pub fn own_disk() -> Result<(StateDisk, FoundBy)> {
    if let Some(name) = disk_of_mount(Path::new("/"), Path::new("/sys"))
        && let Some(disk) = StateDisk::open(&format!("/dev/{name}"))
    {
        return Ok((disk, FoundBy::RootMount));
    }
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
        return Ok((disks.swap_remove(i), FoundBy::RootPartuuid));
    }
    match disks.len() {
        0 => bail!("no disk with an imprint-state partition; was this system deployed by imprint?"),
        1 => Ok((disks.remove(0), FoundBy::OnlyOne)),
        _ => Err(anyhow!(
            "several disks have an imprint-state partition and the root file system is on none of them (nor is root={}); is / on a disk imprint deployed?",
            root.unwrap_or_else(|| "?".into())
        )),
    }
}

/// The previous OS: the disk named by `wanted` (a /dev path), or else the one disk
/// whose record says it is the committed OS. Never `exclude` (the new disk).
pub fn find_previous<'a>(
    disks: &'a [StateDisk],
    wanted: Option<&str>,
    exclude: &str,
) -> Result<&'a StateDisk> {
    if let Some(path) = wanted {
        if path == exclude {
            bail!(
                "imprint.previous={path} is the disk being upgraded; the previous OS must be on another disk"
            );
        }
        return disks.iter().find(|d| d.device == path).ok_or_else(|| {
            anyhow!(
                "imprint.previous={path} has no imprint-state partition; is the previous OS there?"
            )
        });
    }
    let committed: Vec<&StateDisk> = disks
        .iter()
        .filter(|d| d.device != exclude)
        .filter(|d| {
            d.read_record()
                .map(|(r, _)| r.mode == Mode::Committed)
                .unwrap_or(false)
        })
        .collect();
    match committed.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "no other disk holds a committed OS (an imprint-state record in mode committed); set imprint.previous=/dev/..."
        ),
        many => bail!(
            "several disks hold a committed OS ({}); choose one with imprint.previous=",
            many.iter()
                .map(|d| d.device.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The upgraded disks whose record names `own` as their previous OS and that never
/// committed: seen from the old OS after a trial boot fell back to it.
pub fn abandoned_upgrades<'a>(disks: &'a [StateDisk], own: &StateDisk) -> Vec<&'a StateDisk> {
    disks
        .iter()
        .filter(|d| d.device != own.device)
        .filter(|d| {
            d.read_record().is_ok_and(|(r, _)| {
                r.mode == Mode::Upgrade
                    && r.previous
                        .as_ref()
                        .is_some_and(|p| p.disk_guid == own.layout.disk_guid)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree: vda with partition vda2 (254:2), and dm-0 (253:0) on vda3.
    fn fake_sysfs() -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let s = sys.path();
        let disk = s.join("devices/pci0000:00/virtio1/block/vda");
        for part in ["vda2", "vda3"] {
            std::fs::create_dir_all(disk.join(part)).unwrap();
            std::fs::write(disk.join(part).join("partition"), "2\n").unwrap();
        }
        let dm = s.join("devices/virtual/block/dm-0");
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(disk.join("vda3"), dm.join("slaves/vda3")).unwrap();
        std::fs::create_dir_all(s.join("dev/block")).unwrap();
        std::fs::create_dir_all(s.join("class/block")).unwrap();
        for (dev, target) in [
            ("254:0", disk.clone()),
            ("254:2", disk.join("vda2")),
            ("253:0", dm.clone()),
        ] {
            symlink(&target, s.join("dev/block").join(dev)).unwrap();
        }
        for name in ["vda2", "vda3"] {
            symlink(disk.join(name), s.join("class/block").join(name)).unwrap();
        }
        sys
    }

    #[test]
    fn the_disk_under_a_partition_a_whole_disk_and_a_mapped_device() {
        let sys = fake_sysfs();
        let s = sys.path();
        assert_eq!(disk_of_device(s, 254, 2).as_deref(), Some("vda"));
        assert_eq!(disk_of_device(s, 254, 0).as_deref(), Some("vda"));
        assert_eq!(disk_of_device(s, 253, 0).as_deref(), Some("vda"));
        assert_eq!(disk_of_device(s, 8, 1), None);
    }

    #[test]
    fn an_anonymous_root_device_names_no_disk() {
        let sys = fake_sysfs();
        // procfs, like tmpfs or overlay, has an anonymous device (major 0).
        assert_eq!(disk_of_mount(Path::new("/proc"), sys.path()), None);
    }

    #[test]
    fn bundle_slots_do_not_overlap_the_records_or_each_other() {
        let len = CREATE_SIZE;
        let (a, an) = bundle_slot(len, 0);
        let (b, bn) = bundle_slot(len, 1);
        assert_eq!(a, 2 * SLOT_SIZE);
        assert!(a + an <= b && b + bn <= len);
        assert!(an > 3 << 20);
    }
}
