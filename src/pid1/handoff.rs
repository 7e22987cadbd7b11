//! Handing the machine to the installed OS: a firmware reboot, a power off, or
//! kexec straight into the installed kernel.

use super::console::STATUS_WAIT;
use super::{Never, disks, drivers, status, uptime};
use crate::bootswitch;
use crate::format::bootcfg::{self, BootEntry};
use crate::format::cmdline::{Config, Handoff};
use crate::format::gpt::Layout;
use crate::format::http::printable;
use crate::format::manifest::BootFacts;
use crate::format::status::Phase;
use crate::statepart;
use crate::sys::{self, PowerAction};
use anyhow::{Context, Result, anyhow};

pub(super) fn handoff(
    config: &Config,
    disk: &disks::DiskInfo,
    layout: &Layout,
    boot: Option<&BootFacts>,
) -> Result<Never> {
    let what = match config.handoff {
        Handoff::Reboot => "reboot",
        Handoff::Poweroff => "poweroff",
        Handoff::Kexec => "kexec",
    };
    if config.handoff == Handoff::Kexec {
        kexec_installed(disk, layout, boot, false, |kernel| {
            format!("handing off (kexec {kernel}) at {:.2} s", uptime())
        });
    }
    log::info!("handing off ({what}) at {:.2} s", uptime());
    announce(what, false);
    let action = match config.handoff {
        Handoff::Poweroff => PowerAction::Poweroff,
        _ => PowerAction::Reboot,
    };
    let e = sys::power(action);
    Err(anyhow!("{what} failed: {e}"))
}

/// The status events of a hand-off (`unchanged`: nothing was written), sent
/// before the machine goes.
fn announce(handoff: &str, unchanged: bool) {
    let mut extra = serde_json::json!({ "uptime": uptime() });
    if unchanged {
        extra["unchanged"] = true.into();
    }
    let mut with_handoff = extra.clone();
    with_handoff["handoff"] = handoff.into();
    status().send(Phase::Handoff, with_handoff);
    status().send(Phase::Complete, extra);
    status().flush(STATUS_WAIT);
    sys::sync_all();
}

/// Starts the installed OS by kexec: the manifest's boot facts, else the entry
/// its own boot loader would start. Returns only when that could not be done,
/// having said why; `line` is what the console says when it goes.
fn kexec_installed(
    disk: &disks::DiskInfo,
    layout: &Layout,
    boot: Option<&BootFacts>,
    unchanged: bool,
    line: impl Fn(&str) -> String,
) {
    let found;
    let facts = match boot {
        Some(b) => b,
        None => {
            found = find_boot_facts(disk, layout);
            match &found {
                Some(f) => f,
                None => {
                    log::warn!(
                        "no boot facts in the image (image add --boot-partition --kernel) and no boot loader configuration imprint reads on {}; rebooting through the firmware instead of kexec",
                        disk.dev_path()
                    );
                    return;
                }
            }
        }
    };
    if let Err(e) = load_installed_kernel(disk, facts) {
        log::warn!(
            "loading the installed kernel for kexec: {}; rebooting through the firmware instead",
            crate::error_text(&e)
        );
        return;
    }
    log::info!("{}", line(&facts.kernel));
    announce("kexec", unchanged);
    let e = sys::kexec_reboot();
    log::warn!("kexec failed: {e}; rebooting through the firmware instead");
}

/// Mounts partition `number` of `disk` read-only at `mnt`, as whichever file
/// system it holds; returns the device and the file system's name.
fn mount_partition(
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

const MNT: &str = "/run/imprint/boot";

/// Mounts the installed OS's boot partition read-only from the disk and loads
/// its kernel, initrd and command line for kexec. Paths resolve inside that
/// file system only (a symlink on it cannot lead out).
fn load_installed_kernel(disk: &disks::DiskInfo, boot: &BootFacts) -> Result<()> {
    let (device, mounted) = mount_partition(disk, boot.partition, MNT)?;
    let result = (|| {
        let root = sys::Root::open(std::path::Path::new(MNT))?;
        let open = |p: &str| {
            root.open_file(p)
                .with_context(|| format!("opening {p} on {device}"))
        };
        let kernel = open(&boot.kernel)?;
        let initrd = boot.initrd.as_deref().map(open).transpose()?;
        sys::kexec_load(&kernel, initrd.as_ref(), &boot.cmdline)
            .with_context(|| format!("kexec_file_load of {}", boot.kernel))
    })();
    if let Err(e) = sys::unmount(MNT) {
        log::warn!("unmounting {device} ({mounted}): {e}");
    }
    result
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
/// Largest boot loader configuration read.
const MAX_LOADER_FILE: u64 = 1 << 20;

/// The boot entry the installed OS's own boot loader would start, found in its
/// configuration on one of `layout`'s partitions, with the facts kexec needs.
/// The kernel and initrd must be on the same file system as the configuration
/// that names them.
pub(super) fn find_boot_facts(disk: &disks::DiskInfo, layout: &Layout) -> Option<BootFacts> {
    for p in &layout.partitions {
        if statepart::is_state_partition(p) {
            continue;
        }
        let Ok((device, _)) = mount_partition(disk, p.number, MNT) else {
            continue;
        };
        let found = (|| {
            let root = sys::Root::open(std::path::Path::new(MNT)).ok()?;
            let read = |rel: &str| {
                root.read(rel, MAX_LOADER_FILE)
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            let mut candidates: Vec<(String, BootEntry)> = Vec::new();
            for dir in BLS_DIRS {
                let mut names = root.list(dir, 256).unwrap_or_default();
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
                    if e.initrds.len() > 1 {
                        log::warn!(
                            "that entry names {} initrds; kexec loads the first",
                            e.initrds.len()
                        );
                    }
                    BootFacts {
                        partition: p.number,
                        kernel: e.kernel,
                        initrd: e.initrds.into_iter().next(),
                        cmdline: e.options,
                    }
                })
        })();
        if let Err(e) = sys::unmount(MNT) {
            log::warn!("unmounting {device}: {e}");
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The target already holds the image asked for: start the OS on it without
/// writing anything. By kexec of its kernel (the manifest's boot facts, or its
/// own boot loader's default entry); else, under UEFI, by a reboot that boots
/// the disk once (`BootNext`), skipping the network; else by a plain reboot.
pub(super) fn start_installed(
    disk: &disks::DiskInfo,
    layout: &Layout,
    boot: Option<&BootFacts>,
) -> Result<Never> {
    kexec_installed(disk, layout, boot, true, |kernel| {
        format!(
            "starting the installed OS by kexec of {kernel} at {:.2} s",
            uptime()
        )
    });
    if sys::is_uefi() {
        drivers::Drivers::open().load(&["efivarfs".to_string()]);
        match bootswitch::uefi_trial_boot(layout, "imprint installed OS") {
            Ok(n) => log::info!(
                "UEFI: Boot{n:04X} boots {} once (BootNext), not the network",
                disk.dev_path()
            ),
            Err(e) => log::warn!("setting BootNext to the disk: {}", crate::error_text(&e)),
        }
    } else {
        log::warn!(
            "BIOS cannot be told to skip the network for one boot: with the network first in the boot order this machine comes back here (and hands off again); give the image boot facts or a boot loader configuration imprint reads"
        );
    }
    log::info!("handing off (reboot) at {:.2} s", uptime());
    announce("reboot", true);
    let e = sys::power(PowerAction::Reboot);
    Err(anyhow!("reboot failed: {e}"))
}
