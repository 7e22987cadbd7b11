//! Handing the machine to the installed OS: a firmware reboot, a power off, or
//! kexec straight into the installed kernel.

use super::{Never, disks, drivers, status, uptime};
use crate::format::cmdline::{Config, Handoff};
use crate::format::manifest::BootFacts;
use crate::format::status::Phase;
use crate::sys::{self, PowerAction};
use anyhow::{Context, Result, anyhow};

pub(super) fn handoff(
    config: &Config,
    disk: &disks::DiskInfo,
    boot: Option<&BootFacts>,
) -> Result<Never> {
    let what = match config.handoff {
        Handoff::Reboot => "reboot",
        Handoff::Poweroff => "poweroff",
        Handoff::Kexec => "kexec",
    };
    if config.handoff == Handoff::Kexec {
        match boot {
            None => log::warn!(
                "imprint.handoff=kexec, but the image carries no boot facts (image add --boot-partition --kernel); rebooting through the firmware instead"
            ),
            Some(boot) => match load_installed_kernel(disk, boot) {
                Ok(()) => {
                    log::info!("handing off (kexec {}) at {:.2} s", boot.kernel, uptime());
                    status().send(
                        Phase::Handoff,
                        serde_json::json!({ "handoff": what, "uptime": uptime() }),
                    );
                    status().send(Phase::Complete, serde_json::json!({ "uptime": uptime() }));
                    let e = sys::kexec_reboot();
                    log::warn!("kexec failed: {e}; rebooting through the firmware instead");
                }
                Err(e) => log::warn!(
                    "loading the installed kernel for kexec: {}; rebooting through the firmware instead",
                    crate::error_text(&e)
                ),
            },
        }
    }
    log::info!("handing off ({what}) at {:.2} s", uptime());
    status().send(
        Phase::Handoff,
        serde_json::json!({ "handoff": what, "uptime": uptime() }),
    );
    let action = match config.handoff {
        Handoff::Poweroff => PowerAction::Poweroff,
        _ => PowerAction::Reboot,
    };
    status().send(Phase::Complete, serde_json::json!({ "uptime": uptime() }));
    let e = sys::power(action);
    Err(anyhow!("{what} failed: {e}"))
}

/// Mounts the installed OS's boot partition read-only from the freshly written
/// disk and loads its kernel, initrd and command line for kexec.
fn load_installed_kernel(disk: &disks::DiskInfo, boot: &BootFacts) -> Result<()> {
    let device = disk
        .wait_for_partition(boot.partition)
        .map_err(|e| anyhow!(e))?;
    let mnt = "/run/imprint/boot";
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
    let open = |p: &str| {
        std::fs::File::open(format!("{mnt}{p}")).with_context(|| format!("opening {p} on {device}"))
    };
    let result = (|| {
        let kernel = open(&boot.kernel)?;
        let initrd = boot.initrd.as_deref().map(open).transpose()?;
        sys::kexec_load(&kernel, initrd.as_ref(), &boot.cmdline)
            .with_context(|| format!("kexec_file_load of {}", boot.kernel))
    })();
    if let Err(e) = sys::unmount(mnt) {
        log::warn!("unmounting {device} ({mounted}): {e}");
    }
    result
}
