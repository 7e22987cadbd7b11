//! Switching boot between the previous OS disk and the upgraded one, per firmware,
//! and undoing it. Used by the deploy environment (upgrade, rollback) and by the
//! installed OS (commit, `imprint rollback`).
//!
//! BIOS: the previous disk's first sector is saved in its own state record, then
//! its boot code is replaced by a stub that boots the disk with the new disk's GUID
//! (firmware such as SeaBIOS boots only the first disk, so clearing the old disk's
//! signature would not reach the new one). Writing the saved sector back is the
//! rollback.
//!
//! UEFI: a `Boot####` entry for the new disk's ESP loader and `BootNext` pointing
//! at it: a one-time trial boot. `BootOrder` changes only when the new OS commits,
//! so a new OS that never commits falls back to the old order on the next reset.

use crate::format::efi;
use crate::format::gpt::{ESP_TYPE, Guid, Layout};
use crate::format::state::Mode;
use crate::statepart::StateDisk;
use crate::sys;
use anyhow::{Context, Result, anyhow, bail};
use std::os::unix::fs::FileExt;

/// BIOS: makes booting `previous` continue into the disk whose GPT disk GUID is
/// `new_disk`, after saving its first sector in its state record (once: a
/// repeated upgrade keeps the original).
pub fn bios_pass_over(previous: &StateDisk, new_disk: Guid) -> Result<()> {
    let file = previous.open_rw()?;
    let mut sector = vec![0u8; 512];
    file.read_exact_at(&mut sector, 0)
        .with_context(|| format!("reading the boot record of {}", previous.device))?;
    let (mut record, _) = previous.read_record()?;
    if record.saved_boot_record.is_none() {
        if sector[510..512] != [0x55, 0xAA] {
            bail!(
                "{} has no boot signature to switch away from",
                previous.device
            );
        }
        record.saved_boot_record = Some(sector.clone());
        previous.write_record(&record)?;
    }
    let original: [u8; 512] = record
        .saved_boot_record
        .as_deref()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| anyhow!("the boot record saved on {} is damaged", previous.device))?;
    let chained = crate::format::mbr::chain_sector(&original, new_disk);
    file.write_all_at(&chained, 0)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the chain-boot stub to {}", previous.device))?;
    Ok(())
}

/// BIOS rollback: writes the saved first sector back. Returns false when the
/// disk has none saved.
pub fn bios_restore(previous: &StateDisk) -> Result<bool> {
    let (mut record, _) = previous.read_record()?;
    let Some(saved) = record.saved_boot_record.clone() else {
        return Ok(false);
    };
    if saved.len() != 512 || saved[510..512] != [0x55, 0xAA] {
        bail!("the boot record saved on {} is damaged", previous.device);
    }
    let file = previous.open_rw()?;
    file.write_all_at(&saved, 0)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("restoring the boot record of {}", previous.device))?;
    record.saved_boot_record = None;
    previous.write_record(&record)?;
    Ok(true)
}

/// UEFI: a boot entry for the ESP of `layout` (reused if one exists) and BootNext
/// set to it. Returns the entry number.
pub fn uefi_trial_boot(layout: &Layout, description: &str) -> Result<u16> {
    sys::mount_efivars().context("mounting efivarfs")?;
    let esp = layout
        .partitions
        .iter()
        .find(|p| p.type_guid == ESP_TYPE)
        .ok_or_else(|| anyhow!("the new disk has no EFI system partition to boot"))?;
    let number = boot_entry_for(esp.unique_guid)?.map_or_else(
        || -> Result<u16> {
            let used = used_boot_numbers()?;
            let n = efi::free_number(&used).ok_or_else(|| anyhow!("no free Boot#### entry"))?;
            sys::efivar_write(
                &efi::boot_var(n),
                &efi::load_option(description, esp, efi::DEFAULT_LOADER),
            )
            .with_context(|| format!("writing EFI variable Boot{n:04X}"))?;
            Ok(n)
        },
        Ok,
    )?;
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

/// UEFI commit: the entry this boot came through goes first in BootOrder.
pub fn uefi_commit() -> Result<Option<u16>> {
    sys::mount_efivars().context("mounting efivarfs")?;
    let Some(current) = sys::efivar_read(&format!("BootCurrent-{}", efi::GLOBAL_GUID))? else {
        return Ok(None);
    };
    if current.len() < 2 {
        return Ok(None);
    }
    let current = u16::from_le_bytes([current[0], current[1]]);
    let order = sys::efivar_read(&format!("BootOrder-{}", efi::GLOBAL_GUID))?
        .map(|d| efi::parse_order(&d))
        .unwrap_or_default();
    let new = efi::promote(&order, current);
    if new != order {
        sys::efivar_write(
            &format!("BootOrder-{}", efi::GLOBAL_GUID),
            &efi::encode_order(&new),
        )
        .context("writing EFI variable BootOrder")?;
    }
    Ok(Some(current))
}

/// Rolls an upgrade back: writes saved boot records back (BIOS) and marks every
/// upgraded disk's record rolled-back. Returns what was done, for the report.
pub fn rollback(disks: &[StateDisk]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for d in disks {
        if bios_restore(d)? {
            done.push(format!("restored the boot record of {}", d.device));
        }
    }
    for d in disks {
        let (record, _) = d.read_record()?;
        if record.mode == Mode::Upgrade {
            d.mark_rolled_back()?;
            done.push(format!(
                "marked the upgrade to {} {} on {} rolled back",
                record.image_name, record.image_digest, d.device
            ));
        }
    }
    if done.is_empty() {
        bail!("nothing to roll back: no saved boot record and no uncommitted upgrade on any disk");
    }
    Ok(done)
}
