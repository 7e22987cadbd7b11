//! Switching boot between the previous OS disk and the upgraded one, per firmware,
//! and undoing it. Used by the deploy environment (upgrade, rollback, redeploy)
//! and by the installed OS (commit, `imprint rollback`).
//!
//! BIOS: firmware such as SeaBIOS boots only the first disk, the *front* disk,
//! so clearing an old disk's signature would not reach another. The front disk's
//! boot code is either its own (it boots its own OS) or a stub
//! (`boot/chainload.S`) that boots the disk with a given GPT disk GUID; there is
//! at most one stub, always on the front disk, and its original first sector is
//! kept in the front disk's state record. The front disk is the one carrying the
//! stub, else the first disk with a state partition in the kernel's order (BIOS
//! drive 0x80 on the machines imprint has met). An upgrade points the front disk
//! at the new disk (nothing to write when the new disk is the front disk); a
//! rollback points it back at the upgrade's previous disk, one step, never
//! further; a redeployed disk, which gets a fresh GUID, keeps the stub aimed at it.
//!
//! UEFI: a `Boot####` entry for the new disk's ESP loader and `BootNext` pointing
//! at it: a one-time trial boot. `BootOrder` changes only when the new OS commits,
//! so a new OS that never commits falls back to the old order on the next reset.

use crate::format::gpt::{ESP_TYPE, Guid, Layout};
use crate::format::state::Mode;
use crate::format::{efi, mbr};
use crate::statepart::StateDisk;
use crate::sys;
use anyhow::{Context, Result, anyhow, bail};
use std::os::unix::fs::FileExt;

/// The GUID a disk's boot code chains to, if its first sector is the stub.
pub fn chain_target(disk: &StateDisk) -> Result<Option<Guid>> {
    let sector = first_sector(disk)?;
    Ok(mbr::chain_target(&sector))
}

fn first_sector(disk: &StateDisk) -> Result<[u8; 512]> {
    let file =
        std::fs::File::open(&disk.device).with_context(|| format!("opening {}", disk.device))?;
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, 0)
        .with_context(|| format!("reading the boot record of {}", disk.device))?;
    Ok(sector)
}

/// The disk the firmware boots: the one carrying the stub, else the first.
fn front(disks: &[StateDisk]) -> Result<Option<&StateDisk>> {
    for d in disks {
        if chain_target(d)?.is_some() {
            return Ok(Some(d));
        }
    }
    Ok(disks.first())
}

fn by_guid(disks: &[StateDisk], guid: Guid) -> Option<&StateDisk> {
    disks.iter().find(|d| d.layout.disk_guid == guid)
}

/// Makes the front disk boot the disk with GPT disk GUID `target`: its own boot
/// code when `target` is the front disk itself, else the stub aimed at `target`
/// (the front disk's own first sector saved in its record first, once).
fn aim(front: &StateDisk, target: Guid) -> Result<String> {
    let sector = first_sector(front)?;
    let (mut record, _) = front.read_record()?;
    let own = match (&record.saved_boot_record, mbr::chain_target(&sector)) {
        (Some(saved), _) => <[u8; 512]>::try_from(saved.as_slice())
            .map_err(|_| anyhow!("the boot record saved on {} is damaged", front.device))?,
        (None, None) => sector,
        (None, Some(_)) => bail!(
            "{} carries a chain stub but its own boot record is not saved; restore it by redeploying the disk",
            front.device
        ),
    };
    if own[510..512] != [0x55, 0xAA] {
        bail!("{} has no boot signature to switch away from", front.device);
    }
    let file = front.open_rw()?;
    if target == front.layout.disk_guid {
        file.write_all_at(&own, 0)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("restoring the boot record of {}", front.device))?;
        if record.saved_boot_record.take().is_some() {
            front.write_record(&record)?;
        }
        return Ok(format!("{} boots its own OS", front.device));
    }
    if record.saved_boot_record.is_none() {
        record.saved_boot_record = Some(own.to_vec());
        front.write_record(&record)?;
    }
    // Where the stub falls back to when no disk has the target GUID.
    let rescue = front.rescue_offset();
    file.write_all_at(&own, rescue)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the rescue boot sector of {}", front.device))?;
    file.write_all_at(&mbr::chain_sector(&own, target, rescue / 512), 0)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the chain-boot stub to {}", front.device))?;
    Ok(format!(
        "{} boots the disk with GUID {target}",
        front.device
    ))
}

/// BIOS upgrade from `previous` to the disk with GUID `new_disk`: the front disk
/// boots the new disk next. Returns what was done.
pub fn bios_switch(disks: &[StateDisk], previous: &StateDisk, new_disk: Guid) -> Result<String> {
    let front = front(disks)?.unwrap_or(previous);
    if front.layout.disk_guid == new_disk && chain_target(front)?.is_none() {
        return Ok(format!(
            "{} is the disk the firmware boots: nothing to switch",
            front.device
        ));
    }
    aim(front, new_disk)
}

/// BIOS, after a disk was deployed again (and got a fresh GUID): a stub that
/// booted it keeps booting it. Returns what was done, if anything.
pub fn bios_rechain(disks: &[StateDisk], old: Guid, new: Guid) -> Result<Option<String>> {
    for d in disks {
        if chain_target(d)? == Some(old) {
            return aim(d, new).map(Some);
        }
    }
    Ok(None)
}

/// UEFI: a boot entry for the ESP of `layout` (reused if one exists) and BootNext
/// set to it. Returns the entry number.
pub fn uefi_trial_boot(layout: &Layout, description: &str) -> Result<u16> {
    sys::mount_efivars().context("mounting efivarfs")?;
    let number = esp_boot_entry(layout, description)?;
    sys::efivar_write(
        &format!("BootNext-{}", efi::GLOBAL_GUID),
        &number.to_le_bytes(),
    )
    .context("writing EFI variable BootNext")?;
    Ok(number)
}

fn used_boot_numbers() -> Result<Vec<u16>> {
    Ok(sys::efivar_names()
        .context("listing EFI variables")?
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("Boot")?;
            let (hex, guid) = rest.split_once('-')?;
            (hex.len() == 4 && guid == efi::GLOBAL_GUID)
                .then(|| u16::from_str_radix(hex, 16).ok())
                .flatten()
        })
        .collect())
}

fn boot_entry_for(partition: Guid) -> Result<Option<u16>> {
    for n in used_boot_numbers()? {
        if let Some(option) = sys::efivar_read(&efi::boot_var(n))?
            && efi::option_partition(&option) == Some(partition)
        {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Whether Boot`n` boots from the network.
fn is_network_entry(n: u16) -> bool {
    sys::efivar_read(&efi::boot_var(n))
        .ok()
        .flatten()
        .is_some_and(|o| efi::option_is_network(&o))
}

fn boot_order() -> Result<Vec<u16>> {
    Ok(
        sys::efivar_read(&format!("BootOrder-{}", efi::GLOBAL_GUID))?
            .map(|d| efi::parse_order(&d))
            .unwrap_or_default(),
    )
}

/// Writes BootOrder as `new`, if that differs from `old`.
fn set_boot_order(old: &[u16], new: &[u16]) -> Result<()> {
    if new != old {
        sys::efivar_write(
            &format!("BootOrder-{}", efi::GLOBAL_GUID),
            &efi::encode_order(new),
        )
        .context("writing EFI variable BootOrder")?;
    }
    Ok(())
}

/// The boot entry for the ESP of the disk with partition table `layout`: the
/// one there is, else a new one for its default loader.
fn esp_boot_entry(layout: &Layout, description: &str) -> Result<u16> {
    let esp = layout
        .partitions
        .iter()
        .find(|p| p.type_guid == ESP_TYPE)
        .ok_or_else(|| anyhow!("the disk has no EFI system partition to boot"))?;
    if let Some(n) = boot_entry_for(esp.unique_guid)? {
        return Ok(n);
    }
    let n =
        efi::free_number(&used_boot_numbers()?).ok_or_else(|| anyhow!("no free Boot#### entry"))?;
    sys::efivar_write(
        &efi::boot_var(n),
        &efi::load_option(description, esp, efi::DEFAULT_LOADER),
    )
    .with_context(|| format!("writing EFI variable Boot{n:04X}"))?;
    Ok(n)
}

fn boot_current() -> Result<Option<u16>> {
    Ok(
        sys::efivar_read(&format!("BootCurrent-{}", efi::GLOBAL_GUID))?
            .and_then(|c| Some(u16::from_le_bytes(c.get(..2)?.try_into().ok()?))),
    )
}

/// UEFI, after a deploy this machine network-booted for, or booted a medium
/// (`from_medium`) for: the disk's ESP loader gets a boot entry, right after
/// the entry this boot came through, so a network boot that hands over (iPXE's
/// `exit`, or one that fails) or a medium pulled out goes on to the disk, and
/// the network or medium stays first. Nothing changes otherwise (a RAM-disk
/// boot). Returns the entry.
pub fn uefi_disk_after_current(
    layout: &Layout,
    description: &str,
    from_medium: bool,
) -> Result<Option<u16>> {
    sys::mount_efivars().context("mounting efivarfs")?;
    let Some(current) = boot_current()? else {
        return Ok(None);
    };
    if !from_medium && !is_network_entry(current) {
        return Ok(None);
    }
    let number = esp_boot_entry(layout, description)?;
    let order = boot_order()?;
    set_boot_order(&order, &efi::right_after(&order, number, current))?;
    Ok(Some(number))
}

/// UEFI commit: this OS's boot entry goes first in BootOrder, after the
/// network entries that lead it (a network-first machine stays one). That is
/// the entry this boot came through; after a kexec (BootCurrent names how the
/// deploy environment was booted, not this OS), the entry of this disk's
/// (`layout`) ESP, made if missing.
pub fn uefi_commit(layout: &Layout, by_kexec: bool) -> Result<Option<u16>> {
    sys::mount_efivars().context("mounting efivarfs")?;
    let entry = if by_kexec {
        esp_boot_entry(layout, "imprint installed OS")?
    } else {
        let Some(current) = boot_current()? else {
            return Ok(None);
        };
        current
    };
    let order = boot_order()?;
    set_boot_order(
        &order,
        &efi::first_after_network(&order, entry, is_network_entry),
    )?;
    Ok(Some(entry))
}

/// UEFI: cancels a trial boot of the disk with partition table `layout` that has
/// not happened yet (BootNext still names an entry for its ESP). Returns the
/// entry it named.
fn uefi_cancel_trial(layout: &Layout) -> Result<Option<u16>> {
    sys::mount_efivars().context("mounting efivarfs")?;
    let name = format!("BootNext-{}", efi::GLOBAL_GUID);
    let Some(next) = sys::efivar_read(&name)? else {
        return Ok(None);
    };
    let Ok(next) = <[u8; 2]>::try_from(next.as_slice()) else {
        return Ok(None);
    };
    let next = u16::from_le_bytes(next);
    let Some(option) = sys::efivar_read(&efi::boot_var(next))? else {
        return Ok(None);
    };
    let ours = efi::option_partition(&option).is_some_and(|guid| {
        layout
            .partitions
            .iter()
            .any(|p| p.type_guid == ESP_TYPE && p.unique_guid == guid)
    });
    if !ours {
        return Ok(None);
    }
    sys::efivar_delete(&name).context("deleting EFI variable BootNext")?;
    Ok(Some(next))
}

/// Rolls back the upgrades that never committed: under BIOS the front disk boots
/// each one's previous disk again (one step: an earlier, committed upgrade
/// stays); under UEFI a trial boot still pending (BootNext) is cancelled, and
/// BootOrder, which only a commit changes, already leads to the previous OS.
/// Each is marked rolled back. Returns what was done, for the report.
pub fn rollback(disks: &[StateDisk]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for d in disks {
        let (record, _) = d.read_record()?;
        if record.mode != Mode::Upgrade {
            continue;
        }
        let previous = record
            .previous
            .as_ref()
            .and_then(|p| by_guid(disks, p.disk_guid));
        if let (Some(front), Some(previous)) = (front(disks)?, previous) {
            let aimed_here = match chain_target(front)? {
                Some(target) => target == d.layout.disk_guid,
                None => front.layout.disk_guid == d.layout.disk_guid,
            };
            if aimed_here {
                let what = aim(front, previous.layout.disk_guid)?;
                done.push(if front.device == previous.device {
                    format!("restored the boot record of {}", front.device)
                } else {
                    what
                });
            }
        }
        if sys::is_uefi()
            && let Some(n) = uefi_cancel_trial(&d.layout)?
        {
            done.push(format!(
                "cancelled the trial boot of {} (BootNext was Boot{n:04X})",
                d.device
            ));
        }
        d.mark_rolled_back()?;
        done.push(format!(
            "marked the upgrade to {} {} on {} rolled back",
            record.image_name, record.image_digest, d.device
        ));
    }
    if done.is_empty() {
        bail!("nothing to roll back: no uncommitted upgrade on any disk");
    }
    Ok(done)
}
