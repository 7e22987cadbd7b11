//! Inspects this machine: collects its hardware facts ([`Hardware`]) from procfs and
//! sysfs under a root (`/` on a machine; a directory tree in tests). Every
//! attribute is read with a size bound; links are only named, never followed
//! out of sysfs; what cannot be read is left empty.

use crate::format::hardware::{
    self, Disk, Dmi, Hardware, MAX_DISKS, MAX_NICS, Nic, clean, parse_number,
};
use std::io::Read;
use std::path::Path;

/// Largest sysfs attribute read.
const MAX_ATTRIBUTE: u64 = 4096;
/// Largest `/proc/cpuinfo` read (about 1.5 KB a CPU: hundreds of CPUs).
const MAX_CPUINFO: u64 = 1 << 20;

/// The SecureBoot variable of the EFI global variable vendor.
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Disks that are not hardware: RAM disks, loop devices, device-mapper.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "dm-", "md", "nbd"];

fn read_bounded(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

fn text(path: &Path) -> String {
    read_bounded(path, MAX_ATTRIBUTE)
        .map(|b| clean(&String::from_utf8_lossy(&b)))
        .unwrap_or_default()
}

fn number(path: &Path) -> Option<u64> {
    parse_number(&text(path))
}

/// The directory entries' names under `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The last part of where the link at `path` points (a driver's name), not
/// followed.
fn link_name(path: &Path) -> String {
    std::fs::read_link(path)
        .ok()
        .and_then(|target| target.file_name().map(|n| clean(&n.to_string_lossy())))
        .unwrap_or_default()
}

/// Everything this machine says of itself under `root`.
pub fn collect(root: &Path) -> Hardware {
    let sys = root.join("sys");
    let efi = sys.join("firmware/efi");
    let uefi = efi.is_dir();
    let secure_boot = match uefi {
        true => read_bounded(&efi.join("efivars").join(SECURE_BOOT_VAR), 64)
            .and_then(|v| hardware::parse_secure_boot(&v)),
        false => None,
    };
    let dmi_dir = sys.join("class/dmi/id");
    let dmi = Dmi {
        vendor: text(&dmi_dir.join("sys_vendor")),
        product: text(&dmi_dir.join("product_name")),
        serial: text(&dmi_dir.join("product_serial")),
        uuid: text(&dmi_dir.join("product_uuid")),
    };
    let proc = root.join("proc");
    let cpu = read_bounded(&proc.join("cpuinfo"), MAX_CPUINFO)
        .map(|b| hardware::parse_cpuinfo(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let memory = read_bounded(&proc.join("meminfo"), MAX_CPUINFO)
        .and_then(|b| hardware::parse_meminfo(&String::from_utf8_lossy(&b)))
        .unwrap_or(0);
    Hardware {
        arch: std::env::consts::ARCH.to_string(),
        firmware: if uefi { "uefi" } else { "bios" }.to_string(),
        secure_boot,
        dmi,
        cpu,
        memory,
        disks: disks(&sys.join("block")),
        nics: nics(&sys.join("class/net")),
        drivers: bound_drivers(&sys.join("bus")),
    }
}

/// Devices looked at per bus: enough for any real machine, and a bound on a
/// sysfs that lists more.
const MAX_DEVICES_PER_BUS: usize = 4096;

/// Every driver some device is bound to, on every bus, sorted and once each.
fn bound_drivers(bus: &Path) -> Vec<String> {
    let mut drivers = std::collections::BTreeSet::new();
    for bus_name in names(bus) {
        let devices = bus.join(&bus_name).join("devices");
        for device in names(&devices).into_iter().take(MAX_DEVICES_PER_BUS) {
            let driver = link_name(&devices.join(device).join("driver"));
            if !driver.is_empty() && drivers.len() < hardware::MAX_BOUND_DRIVERS {
                drivers.insert(driver);
            }
        }
    }
    drivers.into_iter().collect()
}

fn disks(block: &Path) -> Vec<Disk> {
    names(block)
        .into_iter()
        .filter(|name| !NOT_DISKS.iter().any(|p| name.starts_with(p)))
        .take(MAX_DISKS)
        .map(|name| {
            let dir = block.join(&name);
            let queue = dir.join("queue");
            // virtio disks keep their serial beside the device, others under it.
            let serial = match text(&dir.join("serial")) {
                s if s.is_empty() => text(&dir.join("device/serial")),
                s => s,
            };
            Disk {
                size: number(&dir.join("size")).unwrap_or(0).saturating_mul(512),
                model: text(&dir.join("device/model")),
                serial,
                logical_sector: number(&queue.join("logical_block_size")).unwrap_or(0) as u32,
                physical_sector: number(&queue.join("physical_block_size")).unwrap_or(0) as u32,
                rotational: number(&queue.join("rotational")) == Some(1),
                removable: number(&dir.join("removable")) == Some(1),
                name: clean(&name),
            }
        })
        .collect()
}

fn nics(net: &Path) -> Vec<Nic> {
    names(net)
        .into_iter()
        // Interfaces with a device behind them: not lo, bridges or tunnels.
        .filter(|name| net.join(name).join("device").exists())
        .take(MAX_NICS)
        .filter_map(|name| {
            let dir = net.join(&name);
            let mac = hardware::parse_mac(&text(&dir.join("address")))?;
            // Negative (-1) or unreadable while the link is down.
            let speed = text(&dir.join("speed"))
                .parse::<i64>()
                .ok()
                .filter(|s| *s > 0)
                .and_then(|s| u32::try_from(s).ok());
            Some(Nic {
                driver: link_name(&dir.join("device/driver")),
                name: clean(&name),
                mac,
                speed,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn put(root: &Path, path: &str, contents: &[u8]) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    /// A sysfs and procfs laid out as a UEFI QEMU machine's.
    fn machine(root: &Path) {
        put(root, "proc/cpuinfo", b"processor\t: 0\nmodel name\t: QEMU Virtual CPU\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU\n");
        put(root, "proc/meminfo", b"MemTotal:  262144 kB\n");
        put(
            root,
            &format!("sys/firmware/efi/efivars/{SECURE_BOOT_VAR}"),
            &[6, 0, 0, 0, 1],
        );
        put(root, "sys/class/dmi/id/sys_vendor", b"QEMU\n");
        put(root, "sys/class/dmi/id/product_name", b"Standard PC\n");
        put(root, "sys/class/dmi/id/product_uuid", b"0f8c\n");
        put(root, "sys/block/vda/size", b"16777216\n");
        put(root, "sys/block/vda/serial", b"disk-a\n");
        put(root, "sys/block/vda/removable", b"0\n");
        put(root, "sys/block/vda/queue/logical_block_size", b"512\n");
        put(root, "sys/block/vda/queue/physical_block_size", b"4096\n");
        put(root, "sys/block/vda/queue/rotational", b"1\n");
        put(root, "sys/block/sda/size", b"2048\n");
        put(root, "sys/block/sda/removable", b"1\n");
        put(root, "sys/block/sda/device/model", b"USB stick  \n");
        put(root, "sys/block/loop0/size", b"8\n");
        put(root, "sys/block/ram0/size", b"8\n");
        put(root, "sys/class/net/eth0/address", b"52:54:00:12:34:56\n");
        put(root, "sys/class/net/eth0/speed", b"-1\n");
        fs::create_dir_all(root.join("sys/class/net/eth0/device")).unwrap();
        fs::create_dir_all(root.join("drivers/virtio_net")).unwrap();
        std::os::unix::fs::symlink(
            root.join("drivers/virtio_net"),
            root.join("sys/class/net/eth0/device/driver"),
        )
        .unwrap();
        put(root, "sys/class/net/lo/address", b"00:00:00:00:00:00\n");
        for (bus, device, driver) in [
            ("pci", "0000:00:03.0", "virtio-pci"),
            ("pci", "0000:00:1f.2", "ahci"),
            ("pci", "0000:00:1f.3", ""),
            ("virtio", "virtio0", "virtio_blk"),
            ("virtio", "virtio1", "virtio_net"),
        ] {
            let dir = root.join("sys/bus").join(bus).join("devices").join(device);
            fs::create_dir_all(&dir).unwrap();
            if !driver.is_empty() {
                std::os::unix::fs::symlink(
                    format!("../../../../bus/{bus}/drivers/{driver}"),
                    dir.join("driver"),
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn a_machine_is_described_from_its_sysfs_and_procfs() {
        let dir = tempfile::tempdir().unwrap();
        machine(dir.path());
        let hw = collect(dir.path());
        assert_eq!(hw.firmware, "uefi");
        assert_eq!(hw.secure_boot, Some(true));
        assert_eq!(
            (hw.dmi.vendor.as_str(), hw.dmi.product.as_str()),
            ("QEMU", "Standard PC")
        );
        assert_eq!(hw.cpu.count, 2);
        assert_eq!(hw.memory, 256 << 20);
        let names: Vec<&str> = hw.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "vda"], "no loop or RAM disks");
        let vda = &hw.disks[1];
        assert_eq!(vda.size, 8 << 30);
        assert_eq!(vda.serial, "disk-a");
        assert_eq!((vda.logical_sector, vda.physical_sector), (512, 4096));
        assert!(vda.rotational && !vda.removable);
        assert!(hw.disks[0].removable);
        assert_eq!(hw.disks[0].model, "USB stick");
        assert_eq!(hw.nics.len(), 1, "lo has no device");
        assert_eq!(
            hw.drivers,
            ["ahci", "virtio-pci", "virtio_blk", "virtio_net"],
            "each bound driver once, sorted; an unbound device adds none"
        );
        let nic = &hw.nics[0];
        assert_eq!(
            (
                nic.name.as_str(),
                nic.mac.as_str(),
                nic.driver.as_str(),
                nic.speed
            ),
            ("eth0", "52:54:00:12:34:56", "virtio_net", None)
        );
    }

    #[test]
    fn a_bios_machine_with_little_to_say_is_described_as_far_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "sys/block/sda/size", b"not a number");
        let hw = collect(dir.path());
        assert_eq!((hw.firmware.as_str(), hw.secure_boot), ("bios", None));
        assert_eq!(hw.memory, 0);
        assert_eq!(hw.disks.len(), 1);
        assert_eq!(hw.disks[0].size, 0);
        assert!(hw.nics.is_empty());
    }

    #[test]
    fn attributes_are_read_with_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            "sys/class/dmi/id/sys_vendor",
            &vec![b'v'; 1 << 20],
        );
        let hw = collect(dir.path());
        assert_eq!(hw.dmi.vendor.len(), hardware::MAX_TEXT);
    }
}
