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

/// A file system's kind, label and UUID as `blkid` writes them: what a
/// medium is found by (`imprint.repo=media:LABEL`, `media:UUID=...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The kernel's name for the file system type (for mount).
    pub kind: &'static str,
    pub label: String,
    pub uuid: String,
}

/// The volume in `head` (the first [`HEAD_LEN`] bytes of a device), for the
/// file systems media use (ISO 9660, FAT) and ext4.
pub fn volume(head: &[u8]) -> Option<Volume> {
    iso9660(head).or_else(|| fat(head)).or_else(|| ext4(head))
}

/// A label field as text: printable ASCII only, padding trimmed.
fn label_text(raw: &[u8]) -> String {
    let text: String = raw
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                ' '
            }
        })
        .collect();
    text.trim().to_string()
}

fn iso9660(head: &[u8]) -> Option<Volume> {
    // The primary volume descriptor, at sector 16 (2048-byte sectors).
    let pvd = head.get(0x8000..0x8000 + 2048)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    // blkid's UUID: the creation time's digits, "YYYY-MM-DD-HH-MM-SS-CC".
    let t = &pvd[813..829];
    let digits = |r: std::ops::Range<usize>| label_text(&t[r]);
    let uuid = if t.iter().all(u8::is_ascii_digit) {
        format!(
            "{}-{}-{}-{}-{}-{}-{}",
            digits(0..4),
            digits(4..6),
            digits(6..8),
            digits(8..10),
            digits(10..12),
            digits(12..14),
            digits(14..16)
        )
    } else {
        String::new()
    };
    Some(Volume {
        kind: "iso9660",
        label: label_text(&pvd[40..72]),
        uuid,
    })
}

fn fat(head: &[u8]) -> Option<Volume> {
    let sector = head.get(..512)?;
    if sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    // (extended boot signature, serial, label) by FAT flavour.
    let (signature, id, label) = if &sector[0x52..0x5A] == b"FAT32   " {
        (0x42, 0x43, 0x47)
    } else if matches!(&sector[0x36..0x3E], b"FAT16   " | b"FAT12   ") {
        (0x26, 0x27, 0x2B)
    } else {
        return None;
    };
    if sector[signature] != 0x29 {
        return None;
    }
    let serial = u32::from_le_bytes(sector[id..id + 4].try_into().ok()?);
    let mut name = label_text(&sector[label..label + 11]);
    if name == "NO NAME" {
        name.clear();
    }
    Some(Volume {
        kind: "vfat",
        label: name,
        uuid: super::fat::volume_id_text(serial),
    })
}

fn ext4(head: &[u8]) -> Option<Volume> {
    let sb = head.get(1024..2048)?;
    if sb[56..58] != [0x53, 0xEF] {
        return None;
    }
    let uuid: [u8; 16] = sb[104..120].try_into().ok()?;
    Some(Volume {
        kind: "ext4",
        label: label_text(&sb[120..136]),
        uuid: super::ext4::uuid_text(&uuid),
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

    /// Labels and UUIDs as blkid reads them from what Debian's tools make.
    #[test]
    fn volumes_are_named_as_blkid_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let blkid = |path: &std::path::Path, tag: &str| {
            let out = std::process::Command::new("blkid")
                .args(["-p", "-o", "value", "-s", tag])
                .arg(path)
                .output()
                .expect("blkid (util-linux)");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let head = |path: &std::path::Path| {
            let mut h = std::fs::read(path).unwrap();
            h.truncate(HEAD_LEN);
            h
        };
        let run = |cmd: &str, args: &[&str]| {
            let ok = std::process::Command::new(cmd)
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(ok, "{cmd} failed (scripts/deps test installs it)");
        };
        let fat32 = dir.path().join("fat32.img");
        let fat16 = dir.path().join("fat16.img");
        let ext4 = dir.path().join("ext4.img");
        let iso = dir.path().join("media.iso");
        for (file, mib) in [(&fat32, 64), (&fat16, 16), (&ext4, 16)] {
            std::fs::File::create(file)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
        }
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        run("mkfs.vfat", &["-F", "32", "-n", "IMPRINT", &path(&fat32)]);
        run(
            "mkfs.vfat",
            &["-F", "16", "-n", "SMALL", "-i", "0A0B0C0D", &path(&fat16)],
        );
        run("mkfs.ext4", &["-q", "-F", "-L", "data", &path(&ext4)]);
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        std::fs::write(dir.path().join("tree/file"), "x").unwrap();
        run(
            "xorriso",
            &[
                "-as",
                "mkisofs",
                "-quiet",
                "-V",
                "IMPRINT_ISO",
                "-o",
                &path(&iso),
                &path(&dir.path().join("tree")),
            ],
        );
        for (file, kind) in [
            (&fat32, "vfat"),
            (&fat16, "vfat"),
            (&ext4, "ext4"),
            (&iso, "iso9660"),
        ] {
            let v = volume(&head(file)).unwrap_or_else(|| panic!("{file:?}: no volume"));
            assert_eq!(v.kind, kind, "{file:?}");
            assert_eq!(v.label, blkid(file, "LABEL"), "{file:?}");
            assert_eq!(v.uuid, blkid(file, "UUID"), "{file:?}");
        }
        assert_eq!(volume(&head(&fat16)).unwrap().uuid, "0A0B-0C0D");
        assert_eq!(volume(&head(&iso)).unwrap().label, "IMPRINT_ISO");
        assert_eq!(volume(&vec![0u8; HEAD_LEN]), None);
        assert_eq!(volume(&[]), None);
    }
}
