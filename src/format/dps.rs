//! Discoverable Partitions: how an OS that names no root on its command line
//! finds it. systemd's `systemd-gpt-auto-generator` takes the root partition
//! of the machine's architecture type on the disk whose ESP the boot loader
//! reports in the EFI variable `LoaderDevicePartUUID`. A kexec has no boot loader
//! to report it, and that variable cannot be provided: UEFI makes volatile
//! variables read-only once the OS runs, and a non-volatile one would outlive
//! the boot and contradict the loader's own on the next. So the deploy
//! environment names that partition instead, as `root=PARTUUID=` (and
//! `mount.usr=PARTUUID=` for a `/usr` partition), the way gpt-auto would have
//! found them: the partition of the type not marked "no auto" (of several, the
//! one whose label is the newest version, the first of equals: A/B images),
//! read-only when its flag says so.

use super::gpt::{Guid, Layout, Partition};
use super::sdboot::version_cmp;
use std::cmp::Ordering;

/// Root partition, x86-64.
pub const ROOT_X86_64: Guid = Guid::from_fields(
    0x4F68BCE3,
    0xE8CD,
    0x4DB1,
    [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
);
/// `/usr` partition, x86-64.
pub const USR_X86_64: Guid = Guid::from_fields(
    0x8484680C,
    0x9521,
    0x48C6,
    [0x9C, 0x11, 0xB0, 0x72, 0x06, 0x56, 0xF6, 0x9E],
);
/// Extended Boot Loader partition: a separate `/boot`, which systemd-boot reads
/// entries from too.
pub const XBOOTLDR: Guid = Guid::from_fields(
    0xBC13C2FF,
    0x59E6,
    0x4262,
    [0xA3, 0x52, 0xB2, 0x75, 0xFD, 0x6F, 0x71, 0x72],
);
/// Linux file system data: what roots were typed before Discoverable Partitions.
pub const LINUX_DATA: Guid = Guid::from_fields(
    0x0FC63DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);
/// Partition attribute: mount read-only.
const READ_ONLY: u64 = 1 << 60;
/// Partition attribute: not for automatic discovery.
const NO_AUTO: u64 = 1 << 63;

/// How a kexec'd kernel will find its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// The command line names it already.
    Named,
    /// Found by partition type: the command line to use instead.
    Added { cmdline: String, partuuid: Guid },
    /// Neither: a kexec would end in the initrd's emergency shell.
    Unknown(String),
}

/// The value of the last `key=` word (the one the kernel and systemd take).
fn names(words: &str, key: &str) -> Option<String> {
    words
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// The partition of `type_guid` systemd would take: not marked "no auto"; of
/// several, the newest version by label, the first of equals.
fn discoverable(layout: &Layout, type_guid: Guid) -> Option<&Partition> {
    let mut chosen: Option<&Partition> = None;
    for p in &layout.partitions {
        if p.type_guid != type_guid || p.attributes & NO_AUTO != 0 {
            continue;
        }
        if chosen.is_none_or(|c| version_cmp(&c.name, &p.name) == Ordering::Less) {
            chosen = Some(p);
        }
    }
    chosen
}

/// PARTUUIDs as the kernel matches them (lower case is what systemd writes).
fn partuuid(guid: Guid) -> String {
    guid.to_string().to_ascii_lowercase()
}

/// How the OS booted with `cmdline` from a disk laid out as `layout` finds its
/// root, with the command line that makes it find it without a boot loader.
pub fn root_for_kexec(cmdline: &str, layout: &Layout) -> Root {
    match names(cmdline, "root").as_deref() {
        Some("gpt-auto") | None => {}
        Some(_) => return Root::Named,
    }
    let Some(root) = discoverable(layout, ROOT_X86_64) else {
        return Root::Unknown(
            "its command line names no root= and the disk has no x86-64 root partition (Discoverable Partitions) to find one by".into(),
        );
    };
    let mut words: Vec<String> = cmdline
        .split_ascii_whitespace()
        .filter(|w| *w != "root=gpt-auto")
        .map(str::to_string)
        .collect();
    words.push(format!("root=PARTUUID={}", partuuid(root.unique_guid)));
    let has_mode = words.iter().any(|w| w == "ro" || w == "rw");
    if !has_mode {
        words.push(
            if root.attributes & READ_ONLY != 0 {
                "ro"
            } else {
                "rw"
            }
            .into(),
        );
    }
    if names(cmdline, "mount.usr").is_none()
        && let Some(usr) = discoverable(layout, USR_X86_64)
    {
        words.push(format!("mount.usr=PARTUUID={}", partuuid(usr.unique_guid)));
    }
    Root::Added {
        cmdline: words.join(" "),
        partuuid: root.unique_guid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, type_guid: Guid, unique: u8, attributes: u64) -> Partition {
        Partition {
            number,
            type_guid,
            unique_guid: Guid([unique; 16]),
            first_lba: 2048 * u64::from(number),
            last_lba: 2048 * u64::from(number) + 2047,
            attributes,
            name: String::new(),
        }
    }

    fn layout(partitions: Vec<Partition>) -> Layout {
        Layout {
            sector_size: 512,
            disk_guid: Guid([9; 16]),
            first_usable_lba: 34,
            last_usable_lba: 1 << 20,
            partitions,
        }
    }

    #[test]
    fn a_single_root_partition_is_named_for_the_kernel() {
        let l = layout(vec![
            part(1, crate::format::gpt::ESP_TYPE, 1, 0),
            part(2, ROOT_X86_64, 0xab, 0),
        ]);
        let Root::Added { cmdline, partuuid } = root_for_kexec("console=ttyS0 rw", &l) else {
            panic!()
        };
        assert_eq!(partuuid, Guid([0xab; 16]));
        assert_eq!(
            cmdline,
            "console=ttyS0 rw root=PARTUUID=abababab-abab-abab-abab-abababababab"
        );
        // No mode given: gpt-auto mounts it writable unless the flag says not.
        let Root::Added { cmdline, .. } = root_for_kexec("root=gpt-auto", &l) else {
            panic!()
        };
        assert_eq!(
            cmdline,
            "root=PARTUUID=abababab-abab-abab-abab-abababababab rw"
        );
        let l = layout(vec![
            part(2, ROOT_X86_64, 0xab, READ_ONLY),
            part(3, USR_X86_64, 0xcd, 0),
        ]);
        let Root::Added { cmdline, .. } = root_for_kexec("quiet", &l) else {
            panic!()
        };
        assert_eq!(
            cmdline,
            "quiet root=PARTUUID=abababab-abab-abab-abab-abababababab ro mount.usr=PARTUUID=cdcdcdcd-cdcd-cdcd-cdcd-cdcdcdcdcdcd"
        );
    }

    #[test]
    fn a_named_root_is_left_alone() {
        let l = layout(vec![part(2, ROOT_X86_64, 0xab, 0)]);
        assert_eq!(root_for_kexec("root=UUID=x ro", &l), Root::Named);
        assert_eq!(
            root_for_kexec("root=/dev/vda2", &layout(vec![])),
            Root::Named
        );
    }

    #[test]
    fn of_several_roots_the_newest_label_wins_as_in_systemd() {
        assert!(matches!(
            root_for_kexec("quiet", &layout(vec![])),
            Root::Unknown(_)
        ));
        let named = |a: &str, b: &str| {
            let mut first = part(2, ROOT_X86_64, 0xab, 0);
            first.name = a.into();
            let mut second = part(3, ROOT_X86_64, 0xac, 0);
            second.name = b.into();
            let Root::Added { partuuid, .. } =
                root_for_kexec("quiet", &layout(vec![first, second]))
            else {
                panic!()
            };
            partuuid
        };
        assert_eq!(named("root-1.9", "root-1.10"), Guid([0xac; 16]));
        assert_eq!(named("root-2", "root-1.10"), Guid([0xab; 16]));
        assert_eq!(
            named("root", "root"),
            Guid([0xab; 16]),
            "the first of equals"
        );
        // "No auto" takes one out of the running.
        let one = layout(vec![
            part(2, ROOT_X86_64, 0xab, NO_AUTO),
            part(3, ROOT_X86_64, 0xac, 0),
        ]);
        let Root::Added { partuuid, .. } = root_for_kexec("quiet", &one) else {
            panic!()
        };
        assert_eq!(partuuid, Guid([0xac; 16]));
    }
}
