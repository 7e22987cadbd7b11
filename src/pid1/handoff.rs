//! Handing the machine to the installed OS: a firmware reboot, a power off, or
//! kexec straight into the installed kernel.

use super::bootentry::{self, Found, Payload, Start};
use super::console::STATUS_WAIT;
use super::{Never, disks, drivers, status, uptime};
use crate::bootswitch;
use crate::format::cmdline::{Config, Handoff};
use crate::format::dps::{self, Root};
use crate::format::gpt::Layout;
use crate::format::http::printable;
use crate::format::manifest::BootFacts;
use crate::format::pe;
use crate::format::state::HandoffNote;
use crate::format::status::Event;
use crate::statepart::StateDisk;
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
    let mut not_kexec = None;
    let mut what = what;
    if config.handoff == Handoff::Kexec {
        not_kexec = Some(kexec_installed(
            disk,
            layout,
            boot,
            (false, true),
            |kernel| format!("handing off (kexec {kernel}) at {:.2} s", uptime()),
        ));
        what = "reboot";
        boot_disk_next(disk, layout);
    }
    log::info!("handing off ({what}) at {:.2} s", uptime());
    announce(what, false, not_kexec.as_deref());
    let action = match config.handoff {
        Handoff::Poweroff => PowerAction::Poweroff,
        _ => PowerAction::Reboot,
    };
    let e = sys::power(action);
    Err(anyhow!("{what} failed: {e}"))
}

/// The status events of a hand-off (`unchanged`: nothing was written), sent
/// before the machine goes; `not_kexec`: why it is not the kexec asked for.
fn announce(handoff: &str, unchanged: bool, not_kexec: Option<&str>) {
    let uptime = uptime();
    status().send(Event::Handoff {
        uptime,
        handoff: handoff.into(),
        not_kexec: not_kexec.map(str::to_string),
        unchanged,
    });
    status().send(Event::Complete {
        uptime: Some(uptime),
        unchanged,
        committed: None,
        image: None,
        timings: None,
    });
    status().flush(STATUS_WAIT);
    sys::sync_all();
}

/// Starts the installed OS by kexec: the manifest's boot facts, else what its
/// own boot loader would start, with the root named where only a boot loader
/// would have told the OS where it is. Returns only when that could not be
/// done, with why (said on the console too); `line` is what the console says
/// when it goes.
fn kexec_installed(
    disk: &disks::DiskInfo,
    layout: &Layout,
    boot: Option<&BootFacts>,
    (unchanged, note): (bool, bool),
    line: impl Fn(&str) -> String,
) -> String {
    let why = match kexec_start(disk, layout, boot) {
        Ok(start) => {
            if note {
                note_in_record(disk, "kexec", "");
            }
            log::info!("{}", line(start.kernel()));
            announce("kexec", unchanged, None);
            let e = sys::kexec_reboot();
            format!("kexec failed: {e}")
        }
        Err(why) => why,
    };
    log::warn!(
        "not starting the installed OS by kexec: {why}; rebooting through the firmware into {} instead",
        disk.dev_path()
    );
    if note {
        note_in_record(disk, "reboot", &why);
    }
    why
}

/// Keeps how the OS was handed over (`kexec`, or `reboot` and why not kexec)
/// in the disk's state record: `imprint status` shows it, and the first boot
/// after a kexec knows that the firmware did not start it. A note that says
/// the same already is left as it is (a deploy-once boot writes nothing it
/// need not).
fn note_in_record(disk: &disks::DiskInfo, done: &str, why: &str) {
    let Some(state) = StateDisk::open(&disk.dev_path()) else {
        return;
    };
    let noted = state
        .read_record()
        .is_ok_and(|(r, _)| r.handoff.is_some_and(|n| n.done == done && n.why == why));
    if noted {
        return;
    }
    let note = HandoffNote {
        done: done.into(),
        why: why.to_string(),
        at: sys::unix_ms() / 1000,
    };
    match state.update_record(|r| r.handoff = Some(note)) {
        Ok(_) => sys::sync_all(),
        Err(e) => log::warn!(
            "noting the hand-off in the state record: {}",
            crate::error_text(&e)
        ),
    }
}

/// Finds what to start and loads it; the reason when it cannot be done.
fn kexec_start(
    disk: &disks::DiskInfo,
    layout: &Layout,
    boot: Option<&BootFacts>,
) -> Result<Start, String> {
    let mut start = match boot {
        Some(facts) => Start::from_facts(facts),
        None => match bootentry::find(disk, layout) {
            Found::Start(start) => start,
            Found::Cannot(why) => return Err(why),
            Found::Nothing => {
                return Err(
                    "the image has no boot facts (image add --boot-partition --kernel) and the disk no boot loader configuration imprint reads".into(),
                );
            }
        },
    };
    match dps::root_for_kexec(&start.cmdline, layout) {
        Root::Named => {}
        Root::Added { cmdline, partuuid } => {
            log::info!(
                "{} names no root=; the root partition by its type (Discoverable Partitions) is {partuuid}, which its boot loader would have let systemd find: starting it with root=PARTUUID=",
                printable(start.kernel())
            );
            start.cmdline = cmdline;
        }
        Root::Unknown(why) => return Err(format!("{}: {why}", printable(start.kernel()))),
    }
    load(disk, &start).map_err(|e| {
        format!(
            "loading {} for kexec: {}",
            printable(start.kernel()),
            crate::error_text(&e)
        )
    })?;
    Ok(start)
}

/// Where a UKI's kernel and initrds are unpacked for kexec_file_load, which
/// takes files (the initramfs's own file system is RAM).
const UNPACKED: &str = "/run/imprint/kexec";
/// Largest kernel and initrd (all of them together) loaded.
const MAX_KERNEL: u64 = 256 << 20;
const MAX_INITRD: u64 = 2 << 30;

/// Copies `len` bytes at `offset` of `from` to the end of `to`.
fn append(to: &mut std::fs::File, from: &mut std::fs::File, offset: u64, len: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    from.seek(SeekFrom::Start(offset))?;
    let copied = std::io::copy(&mut from.take(len), to)?;
    if copied != len {
        return Err(anyhow!("it ends {} bytes early", len - copied));
    }
    Ok(())
}

/// Mounts the payload's partition read-only and loads its kernel, initrd and
/// command line for kexec.
fn load(disk: &disks::DiskInfo, start: &Start) -> Result<()> {
    let (device, mounted) = bootentry::mount_partition(disk, start.partition, bootentry::MNT)?;
    let result = (|| {
        let root = sys::Root::open(std::path::Path::new(bootentry::MNT))?;
        let open = |p: &str| {
            root.open_file(p)
                .with_context(|| format!("opening {p} on {device}"))
        };
        std::fs::create_dir_all(UNPACKED)?;
        let unpacked = |name: &str| {
            std::fs::File::create(format!("{UNPACKED}/{name}"))
                .with_context(|| format!("creating {UNPACKED}/{name}"))
        };
        // kexec_file_load refuses a file still open for writing (ETXTBSY).
        let reopen = |name: &str, written: std::fs::File| {
            drop(written);
            std::fs::File::open(format!("{UNPACKED}/{name}"))
                .with_context(|| format!("reopening {UNPACKED}/{name}"))
        };
        let (kernel, initrd) = match &start.payload {
            Payload::Files { kernel, initrds } => {
                let kernel = open(kernel)?;
                let initrd = match initrds.as_slice() {
                    [] => None,
                    [one] => Some(open(one)?),
                    many => {
                        // Initrds are cpio archives: one after the other is one.
                        let mut all = unpacked("initrd")?;
                        let mut total = 0u64;
                        for name in many {
                            let mut f = open(name)?;
                            let len = f.metadata()?.len();
                            total += len;
                            if total > MAX_INITRD {
                                return Err(anyhow!(
                                    "the initrds are larger than {MAX_INITRD} bytes"
                                ));
                            }
                            append(&mut all, &mut f, 0, len)
                                .with_context(|| format!("copying {name}"))?;
                        }
                        Some(all)
                    }
                };
                (kernel, initrd)
            }
            Payload::Uki { path } => {
                let mut uki = open(path)?;
                let sections =
                    pe::read_sections(&mut uki).with_context(|| format!("reading {path}"))?;
                let parts = pe::Uki::from_sections(&sections).ok_or_else(|| {
                    anyhow!("{path} has no .linux section: not a unified kernel image")
                })?;
                if parts.linux.size > MAX_KERNEL {
                    return Err(anyhow!(
                        "the kernel in {path} is larger than {MAX_KERNEL} bytes"
                    ));
                }
                let mut kernel = unpacked("linux")?;
                append(&mut kernel, &mut uki, parts.linux.offset, parts.linux.size)
                    .with_context(|| format!("unpacking the kernel of {path}"))?;
                let initrd = if parts.initrds.is_empty() {
                    None
                } else {
                    let total: u64 = parts.initrds.iter().map(|s| s.size).sum();
                    if total > MAX_INITRD {
                        return Err(anyhow!(
                            "the initrd in {path} is larger than {MAX_INITRD} bytes"
                        ));
                    }
                    let mut initrd = unpacked("initrd")?;
                    for s in &parts.initrds {
                        append(&mut initrd, &mut uki, s.offset, s.size)
                            .with_context(|| format!("unpacking {} of {path}", s.name))?;
                    }
                    Some(reopen("initrd", initrd)?)
                };
                (reopen("linux", kernel)?, initrd)
            }
        };
        sys::kexec_load(&kernel, initrd.as_ref(), &start.cmdline)
            .with_context(|| format!("kexec_file_load of {}", start.kernel()))
    })();
    // kexec_file_load has its own copy now.
    let _ = std::fs::remove_dir_all(UNPACKED);
    if let Err(e) = sys::unmount(bootentry::MNT) {
        log::warn!("unmounting {device} ({mounted}): {e}");
    }
    result
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
    start_own_os(disk, layout, boot, true)
}

/// After a capture: the machine's own OS started as [`start_installed`]
/// does, with nothing noted on its disk (the source is never written).
pub(super) fn start_source(disk: &disks::DiskInfo, layout: &Layout) -> Result<Never> {
    start_own_os(disk, layout, None, false)
}

fn start_own_os(
    disk: &disks::DiskInfo,
    layout: &Layout,
    boot: Option<&BootFacts>,
    note: bool,
) -> Result<Never> {
    let not_kexec = kexec_installed(disk, layout, boot, (true, note), |kernel| {
        format!(
            "starting the installed OS by kexec of {kernel} at {:.2} s",
            uptime()
        )
    });
    boot_disk_next(disk, layout);
    log::info!("handing off (reboot) at {:.2} s", uptime());
    announce("reboot", true, Some(&not_kexec));
    let e = sys::power(PowerAction::Reboot);
    Err(anyhow!("reboot failed: {e}"))
}

/// Before a reboot that stands in for a kexec: under UEFI, the disk boots
/// once (`BootNext`, its ESP's entry, made if missing), not the network.
fn boot_disk_next(disk: &disks::DiskInfo, layout: &Layout) {
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
}
