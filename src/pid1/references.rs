//! References to file systems and partitions by identity in an installed OS
//! (its fstab, crypttab, kernel command line, boot loader configurations on
//! its root, ESP or separate `/boot`), rewritten when the deploy renewed those
//! identities.

use super::disks::DiskInfo;
use super::identity::{self, Rename};
use super::osroot::{Mounted, content_of};
use crate::format::dps::{LINUX_DATA, XBOOTLDR};
use crate::format::glob::glob_match;
use crate::format::gpt::Partition;
use crate::sys::{self, Root};
use anyhow::{Context, Result};
use std::path::Path;

/// Files in an OS's root that name file systems (or partitions) by identity; `*`
/// matches within one path component.
pub(super) const ROOT_REFERENCES: &[&str] = &[
    "etc/fstab",
    "etc/crypttab",
    "etc/kernel/cmdline",
    "etc/default/grub",
    "etc/initramfs-tools/conf.d/resume",
    "boot/grub/grub.cfg",
    "boot/grub2/grub.cfg",
    "boot/loader/entries/*.conf",
    "boot/syslinux/syslinux.cfg",
    "boot/extlinux/extlinux.conf",
];
/// The same files on a separate `/boot` file system or on the ESP.
pub(super) const BOOT_REFERENCES: &[&str] = &[
    "grub/grub.cfg",
    "grub2/grub.cfg",
    "loader/entries/*.conf",
    "EFI/*/grub.cfg",
    "syslinux.cfg",
    "syslinux/syslinux.cfg",
    "extlinux/extlinux.conf",
    "EFI/BOOT/syslinux.cfg",
];
/// Largest reference file rewritten (GRUB configurations run to some 10 KiB).
pub(super) const REFERENCE_LIMIT: u64 = 4 << 20;
/// Most names a pattern's directory is read for.
pub(super) const LIST_LIMIT: usize = 10_000;

/// The files in `root` that `pattern` names.
pub(super) fn expand(root: &Root, pattern: &str) -> Vec<String> {
    let mut found = vec![String::new()];
    for part in pattern.split('/') {
        let mut next = Vec::new();
        for dir in &found {
            let join = |name: &str| {
                if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                }
            };
            if part.contains('*') {
                let listed = root.list(if dir.is_empty() { "/" } else { dir }, LIST_LIMIT);
                for name in listed.unwrap_or_default() {
                    if glob_match(part.as_bytes(), name.as_bytes()) {
                        next.push(join(&name));
                    }
                }
            } else {
                next.push(join(part));
            }
        }
        found = next;
    }
    found.retain(|rel| root.exists(rel));
    found
}

/// Rewrites references to renamed file systems in the files `patterns` name.
/// Returns the files rewritten.
pub(super) fn rewrite_references(
    root: &Root,
    patterns: &[&str],
    renames: &[Rename],
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for rel in patterns.iter().flat_map(|p| expand(root, p)) {
        let bytes = match root.read(&rel, REFERENCE_LIMIT + 1) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("/{rel}: {e}; left as it is");
                continue;
            }
        };
        if bytes.len() as u64 > REFERENCE_LIMIT {
            log::warn!("/{rel} is larger than {REFERENCE_LIMIT} bytes; left as it is");
            continue;
        }
        let Ok(text) = String::from_utf8(bytes) else {
            log::warn!("/{rel} is not text; left as it is");
            continue;
        };
        let new = identity::rewrite(&text, renames);
        if new != text {
            let (dir, name) = rel.rsplit_once('/').unwrap_or(("", &rel));
            let mode = root.mode(&rel).unwrap_or(0o644);
            root.write_file(dir, name, new.as_bytes(), mode)
                .with_context(|| format!("rewriting /{rel}"))?;
            done.push(format!("/{rel}"));
        }
    }
    Ok(done)
}

/// A partition that may be a separate `/boot`.
pub(super) fn is_boot_candidate(p: &Partition) -> bool {
    p.type_guid == XBOOTLDR || p.type_guid == LINUX_DATA
}

pub(super) const BOOT_MOUNT_POINT: &str = "/run/imprint/boot";

/// The boot loader's configuration on the ESP or a separate `/boot` names the
/// root by identity too (Debian's `\EFI\debian\grub.cfg`: `search.fs_uuid`;
/// `/boot/grub/grub.cfg`: `root=UUID=`). Returns the files rewritten.
pub(super) fn rewrite_boot_partition(
    disk: &DiskInfo,
    number: u32,
    esp: bool,
    renames: &[Rename],
) -> Result<Vec<String>> {
    let device = disk
        .wait_for_partition(number)
        .map_err(anyhow::Error::msg)?;
    let fstype = if esp {
        "vfat"
    } else if content_of(&device) == Some("ext2/3/4") {
        "ext4"
    } else {
        return Ok(Vec::new());
    };
    let _ = std::fs::create_dir_all(BOOT_MOUNT_POINT);
    sys::mount(&device, BOOT_MOUNT_POINT, fstype, false)
        .with_context(|| format!("mounting {device}"))?;
    let mounted = Mounted {
        device: device.clone(),
        number,
        at: BOOT_MOUNT_POINT,
    };
    let root =
        Root::open(Path::new(BOOT_MOUNT_POINT)).with_context(|| format!("opening {device}"))?;
    let files = rewrite_references(&root, BOOT_REFERENCES, renames);
    drop(root);
    sys::sync_all();
    drop(mounted);
    let label = if esp {
        "ESP:".to_string()
    } else {
        format!("partition {number}:")
    };
    Ok(files?.into_iter().map(|f| format!("{label}{f}")).collect())
}
