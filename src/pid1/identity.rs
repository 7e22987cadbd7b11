//! Fresh file system identities for an upgrade's new disk.
//!
//! The new OS usually comes from the same image family as the previous one, so
//! both disks carry file systems with the same UUIDs, and whatever finds a file
//! system by UUID (the kernel's `root=UUID=`, fstab, GRUB's `search --fs-uuid`)
//! may find the previous disk's. So once the new disk's data is written, and
//! before its head makes its partitions findable (firmware, GRUB and the kernel
//! see none without a protective MBR), each of its
//! file systems whose identity the previous disk also has gets a fresh one (ext4:
//! the UUID, with `metadata_csum_seed`; FAT: the volume ID; swap: its UUID), and the new OS's
//! references to the old identity are rewritten (see [`super::agent`]). The
//! previous disk is never touched, so it boots as before after a rollback. Only
//! superblocks change, so the seeded delta stays what it was.

use crate::format::ext4;
use crate::format::fat;
use crate::format::gpt::Layout;
use crate::format::swap;
use crate::statepart::{self, StateDisk, Window};
use crate::sys;
use anyhow::{Context, Result};
use std::fs::File;

/// A file system identity as text that files refer to it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Rename {
    /// Partition number on the new disk.
    pub partition: u32,
    pub old: String,
    pub new: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    Ext4([u8; 16]),
    Fat(u32),
    /// A swap area, which fstab and `resume=` name by UUID too.
    Swap([u8; 16]),
}

impl Identity {
    fn text(self) -> String {
        match self {
            Identity::Ext4(u) | Identity::Swap(u) => ext4::uuid_text(&u),
            Identity::Fat(id) => fat::volume_id_text(id),
        }
    }
}

/// The identities of the file systems on `file` (a disk with `layout`), by
/// partition number; partitions without a known file system are left out.
fn identities(file: &File, layout: &Layout) -> Vec<(u32, Identity)> {
    layout
        .partitions
        .iter()
        .filter(|p| !statepart::is_state_partition(p))
        .filter_map(|p| {
            let mut part = Window::of_partition(file, layout, p);
            if let Ok(sb) = ext4::read(&mut part) {
                return Some((p.number, Identity::Ext4(sb.uuid)));
            }
            if let Ok(u) = swap::uuid(&mut part) {
                return Some((p.number, Identity::Swap(u)));
            }
            fat::volume_id(&mut part)
                .ok()
                .map(|id| (p.number, Identity::Fat(id)))
        })
        .collect()
}

fn fresh(like: Identity) -> Result<Identity> {
    let bytes = sys::random_bytes::<16>().context("reading /dev/urandom")?;
    Ok(match like {
        Identity::Ext4(_) | Identity::Swap(_) => {
            let mut u = bytes;
            u[6] = (u[6] & 0x0f) | 0x40;
            u[8] = (u[8] & 0x3f) | 0x80;
            if matches!(like, Identity::Swap(_)) {
                Identity::Swap(u)
            } else {
                Identity::Ext4(u)
            }
        }
        Identity::Fat(_) => {
            Identity::Fat(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        }
    })
}

/// Gives every file system on the disk at `device` (partition table `layout`)
/// that shares its identity with one on `previous` a fresh identity. Returns what
/// was renamed, for rewriting the references.
pub(super) fn refresh(device: &str, layout: &Layout, previous: &StateDisk) -> Result<Vec<Rename>> {
    let old_file =
        File::open(&previous.device).with_context(|| format!("opening {}", previous.device))?;
    let theirs: Vec<Identity> = identities(&old_file, &previous.layout)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .with_context(|| format!("opening {device} for writing"))?;
    let mut renames = Vec::new();
    for (number, id) in identities(&file, layout) {
        if !theirs.contains(&id) {
            continue;
        }
        let new = fresh(id)?;
        let Some(p) = layout.partitions.iter().find(|p| p.number == number) else {
            continue;
        };
        let mut part = Window::of_partition(&file, layout, p);
        let changed = match new {
            Identity::Ext4(u) => ext4::set_uuid(&mut part, u)
                .map(|_| ())
                .map_err(anyhow::Error::from),
            Identity::Fat(v) => fat::set_volume_id(&mut part, v)
                .map(|_| ())
                .map_err(anyhow::Error::from),
            Identity::Swap(u) => swap::set_uuid(&mut part, u)
                .map(|_| ())
                .map_err(anyhow::Error::from),
        };
        match changed {
            Ok(()) => renames.push(Rename {
                partition: number,
                old: id.text(),
                new: new.text(),
            }),
            // Left as it is, and said: the OS may still come up on the wrong disk.
            Err(e) => log::warn!(
                "partition {number} of {device} shares file system identity {} with {}, and it cannot be changed: {}",
                id.text(),
                previous.device,
                crate::error_text(&e)
            ),
        }
    }
    file.sync_all()
        .with_context(|| format!("syncing {device}"))?;
    Ok(renames)
}

/// `text` with every reference to an old identity replaced by the new one (in
/// the cases files write them: ext4 UUIDs in lower case, FAT IDs in upper case,
/// either way round).
pub(super) fn rewrite(text: &str, renames: &[Rename]) -> String {
    let mut out = text.to_string();
    for r in renames {
        for (old, new) in [
            (r.old.to_lowercase(), r.new.to_lowercase()),
            (r.old.to_uppercase(), r.new.to_uppercase()),
        ] {
            out = out.replace(&old, &new);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_rewritten_in_either_case() {
        let renames = [
            Rename {
                partition: 2,
                old: "5eed0000-0000-4000-8000-000000000001".into(),
                new: "0badc0de-0000-4000-8000-000000000002".into(),
            },
            Rename {
                partition: 1,
                old: "5EED-0001".into(),
                new: "ABCD-1234".into(),
            },
        ];
        let fstab = "UUID=5eed0000-0000-4000-8000-000000000001 / ext4 errors=remount-ro 0 1\n\
                     UUID=5EED-0001 /boot/efi vfat umask=0077 0 1\n";
        assert_eq!(
            rewrite(fstab, &renames),
            "UUID=0badc0de-0000-4000-8000-000000000002 / ext4 errors=remount-ro 0 1\n\
             UUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\n"
        );
        let grub = "search --no-floppy --fs-uuid --set=root 5EED0000-0000-4000-8000-000000000001\n\
                    linux /boot/vmlinuz root=UUID=5eed0000-0000-4000-8000-000000000001 ro\n";
        let out = rewrite(grub, &renames);
        assert!(!out.to_lowercase().contains("5eed0000"), "{out}");
        assert_eq!(
            out.matches("0badc0de").count() + out.matches("0BADC0DE").count(),
            2
        );
    }

    #[test]
    fn identity_texts_are_what_blkid_prints() {
        let mut u = [0u8; 16];
        u[0] = 0x5e;
        u[15] = 0x01;
        assert_eq!(
            Identity::Ext4(u).text(),
            "5e000000-0000-0000-0000-000000000001"
        );
        assert_eq!(Identity::Fat(0x5EED_0001).text(), "5EED-0001");
    }
}
