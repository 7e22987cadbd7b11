//! What the installed OS's own boot loader would start, read from its disk: the
//! entry systemd-boot would choose (a unified kernel image or a Boot Loader
//! Specification entry) where the ESP's loader is systemd-boot; else a BLS
//! entry, GRUB's default menu entry or SYSLINUX's default label. Everything is
//! read from file systems mounted read-only, through [`sys::Root`] (a symlink
//! cannot lead out), with every read bounded.

use super::{disks, drivers};
use crate::format::bootcfg::{self, BootEntry};
use crate::format::dps::XBOOTLDR;
use crate::format::gpt::{self, Layout, Partition};
use crate::format::http::printable;
use crate::format::manifest::BootFacts;
use crate::format::pe;
use crate::format::sdboot::{self, ChosenBy, Kind};
use crate::statepart;
use crate::sys;
use anyhow::{Result, anyhow};
use std::path::Path;

/// What kexec loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Payload {
    /// A kernel and its initrds, files on the partition.
    Files {
        kernel: String,
        initrds: Vec<String>,
    },
    /// A unified kernel image on the partition: its `.linux` section is the
    /// kernel, `.ucode` and `.initrd` the initrd.
    Uki { path: String },
}

/// A boot the deploy environment can start by kexec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Start {
    /// GPT partition number of the file system holding the payload.
    pub partition: u32,
    pub payload: Payload,
    pub cmdline: String,
}

impl Start {
    pub fn from_facts(facts: &BootFacts) -> Start {
        Start {
            partition: facts.partition,
            payload: Payload::Files {
                kernel: facts.kernel.clone(),
                initrds: facts.initrd.iter().cloned().collect(),
            },
            cmdline: facts.cmdline.clone(),
        }
    }

    /// The kernel or UKI, as the console names it.
    pub fn kernel(&self) -> &str {
        match &self.payload {
            Payload::Files { kernel, .. } => kernel,
            Payload::Uki { path } => path,
        }
    }
}

/// What looking at the disk's boot loader gave.
pub(super) enum Found {
    Start(Start),
    /// The loader would start something kexec cannot (an EFI program), said why.
    Cannot(String),
    /// No boot loader configuration imprint reads.
    Nothing,
}

pub(super) const MNT: &str = "/run/imprint/boot";
/// Largest boot loader configuration read.
const MAX_LOADER_FILE: u64 = 1 << 20;
/// Most entries read from one directory.
const MAX_ENTRIES: usize = 256;
/// Largest `.osrel` or `.cmdline` section read.
const MAX_UKI_TEXT: u64 = 64 << 10;
/// The GUID systemd-boot's EFI variables live under.
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Mounts partition `number` of `disk` read-only at `mnt`, as whichever file
/// system it holds; returns the device and the file system's name.
pub(super) fn mount_partition(
    disk: &disks::DiskInfo,
    number: u32,
    mnt: &str,
) -> Result<(String, &'static str)> {
    let device = disk.wait_for_partition(number).map_err(|e| anyhow!(e))?;
    drivers::load_filesystems();
    let mut errors = Vec::new();
    let mounted = ["vfat", "ext4", "iso9660"]
        .into_iter()
        .find(|fs| match sys::mount(&device, mnt, fs, true) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("{fs}: {e}"));
                false
            }
        })
        .ok_or_else(|| anyhow!("mounting {device} read-only failed ({})", errors.join(", ")))?;
    Ok((device, mounted))
}

/// Runs `look` on partition `p` mounted read-only at [`MNT`]; `None` if it
/// does not mount.
fn on_partition<T>(
    disk: &disks::DiskInfo,
    p: &Partition,
    look: impl FnOnce(&sys::Root, &str) -> T,
) -> Option<T> {
    let (device, _) = mount_partition(disk, p.number, MNT).ok()?;
    let found = sys::Root::open(Path::new(MNT))
        .ok()
        .map(|root| look(&root, &device));
    if let Err(e) = sys::unmount(MNT) {
        log::warn!("unmounting {device}: {e}");
    }
    found
}

/// The boot the disk's own boot loader would start.
pub(super) fn find(disk: &disks::DiskInfo, layout: &Layout) -> Found {
    if let Some(found) = systemd_boot(disk, layout) {
        return found;
    }
    match classic(disk, layout) {
        Some(start) => Found::Start(start),
        None => Found::Nothing,
    }
}

/// Whether the PE file `rel` is systemd-boot (its `.sdmagic` section says so).
fn is_systemd_boot(root: &sys::Root, rel: &str) -> bool {
    let Ok(mut file) = root.open_file(rel) else {
        return false;
    };
    let Ok(sections) = pe::read_sections(&mut file) else {
        return false;
    };
    sections
        .iter()
        .find(|s| s.name == ".sdmagic")
        .and_then(|s| pe::read_section(&mut file, s, 4096).ok())
        .is_some_and(|magic| pe::is_systemd_boot_magic(&magic))
}

/// A UKI's `.osrel` and `.cmdline` sections, as text.
fn uki_texts(root: &sys::Root, rel: &str) -> Option<(String, Option<String>)> {
    let mut file = root.open_file(rel).ok()?;
    let sections = pe::read_sections(&mut file).ok()?;
    let uki = pe::Uki::from_sections(&sections)?;
    let osrel = pe::read_section(&mut file, uki.osrel.as_ref()?, MAX_UKI_TEXT).ok()?;
    let cmdline = match &uki.cmdline {
        Some(s) => Some(pe::cmdline_text(
            &pe::read_section(&mut file, s, MAX_UKI_TEXT).ok()?,
        )?),
        None => None,
    };
    Some((String::from_utf8_lossy(&osrel).into_owned(), cmdline))
}

/// systemd-boot's entries on one partition (the ESP or XBOOTLDR): type #2
/// UKIs in `/EFI/Linux` and type #1 entries whose files are there.
fn entries_on(root: &sys::Root, number: u32) -> Vec<sdboot::Entry> {
    let mut entries = Vec::new();
    let mut ukis = root.list("/EFI/Linux", MAX_ENTRIES).unwrap_or_default();
    ukis.sort();
    for name in ukis {
        let rel = format!("/EFI/Linux/{name}");
        if let Some((osrel, cmdline)) = uki_texts(root, &rel)
            && let Some(e) = sdboot::type2(&name, number, &osrel, cmdline.as_deref())
        {
            entries.push(e);
        }
    }
    let mut names = root
        .list("/loader/entries", MAX_ENTRIES)
        .unwrap_or_default();
    names.sort();
    for name in names {
        let Ok(text) = root.read(&format!("/loader/entries/{name}"), MAX_LOADER_FILE) else {
            continue;
        };
        let Some(mut e) = sdboot::type1(&name, number, &String::from_utf8_lossy(&text)) else {
            continue;
        };
        // systemd-boot leaves out entries whose program is not there.
        let present = match &e.kind {
            Kind::Linux { linux, .. } => root.open_file(linux).is_ok(),
            Kind::Uki { path } | Kind::Efi { path } => root.open_file(path).is_ok(),
        };
        if !present {
            continue;
        }
        // A type #1 `uki` entry without options: the UKI's own command line.
        if let Kind::Uki { path } = &e.kind
            && e.options.is_empty()
            && let Some((_, Some(cmdline))) = uki_texts(root, path)
        {
            e.options = cmdline;
        }
        entries.push(e);
    }
    entries
}

/// systemd-boot's EFI variables on this machine (which are the ones the
/// disk's systemd-boot would read here).
fn loader_variables() -> sdboot::Variables {
    if !sys::is_uefi() {
        return sdboot::Variables::default();
    }
    drivers::Drivers::open().load(&["efivarfs".to_string()]);
    if let Err(e) = sys::mount_efivars() {
        log::warn!("mounting efivarfs to read systemd-boot's variables: {e}");
        return sdboot::Variables::default();
    }
    let read = |name: &str| {
        sys::efivar_read(&format!("{name}-{LOADER_GUID}"))
            .ok()
            .flatten()
            .and_then(|d| sdboot::efi_string(&d))
    };
    sdboot::Variables {
        one_shot: read("LoaderEntryOneShot"),
        default: read("LoaderEntryDefault"),
        last_booted: read("LoaderEntryLastBooted"),
    }
}

/// The entry systemd-boot would start, when the ESP's loader is systemd-boot;
/// `None` when it is not.
fn systemd_boot(disk: &disks::DiskInfo, layout: &Layout) -> Option<Found> {
    let esp = layout
        .partitions
        .iter()
        .find(|p| p.type_guid == gpt::ESP_TYPE)?;
    let (mut entries, default) = on_partition(disk, esp, |root, device| {
        // The firmware's default loader, or the one shim starts from beside it.
        let ours = is_systemd_boot(root, "/EFI/BOOT/BOOTX64.EFI")
            || is_systemd_boot(root, "/EFI/BOOT/grubx64.efi")
            || (!root.exists("/EFI/BOOT/BOOTX64.EFI")
                && is_systemd_boot(root, "/EFI/systemd/systemd-bootx64.efi"));
        if !ours {
            return None;
        }
        log::info!("the ESP ({device}) boots systemd-boot");
        let default = root
            .read("/loader/loader.conf", MAX_LOADER_FILE)
            .ok()
            .and_then(|t| sdboot::loader_conf_default(&String::from_utf8_lossy(&t)));
        Some((entries_on(root, esp.number), default))
    })??;
    if let Some(xbootldr) = layout.partitions.iter().find(|p| p.type_guid == XBOOTLDR) {
        entries.extend(
            on_partition(disk, xbootldr, |root, _| entries_on(root, xbootldr.number))
                .unwrap_or_default(),
        );
    }
    let vars = loader_variables();
    let Some((i, by)) = sdboot::choose(&mut entries, default.as_deref(), &vars) else {
        return Some(Found::Cannot(
            "systemd-boot on the ESP has no entry to start".into(),
        ));
    };
    let entry = &entries[i];
    let by = match by {
        ChosenBy::OneShot => {
            // systemd-boot forgets a one-shot choice once it has read it.
            if let Err(e) = sys::efivar_delete(&format!("LoaderEntryOneShot-{LOADER_GUID}")) {
                log::warn!("clearing LoaderEntryOneShot: {e}");
            }
            "its one-shot entry (LoaderEntryOneShot)"
        }
        ChosenBy::DefaultVariable => "its default entry (LoaderEntryDefault)",
        ChosenBy::LoaderConf => "loader.conf's default",
        ChosenBy::First => "the first in its menu",
    };
    log::info!(
        "systemd-boot would start {} ({by}, {} entries): {}",
        printable(&entry.id),
        entries.len(),
        printable(&entry.options)
    );
    let payload = match &entry.kind {
        Kind::Linux { linux, initrds } => Payload::Files {
            kernel: linux.clone(),
            initrds: initrds.clone(),
        },
        Kind::Uki { path } => Payload::Uki { path: path.clone() },
        Kind::Efi { path } => {
            return Some(Found::Cannot(format!(
                "systemd-boot's entry {} starts the EFI program {}, which kexec cannot start",
                printable(&entry.id),
                printable(path)
            )));
        }
    };
    Some(Found::Start(Start {
        partition: entry.partition,
        payload,
        cmdline: entry.options.clone(),
    }))
}

/// Configuration files boot loaders read, by kind, where installed OSes keep
/// them (on the root or boot file system, or the ESP).
type LoaderParser = fn(&str) -> Option<BootEntry>;
const LOADER_FILES: &[(&str, LoaderParser)] = &[
    ("/boot/grub/grub.cfg", bootcfg::grub),
    ("/grub/grub.cfg", bootcfg::grub),
    ("/syslinux/syslinux.cfg", bootcfg::syslinux),
    ("/boot/syslinux/syslinux.cfg", bootcfg::syslinux),
    ("/syslinux.cfg", bootcfg::syslinux),
    ("/extlinux/extlinux.conf", bootcfg::syslinux),
    ("/boot/extlinux/extlinux.conf", bootcfg::syslinux),
    ("/EFI/BOOT/syslinux.cfg", bootcfg::syslinux),
];
const BLS_DIRS: &[&str] = &["/loader/entries", "/boot/loader/entries"];

/// The entry of a BLS, GRUB or SYSLINUX configuration on one of `layout`'s
/// partitions. The kernel and initrd must be on the same file system as the
/// configuration that names them.
fn classic(disk: &disks::DiskInfo, layout: &Layout) -> Option<Start> {
    layout
        .partitions
        .iter()
        .filter(|p| !statepart::is_state_partition(p))
        .find_map(|p| {
            on_partition(disk, p, |root, device| classic_on(root, device, p.number)).flatten()
        })
}

fn classic_on(root: &sys::Root, device: &str, number: u32) -> Option<Start> {
    let read = |rel: &str| {
        root.read(rel, MAX_LOADER_FILE)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let mut candidates: Vec<(String, BootEntry)> = Vec::new();
    for dir in BLS_DIRS {
        let mut names = root.list(dir, MAX_ENTRIES).unwrap_or_default();
        // The highest version sorts last; that is the default.
        names.sort();
        if let Some(entry) = names
            .iter()
            .rev()
            .filter(|n| n.ends_with(".conf"))
            .find_map(|n| read(&format!("{dir}/{n}")).and_then(|t| bootcfg::bls(&t)))
        {
            candidates.push((format!("{dir}/"), entry));
        }
    }
    for (file, parse) in LOADER_FILES {
        if let Some(entry) = read(file).and_then(|t| parse(&t)) {
            candidates.push((file.to_string(), entry));
        }
    }
    candidates
        .into_iter()
        .find(|(_, e)| root.open_file(&e.kernel).is_ok())
        .map(|(file, e)| {
            log::info!(
                "boot entry from {file} on {device}: {} {}",
                printable(&e.kernel),
                printable(&e.options)
            );
            Start {
                partition: number,
                payload: Payload::Files {
                    kernel: e.kernel,
                    initrds: e.initrds,
                },
                cmdline: e.options,
            }
        })
}
