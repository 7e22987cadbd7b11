use super::*;
use imprint::format::usage::*;
use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::LazyLock;

const MIB: usize = 1 << 20;
/// Where the test disk's partitions lie (bytes) and how long they are.
const EXT4_AT: usize = MIB;
const EXT4_LEN: usize = MIB;
const FAT_AT: usize = 2 * MIB;
const FAT_LEN: usize = MIB / 2;
const DISK_LEN: usize = 3 * MIB;

/// Small real file systems, made once per process: ext4 with and without
/// metadata_csum (1 KiB blocks, groups of 256: four groups, some left
/// uninitialised), FAT12, and a GPT disk holding the first and the last.
struct Images {
    ext4: Vec<u8>,
    ext4_csum: Vec<u8>,
    fat12: Vec<u8>,
    disk: Vec<u8>,
}

fn run(cmd: &str, args: &[&str], stdin: &str) {
    let mut child = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} (scripts/deps test installs it): {e}"));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "{cmd} {args:?}");
}

fn made(dir: &Path, name: &str, len: usize, make: impl FnOnce(&str)) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; len]).unwrap();
    make(path.to_str().unwrap());
    std::fs::read(&path).unwrap()
}

static IMAGES: LazyLock<Images> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    std::fs::create_dir_all(content.join("sub")).unwrap();
    std::fs::write(content.join("a"), vec![0xA5u8; 40_000]).unwrap();
    std::fs::write(content.join("sub/b"), vec![0x5Au8; 70_000]).unwrap();
    let d = content.to_str().unwrap();
    let ext4 = |csum: &'static str| {
        move |p: &str| {
            let features = format!("^has_journal,^resize_inode,{csum}");
            let args = [
                "-q", "-F", "-t", "ext4", "-b", "1024", "-g", "256", "-N", "64",
            ];
            let mut args = args.to_vec();
            args.extend(["-O", &features, "-d", d, p]);
            run("mke2fs", &args, "");
        }
    };
    let fat12 = |p: &str| {
        run("mkfs.vfat", &["-F", "12", p], "");
        let (a, sub) = (content.join("a"), content.join("sub"));
        let args = [
            "-s",
            "-i",
            p,
            a.to_str().unwrap(),
            sub.to_str().unwrap(),
            "::/",
        ];
        run("mcopy", &args, "");
    };
    let ext4_plain = made(dir.path(), "ext4", EXT4_LEN, ext4("^metadata_csum"));
    let ext4_csum = made(dir.path(), "ext4csum", EXT4_LEN, ext4("metadata_csum"));
    let fat12 = made(dir.path(), "fat12", FAT_LEN, fat12);
    let mut disk = made(dir.path(), "disk", DISK_LEN, |p| {
        let script = format!(
            "label: gpt\nstart={}, size={}\nstart={}, size={}\n",
            EXT4_AT / 512,
            EXT4_LEN / 512,
            FAT_AT / 512,
            FAT_LEN / 512
        );
        run("sfdisk", &["-q", p], &script);
    });
    disk[EXT4_AT..EXT4_AT + EXT4_LEN].copy_from_slice(&ext4_csum);
    disk[FAT_AT..FAT_AT + FAT_LEN].copy_from_slice(&fat12);
    Images {
        ext4: ext4_plain,
        ext4_csum,
        fat12,
        disk,
    }
});

/// Sorted, apart, non-empty and inside [0, len).
fn well_formed(ranges: &[Range<u64>], len: u64) -> Result<(), TestCaseError> {
    for r in ranges {
        prop_assert!(r.start < r.end && r.end <= len, "{:?} of {}", r, len);
    }
    for w in ranges.windows(2) {
        prop_assert!(w[0].end < w[1].start, "{:?}", w);
    }
    Ok(())
}

fn check_disk(img: Vec<u8>) -> Result<(), TestCaseError> {
    let len = img.len() as u64;
    let mut disk = Cursor::new(img);
    if let Ok((map, parts)) = bounded(len as usize, || disk_usage(&mut disk, len)) {
        well_formed(map.ranges(), len)?;
        prop_assert!(map.used_bytes() <= len && map.used_span() <= len);
        for p in &parts {
            prop_assert!(p.start + p.len <= len && p.used <= p.len, "{:?}", p);
        }
    }
    Ok(())
}

fn check_fs(img: Vec<u8>) -> Result<(), TestCaseError> {
    let len = img.len() as u64;
    let mut part = Cursor::new(img);
    if let Ok(ranges) = bounded(len as usize, || ext4_used(&mut part, len)) {
        well_formed(&ranges, len)?;
    }
    if let Ok(ranges) = bounded(len as usize, || fat_used(&mut part, len)) {
        well_formed(&ranges, len)?;
    }
    Ok(())
}

/// `base` with `ms` applied to the 16 KiB from `focus` (where the metadata is),
/// or to all of it (then truncations and extensions change its length).
fn mutated(base: &[u8], focus: usize, whole: bool, ms: &[Mutation]) -> Vec<u8> {
    if whole {
        return mutate(base, ms);
    }
    let mut img = base.to_vec();
    let end = (focus + (16 << 10)).min(img.len());
    let piece = mutate(&img[focus..end], ms);
    let n = piece.len().min(end - focus);
    img[focus..focus + n].copy_from_slice(&piece[..n]);
    img
}

#[test]
fn real_images_are_read() {
    let images = &*IMAGES;
    for img in [&images.ext4, &images.ext4_csum] {
        let used = ext4_used(&mut Cursor::new(img), img.len() as u64).unwrap();
        let bytes: u64 = used.iter().map(|r| r.end - r.start).sum();
        assert!(bytes > 110_000 && bytes < img.len() as u64 / 2, "{bytes}");
    }
    let img = &images.fat12;
    let used = fat_used(&mut Cursor::new(img), img.len() as u64).unwrap();
    let bytes: u64 = used.iter().map(|r| r.end - r.start).sum();
    assert!(bytes > 110_000 && bytes < img.len() as u64 / 2, "{bytes}");
    let img = &images.disk;
    let (_, parts) = disk_usage(&mut Cursor::new(img), img.len() as u64).unwrap();
    let kinds: Vec<_> = parts.iter().map(|p| (p.number, p.kind)).collect();
    assert_eq!(kinds, [(1, "ext4"), (2, "FAT")]);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_disks_never_panic(bytes in bytes(), table in 0u8..3) {
        let mut bytes = bytes;
        // Now and then the start of a table, for the parsers behind it.
        if bytes.len() >= 1024 {
            match table {
                0 => bytes[510..512].copy_from_slice(&[0x55, 0xAA]),
                1 => bytes[512..520].copy_from_slice(b"EFI PART"),
                _ => {}
            }
        }
        check_disk(bytes.clone())?;
        check_fs(bytes)?;
    }

    #[test]
    fn mutated_file_systems_never_panic(
        which in 0usize..3,
        focus in prop::sample::select(vec![0usize, 1024, 2048, 4096, 8192]),
        whole in prop::bool::weighted(0.2),
        ms in mutations(),
    ) {
        let images = &*IMAGES;
        let base = [&images.ext4, &images.ext4_csum, &images.fat12][which];
        check_fs(mutated(base, focus, whole, &ms))?;
    }

    #[test]
    fn mutated_disks_never_panic(
        focus in prop::sample::select(vec![0usize, 512, EXT4_AT, EXT4_AT + 2048, FAT_AT, DISK_LEN - 16384]),
        whole in prop::bool::weighted(0.2),
        ms in mutations(),
    ) {
        check_disk(mutated(&IMAGES.disk, focus, whole, &ms))?;
    }
}
