//! Naming the file system (or other content) at the start of a partition by its
//! signature, so a root the deploy environment cannot mount is reported as what
//! it is.

/// Bytes from the partition's start that [`identify`] looks at.
pub const HEAD_LEN: usize = 0x10080;

/// Signatures: (name, offset, bytes). The first match wins; LUKS and LVM come
/// first because they wrap a file system.
const SIGNATURES: &[(&str, usize, &[u8])] = &[
    ("LUKS encrypted volume", 0, b"LUKS\xba\xbe"),
    ("LVM physical volume", 0x218, b"LVM2 001"),
    ("ext2/3/4", 0x438, &[0x53, 0xEF]),
    ("btrfs", 0x10040, b"_BHRfS_M"),
    ("XFS", 0, b"XFSB"),
    ("squashfs", 0, b"hsqs"),
    ("EROFS", 0x400, &[0xE2, 0xE1, 0xF5, 0xE0]),
    ("F2FS", 0x400, &[0x10, 0x20, 0xF5, 0xF2]),
    ("swap", 0xFF6, b"SWAPSPACE2"),
    ("FAT", 0x52, b"FAT32   "),
    ("FAT", 0x36, b"FAT16   "),
    ("FAT", 0x36, b"FAT12   "),
    ("NTFS", 3, b"NTFS    "),
    ("ISO 9660", 0x8001, b"CD001"),
];

/// The kind of content `head` (the first bytes of a partition) starts with, if
/// known.
pub fn identify(head: &[u8]) -> Option<&'static str> {
    SIGNATURES.iter().find_map(|(name, offset, magic)| {
        (head.get(*offset..offset + magic.len()) == Some(*magic)).then_some(*name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; HEAD_LEN];
        head[offset..offset + magic.len()].copy_from_slice(magic);
        head
    }

    #[test]
    fn signatures_are_found_where_they_live() {
        assert_eq!(identify(&with(0x10040, b"_BHRfS_M")), Some("btrfs"));
        assert_eq!(identify(&with(0x438, &[0x53, 0xEF])), Some("ext2/3/4"));
        assert_eq!(identify(&with(0, b"XFSB")), Some("XFS"));
        assert_eq!(identify(&with(0xFF6, b"SWAPSPACE2")), Some("swap"));
        assert_eq!(
            identify(&with(0, b"LUKS\xba\xbe")),
            Some("LUKS encrypted volume")
        );
        assert_eq!(identify(&vec![0u8; HEAD_LEN]), None);
        // A short read names only what fits in it, and never panics.
        assert_eq!(identify(&with(0, b"XFSB")[..16]), Some("XFS"));
        assert_eq!(identify(&[]), None);
    }

    #[test]
    fn real_file_systems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let made = |cmd: &str, args: &[&str]| {
            std::fs::File::create(&image)
                .unwrap()
                .set_len(128 << 20)
                .unwrap();
            std::process::Command::new(cmd)
                .args(args)
                .arg(&image)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let head = || {
            let mut h = std::fs::read(&image).unwrap();
            h.truncate(HEAD_LEN);
            h
        };
        for (cmd, args, name) in [
            ("mkfs.ext4", &["-q", "-F"][..], "ext2/3/4"),
            ("mkfs.vfat", &["-F", "32"][..], "FAT"),
            ("mkfs.btrfs", &["-q", "-f"][..], "btrfs"),
        ] {
            assert!(
                made(cmd, args),
                "{cmd} failed (scripts/deps test installs it)"
            );
            assert_eq!(identify(&head()), Some(name), "{cmd}");
        }
    }
}
