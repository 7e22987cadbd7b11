//! A machine's hardware facts, as the deploy environment reports them and the
//! provisioning server keeps them: firmware, DMI identity, CPU, memory, disks
//! and network interfaces. Parsed here from the text the kernel gives
//! (`/proc/cpuinfo`, `/proc/meminfo`, sysfs attributes, the SecureBoot EFI
//! variable); every value is bounded and made printable, since it came from a
//! machine.

use super::manifest::{Firmware, Requirements};
use serde::{Deserialize, Serialize};

/// Longest text value kept (a model name, a serial).
pub const MAX_TEXT: usize = 64;
/// Disks and interfaces kept at most.
pub const MAX_DISKS: usize = 32;
pub const MAX_NICS: usize = 16;
/// Distinct drivers kept: a large server binds a few dozen.
pub const MAX_BOUND_DRIVERS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// The CPU architecture (`x86_64`).
    #[serde(default)]
    pub arch: String,
    /// `uefi` or `bios`.
    #[serde(default)]
    pub firmware: String,
    /// Whether UEFI Secure Boot is on; unknown under BIOS or without the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    #[serde(default)]
    pub dmi: Dmi,
    #[serde(default)]
    pub cpu: Cpu,
    /// Memory the kernel sees, in bytes.
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// The kernel drivers some device is bound to, sorted (what an image's
    /// required drivers are checked against).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<String>,
}

/// The machine's identity from its firmware's DMI tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dmi {
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub uuid: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    #[serde(default)]
    pub model: String,
    /// Logical CPUs.
    #[serde(default)]
    pub count: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The kernel's name (`vda`, `sda`, `nvme0n1`).
    pub name: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub logical_sector: u32,
    #[serde(default)]
    pub physical_sector: u32,
    #[serde(default)]
    pub rotational: bool,
    /// Removable media (a USB stick, a CD): never a deploy's target unless named.
    #[serde(default)]
    pub removable: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// The kernel's name (`eth0`, `enp1s0`).
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    #[serde(default)]
    pub driver: String,
    /// Link speed in Mbit/s, when the link is up and the driver says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<u32>,
}

/// `text` as a fact: trimmed, control characters and non-ASCII escaped, at
/// most [`MAX_TEXT`] characters.
pub fn clean(text: &str) -> String {
    super::http::printable(text.trim())
        .chars()
        .take(MAX_TEXT)
        .collect()
}

/// The CPU model and the number of logical CPUs, from `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => cpu.count = cpu.count.saturating_add(1),
            "model name" if cpu.model.is_empty() => cpu.model = clean(value),
            _ => {}
        }
    }
    cpu
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The SecureBoot EFI variable's contents (4 bytes of attributes, then the
/// value): whether Secure Boot is on.
pub fn parse_secure_boot(variable: &[u8]) -> Option<bool> {
    match variable {
        [_, _, _, _, value] => Some(*value == 1),
        _ => None,
    }
}

/// A number a sysfs attribute holds.
pub fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A MAC address as sysfs gives it, checked (as the inventory reads one).
pub fn parse_mac(text: &str) -> Option<String> {
    let mac: super::inventory::Mac = text.trim().parse().ok()?;
    Some(mac.to_string())
}

/// Bytes as a person reads them (`8 GiB`, `512 MiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Hardware {
    /// Keeps at most [`MAX_DISKS`] disks and [`MAX_NICS`] interfaces, and every
    /// text value clean: what a server does with facts a machine sent.
    pub fn bounded(mut self) -> Hardware {
        self.disks.truncate(MAX_DISKS);
        self.nics.truncate(MAX_NICS);
        self.drivers
            .retain(|d| crate::format::manifest::valid_driver(d));
        self.drivers.truncate(MAX_BOUND_DRIVERS);
        for text in [
            &mut self.arch,
            &mut self.firmware,
            &mut self.dmi.vendor,
            &mut self.dmi.product,
            &mut self.dmi.serial,
            &mut self.dmi.uuid,
            &mut self.cpu.model,
        ] {
            *text = clean(text);
        }
        for d in &mut self.disks {
            for text in [&mut d.name, &mut d.model, &mut d.serial] {
                *text = clean(text);
            }
        }
        for n in &mut self.nics {
            for text in [&mut n.name, &mut n.mac, &mut n.driver] {
                *text = clean(text);
            }
        }
        self
    }

    /// Every fact, a line each: what `imprint host show` prints and the page
    /// shows on a click.
    pub fn details(&self) -> Vec<String> {
        let or_unknown = |s: &str| match s {
            "" => "unknown".to_string(),
            s => s.to_string(),
        };
        let secure_boot = match self.secure_boot {
            Some(true) => ", Secure Boot on",
            Some(false) => ", Secure Boot off",
            None => "",
        };
        let mut lines = vec![
            format!(
                "firmware: {}{secure_boot}; architecture {}",
                or_unknown(&self.firmware),
                or_unknown(&self.arch)
            ),
            format!(
                "system: {} {}; serial {}; UUID {}",
                or_unknown(&self.dmi.vendor),
                or_unknown(&self.dmi.product),
                or_unknown(&self.dmi.serial),
                or_unknown(&self.dmi.uuid)
            ),
            format!("CPU: {} x {}", self.cpu.count, or_unknown(&self.cpu.model)),
            format!("memory: {}", human_size(self.memory)),
        ];
        for d in &self.disks {
            lines.push(format!(
                "disk {}: {} ({} bytes); model {}; serial {}; sectors {}/{}; {}{}",
                d.name,
                human_size(d.size),
                d.size,
                or_unknown(&d.model),
                or_unknown(&d.serial),
                d.logical_sector,
                d.physical_sector,
                if d.rotational {
                    "rotational"
                } else {
                    "solid state"
                },
                if d.removable { ", removable" } else { "" },
            ));
        }
        for n in &self.nics {
            let speed = n
                .speed
                .map_or("link down or speed unknown".to_string(), |s| {
                    format!("{s} Mbit/s")
                });
            lines.push(format!(
                "NIC {}: {}; driver {}; {speed}",
                n.name,
                n.mac,
                or_unknown(&n.driver)
            ));
        }
        if !self.drivers.is_empty() {
            lines.push(format!("Drivers: {}", self.drivers.join(" ")));
        }
        lines
    }

    /// One line: what the machine is, at a glance.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let name = [self.dmi.vendor.as_str(), self.dmi.product.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if !name.is_empty() {
            parts.push(name);
        }
        let firmware = match (self.firmware.as_str(), self.secure_boot) {
            ("", _) => String::new(),
            (f, Some(true)) => format!("{f}, Secure Boot on"),
            (f, _) => f.to_string(),
        };
        if !firmware.is_empty() {
            parts.push(firmware);
        }
        if self.cpu.count > 0 {
            parts.push(format!(
                "{} CPU{}",
                self.cpu.count,
                if self.cpu.count == 1 { "" } else { "s" }
            ));
        }
        if self.memory > 0 {
            parts.push(format!("{} memory", human_size(self.memory)));
        }
        let disks: Vec<String> = self
            .disks
            .iter()
            .map(|d| format!("{} {}", d.name, human_size(d.size)))
            .collect();
        if !disks.is_empty() {
            parts.push(format!("disks {}", disks.join(", ")));
        }
        let nics: Vec<&str> = self.nics.iter().map(|n| n.mac.as_str()).collect();
        if !nics.is_empty() {
            parts.push(format!("NICs {}", nics.join(", ")));
        }
        parts.join("; ")
    }
}

/// What in an image's `requirements` this machine's firmware or architecture
/// does not meet, said so an operator knows what to do; None when it meets
/// them all (or the image names none). Disks are checked apart
/// ([`unmet_disk`]): the deploy environment checks the disk it chose.
pub fn unmet_platform(requirements: &Requirements, hw: &Hardware) -> Option<String> {
    if let Some(unmet) = unmet_model(requirements, hw) {
        return Some(unmet);
    }
    if let Some(arch) = &requirements.arch
        && !hw.arch.is_empty()
        && *arch != hw.arch
    {
        return Some(format!(
            "the image needs a {} machine; this one is {}",
            clean(arch),
            hw.arch
        ));
    }
    let firmware = match hw.firmware.as_str() {
        "uefi" => Firmware::Uefi,
        "bios" => Firmware::Bios,
        _ => return None,
    };
    if !requirements.firmware.is_empty() && !requirements.firmware.contains(&firmware) {
        let (needs, has) = match firmware {
            Firmware::Bios => ("UEFI", "BIOS (legacy boot)"),
            Firmware::Uefi => ("BIOS (legacy boot)", "UEFI"),
        };
        return Some(format!(
            "the image boots with {needs} firmware only; this machine started with {has}: switch its firmware's boot mode, or deploy an image made for {has}"
        ));
    }
    None
}

/// Memory, DMI product and drivers (facts a machine did not report are not
/// held against it).
fn unmet_model(requirements: &Requirements, hw: &Hardware) -> Option<String> {
    let needed = requirements.min_memory;
    if needed > 0 && hw.memory > 0 && hw.memory < needed {
        return Some(format!(
            "the image needs {} of memory ({needed} bytes); this machine has {} ({} bytes)",
            human_size(needed),
            human_size(hw.memory),
            hw.memory
        ));
    }
    if let Some(product) = &requirements.product
        && !hw.dmi.product.is_empty()
        && hw.dmi.product != clean(product)
    {
        return Some(format!(
            "the image is made for the model {:?}; this machine is a {:?}",
            clean(product),
            hw.dmi.product
        ));
    }
    if !hw.drivers.is_empty()
        && let Some(missing) = requirements
            .drivers
            .iter()
            .find(|d| !hw.drivers.iter().any(|bound| bound == *d))
    {
        return Some(format!(
            "the image needs a device bound to the driver {}; none of this machine's is (it has {})",
            clean(missing),
            hw.drivers.join(" ")
        ));
    }
    None
}

/// Whether this machine has a disk the image fits on (its removable media
/// aside): the message naming the requirement when it has none.
pub fn unmet_disk(requirements: &Requirements, hw: &Hardware) -> Option<String> {
    let needed = requirements.min_disk_size;
    let largest = hw
        .disks
        .iter()
        .filter(|d| !d.removable)
        .map(|d| d.size)
        .max()?;
    (largest < needed).then(|| {
        format!(
            "the image needs a disk of at least {} ({needed} bytes); this machine's largest is {} ({largest} bytes)",
            human_size(needed),
            human_size(largest)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_come_from_procfs_text() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n";
        assert_eq!(
            parse_cpuinfo(cpuinfo),
            Cpu {
                model: "QEMU Virtual CPU version 2.5+".into(),
                count: 2
            }
        );
        assert_eq!(parse_cpuinfo("").count, 0);
        let meminfo = "MemTotal:         250212 kB\nMemFree:          200000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some(250_212 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
        assert_eq!(
            parse_meminfo(&format!("MemTotal: {} kB\n", u64::MAX)),
            None,
            "no overflow"
        );
    }

    #[test]
    fn secure_boot_and_macs_are_read_strictly() {
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 1]), Some(true));
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 0]), Some(false));
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0]), None);
        assert_eq!(parse_secure_boot(&[6, 0, 0, 0, 1, 1]), None);
        assert_eq!(
            parse_mac("52:54:00:12:34:56\n").as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(parse_mac("52:54:00:12:34").as_deref(), None);
        assert_eq!(parse_mac("52:54:00:12:34:zz").as_deref(), None);
    }

    #[test]
    fn requirements_are_checked_against_the_facts() {
        let hw = Hardware {
            arch: "x86_64".into(),
            firmware: "bios".into(),
            disks: vec![
                Disk {
                    name: "vda".into(),
                    size: 1 << 30,
                    ..Disk::default()
                },
                Disk {
                    name: "sda".into(),
                    size: 64 << 30,
                    removable: true,
                    ..Disk::default()
                },
            ],
            ..Hardware::default()
        };
        let needs = |firmware: Vec<Firmware>, arch: Option<&str>, disk: u64| Requirements {
            arch: arch.map(str::to_string),
            firmware,
            min_disk_size: disk,
            ..Default::default()
        };
        let any = needs(vec![], None, 1 << 30);
        assert_eq!(unmet_platform(&any, &hw), None);
        assert_eq!(unmet_disk(&any, &hw), None);
        let both = needs(vec![Firmware::Bios, Firmware::Uefi], Some("x86_64"), 0);
        assert_eq!(unmet_platform(&both, &hw), None);
        let uefi_only = unmet_platform(&needs(vec![Firmware::Uefi], None, 0), &hw).unwrap();
        assert!(
            uefi_only.contains("boots with UEFI firmware only"),
            "{uefi_only}"
        );
        let model = |set: fn(&mut Requirements)| {
            let mut r = needs(vec![], None, 0);
            set(&mut r);
            let mut hw = hw.clone();
            hw.memory = 1 << 30;
            hw.dmi.product = "Standard PC (Q35 + ICH9, 2009)".into();
            hw.drivers = vec!["ahci".into(), "virtio_blk".into()];
            unmet_platform(&r, &hw)
        };
        assert_eq!(model(|r| r.min_memory = 1 << 30), None);
        let memory = model(|r| r.min_memory = 2 << 30).unwrap();
        assert!(memory.contains("needs 2 GiB of memory"), "{memory}");
        assert_eq!(
            model(|r| r.product = Some("Standard PC (Q35 + ICH9, 2009)".into())),
            None
        );
        let product = model(|r| r.product = Some("PowerEdge R650".into())).unwrap();
        assert!(product.contains("\"PowerEdge R650\""), "{product}");
        assert_eq!(model(|r| r.drivers = vec!["virtio_blk".into()]), None);
        let driver = model(|r| r.drivers = vec!["virtio_blk".into(), "nvme".into()]).unwrap();
        assert!(driver.contains("driver nvme"), "{driver}");
        // Facts not reported are not held against a machine.
        let mut silent = needs(vec![], None, 0);
        silent.min_memory = u64::MAX;
        silent.product = Some("x".into());
        silent.drivers = vec!["nvme".into()];
        assert_eq!(unmet_platform(&silent, &hw), None);
        let arm = unmet_platform(&needs(vec![], Some("aarch64"), 0), &hw).unwrap();
        assert_eq!(arm, "the image needs a aarch64 machine; this one is x86_64");
        // The removable stick does not count.
        let big = unmet_disk(&needs(vec![], None, 2 << 30), &hw).unwrap();
        assert_eq!(
            big,
            "the image needs a disk of at least 2 GiB (2147483648 bytes); this machine's largest is 1 GiB (1073741824 bytes)"
        );
        // Facts not known are not held against the machine.
        let unknown = Hardware::default();
        assert_eq!(unmet_platform(&both, &unknown), None);
        assert_eq!(unmet_disk(&needs(vec![], None, 1 << 40), &unknown), None);
    }

    #[test]
    fn facts_a_machine_sent_are_bounded_and_printable() {
        let hostile = Hardware {
            dmi: Dmi {
                vendor: "\u{1b}[2J<script>x</script>".into(),
                product: "p".repeat(1000),
                ..Dmi::default()
            },
            disks: vec![
                Disk {
                    name: "vda\nforged line".into(),
                    ..Disk::default()
                };
                100
            ],
            nics: vec![Nic::default(); 100],
            ..Hardware::default()
        }
        .bounded();
        assert_eq!(hostile.disks.len(), MAX_DISKS);
        assert_eq!(hostile.nics.len(), MAX_NICS);
        assert_eq!(hostile.dmi.product.len(), MAX_TEXT);
        assert!(!hostile.dmi.vendor.contains('\u{1b}'));
        assert!(!hostile.disks[0].name.contains('\n'));
    }

    #[test]
    fn the_summary_says_what_the_machine_is() {
        let hw = Hardware {
            arch: "x86_64".into(),
            firmware: "uefi".into(),
            secure_boot: Some(true),
            dmi: Dmi {
                vendor: "QEMU".into(),
                product: "Standard PC (Q35 + ICH9, 2009)".into(),
                ..Dmi::default()
            },
            cpu: Cpu {
                model: "m".into(),
                count: 2,
            },
            memory: 512 << 20,
            disks: vec![Disk {
                name: "vda".into(),
                size: 8 << 30,
                ..Disk::default()
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                ..Nic::default()
            }],
            drivers: vec!["ahci".into(), "virtio_net".into()],
        };
        assert_eq!(
            hw.summary(),
            "QEMU Standard PC (Q35 + ICH9, 2009); uefi, Secure Boot on; 2 CPUs; 512 MiB memory; disks vda 8 GiB; NICs 52:54:00:12:34:56"
        );
        let details = hw.details();
        assert_eq!(
            details[0],
            "firmware: uefi, Secure Boot on; architecture x86_64"
        );
        assert_eq!(
            details[4],
            "disk vda: 8 GiB (8589934592 bytes); model unknown; serial unknown; sectors 0/0; solid state"
        );
        assert_eq!(
            details[5],
            "NIC eth0: 52:54:00:12:34:56; driver unknown; link down or speed unknown"
        );
        assert_eq!(details[6], "Drivers: ahci virtio_net");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(100), "100 B");
        // What is serialized reads back the same.
        let text = serde_json::to_string(&hw).unwrap();
        assert_eq!(serde_json::from_str::<Hardware>(&text).unwrap(), hw);
    }
}
