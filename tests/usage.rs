//! Allocation maps checked by the file systems' own tools. Disks are filled with
//! junk, partitioned by sfdisk, and given file systems by e2fsprogs, dosfstools
//! and mtools (over the junk, which stays in their free space). A copy with
//! every byte outside the map zeroed must still be a clean disk: its tables as
//! they were, e2fsck and fsck.vfat content, every file byte for byte the same,
//! swap headers intact; and the map must hold far less than the partitions.

mod common;

use common::sfdisk;
use imprint::format::usage::{PartUsage, UsedMap, disk_usage};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (scripts/deps test installs it): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, text) = run(cmd, args);
    assert!(ok, "{cmd} {args:?}: {text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A disk image of junk: pseudo-random bytes, different in every MiB.
fn junk_disk(path: &Path, size: u64, seed: u64) {
    let base = common::noise(seed, MIB as usize);
    let mut f = std::fs::File::create(path).unwrap();
    let mut piece = base.clone();
    for i in 0..size / MIB {
        piece.copy_from_slice(&base);
        piece.rotate_left((i as usize * 4099) % base.len());
        piece[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&piece).unwrap();
    }
}

fn read_range(path: &Path, start: u64, len: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn write_at(path: &Path, start: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    f.write_all(data).unwrap();
}

/// Files to put in a file system: name → content, a few MiB of random bytes
/// in all, some in folders, some tiny, one empty.
fn tree(dir: &Path, seed: u64, big: usize) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert("big.bin".to_string(), common::noise(seed, big));
    files.insert(
        "sub/more.bin".to_string(),
        common::noise(seed + 1, big / 2 + 4321),
    );
    files.insert("sub/deeper/note.txt".to_string(), b"kept\n".to_vec());
    files.insert("empty".to_string(), Vec::new());
    for i in 0..20u64 {
        let len = (i as usize * 3001) % 20000 + 1;
        files.insert(format!("many/f{i}.dat"), common::noise(seed + 10 + i, len));
    }
    for (name, data) in &files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    files
}

/// One partition of a test disk and what goes in it.
struct Part {
    number: u32,
    start: u64,
    len: u64,
    files: BTreeMap<String, Vec<u8>>,
}

impl Part {
    fn range(&self) -> (u64, u64) {
        (self.start, self.start + self.len)
    }
}

struct Disk {
    dir: tempfile::TempDir,
    path: PathBuf,
    size: u64,
}

impl Disk {
    /// A junk disk of `mib` MiB partitioned by the sfdisk `script`.
    fn new(mib: u64, seed: u64, script: &str) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        junk_disk(&path, mib * MIB, seed);
        sfdisk(&path, script);
        Disk {
            dir,
            path,
            size: mib * MIB,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Makes a file system in partition `number` (sectors `start`, `sectors`)
    /// over the junk there: `make` runs on the partition as a file, with the
    /// folder of files to put in it.
    fn fill(
        &self,
        number: u32,
        start: u64,
        sectors: u64,
        big: usize,
        make: impl FnOnce(&Path, &Path),
    ) -> Part {
        let (start, len) = (start * SECTOR, sectors * SECTOR);
        let part = self.file(&format!("p{number}.img"));
        std::fs::write(&part, read_range(&self.path, start, len)).unwrap();
        let content = self.file(&format!("p{number}.d"));
        std::fs::create_dir(&content).unwrap();
        let files = if big > 0 {
            tree(&content, u64::from(number) * 1000, big)
        } else {
            BTreeMap::new()
        };
        make(&part, &content);
        write_at(&self.path, start, &std::fs::read(&part).unwrap());
        Part {
            number,
            start,
            len,
            files,
        }
    }

    fn usage(&self) -> (UsedMap, Vec<PartUsage>) {
        let mut f = std::fs::File::open(&self.path).unwrap();
        disk_usage(&mut f, self.size).unwrap()
    }

    /// The disk with every byte the map leaves out zeroed.
    fn zeroed(&self, map: &UsedMap) -> PathBuf {
        let original = std::fs::read(&self.path).unwrap();
        let mut img = vec![0u8; original.len()];
        for r in map.ranges() {
            img[r.start as usize..r.end as usize]
                .copy_from_slice(&original[r.start as usize..r.end as usize]);
        }
        let path = self.file("zeroed.img");
        std::fs::write(&path, img).unwrap();
        path
    }

    /// Checks that the partition table of `zeroed` reads back as the disk's
    /// (sfdisk also checks a GPT's backup copy).
    fn same_table(&self, zeroed: &Path) {
        let table = |p: &Path| {
            let (ok, text) = run("sfdisk", &["-d", s(p)]);
            assert!(ok, "sfdisk -d {}: {text}", p.display());
            text.replace(s(p), "DISK")
        };
        assert_eq!(
            table(&self.path),
            table(zeroed),
            "the partition table changed"
        );
    }

    /// Partition `p` of the zeroed disk `zeroed`, as a file.
    fn extract(&self, zeroed: &Path, p: &Part) -> PathBuf {
        let out = self.file(&format!("z{}.img", p.number));
        std::fs::write(&out, read_range(zeroed, p.start, p.len)).unwrap();
        out
    }

    /// Bytes of partition `p` the map leaves out that held junk before: what a
    /// capture no longer stores.
    fn junk_dropped(&self, map: &UsedMap, p: &Part) -> u64 {
        let (start, end) = p.range();
        let data = read_range(&self.path, start, p.len);
        let mut at = start;
        let mut junk = 0;
        for r in map.used_within(start, end).chain(std::iter::once(end..end)) {
            let free = &data[(at - start) as usize..(r.start - start) as usize];
            junk += free.iter().filter(|&&b| b != 0).count() as u64;
            at = r.end;
        }
        junk
    }
}

fn report(parts: &[PartUsage], number: u32) -> &PartUsage {
    parts
        .iter()
        .find(|p| p.number == number)
        .unwrap_or_else(|| panic!("partition {number} not reported: {parts:?}"))
}

/// The file system's data fits in far less than its partition, holds at least
/// its files, and the junk around it is gone.
fn check_small(disk: &Disk, map: &UsedMap, parts: &[PartUsage], p: &Part, kind: &str) {
    let r = report(parts, p.number);
    assert_eq!((r.kind, r.start, r.len), (kind, p.start, p.len), "{r:?}");
    let content: u64 = p.files.values().map(|f| f.len() as u64).sum();
    assert!(
        r.used >= content,
        "{r:?} holds less than its {content} bytes of files"
    );
    assert!(
        r.used < p.len / 2,
        "{r:?}: more than half of the partition is used"
    );
    let dropped = disk.junk_dropped(map, p);
    assert!(
        dropped > p.len * 4 / 10,
        "partition {}: only {dropped} bytes of junk left out",
        p.number
    );
}

fn mkfs_ext(options: &'static [&'static str]) -> impl FnOnce(&Path, &Path) {
    move |part, content| {
        let mut args = vec!["-q", "-F", "-E", "nodiscard", "-d", s(content)];
        args.extend_from_slice(options);
        args.push(s(part));
        must("mke2fs", &args);
    }
}

fn mkfs_fat(bits: &'static str) -> impl FnOnce(&Path, &Path) {
    move |part, content| {
        must("mkfs.vfat", &["-F", bits, s(part)]);
        let entries: Vec<PathBuf> = std::fs::read_dir(content)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let mut args = vec!["-s", "-i", s(part)];
        args.extend(entries.iter().map(|e| s(e)));
        args.push("::/");
        must("mcopy", &args);
    }
}

/// e2fsck finds the zeroed ext2/3/4 file system clean, its used blocks are the
/// ones it counts as not free, and every file reads back.
fn check_ext(disk: &Disk, zeroed: &Path, parts: &[PartUsage], p: &Part) {
    let part = disk.extract(zeroed, p);
    let (ok, text) = run("e2fsck", &["-fn", s(&part)]);
    assert!(ok, "e2fsck on partition {}: {text}", p.number);
    let header = must("dumpe2fs", &["-h", s(&part)]);
    let field = |name: &str| -> u64 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {header}"))
    };
    let in_use = (field("Block count:") - field("Free blocks:")) * field("Block size:");
    assert_eq!(
        report(parts, p.number).used,
        in_use,
        "partition {}",
        p.number
    );
    let out = disk.file("out");
    for (name, data) in &p.files {
        must(
            "debugfs",
            &["-R", &format!("dump /{name} {}", s(&out)), s(&part)],
        );
        assert!(
            std::fs::read(&out).unwrap() == *data,
            "{name} in partition {}",
            p.number
        );
    }
}

/// fsck.vfat finds the zeroed FAT file system clean and every file reads back.
fn check_fat(disk: &Disk, zeroed: &Path, p: &Part) {
    let part = disk.extract(zeroed, p);
    let (ok, text) = run("fsck.vfat", &["-n", s(&part)]);
    assert!(ok, "fsck.vfat on partition {}: {text}", p.number);
    let out = disk.file("out");
    for (name, data) in &p.files {
        must(
            "mcopy",
            &["-o", "-i", s(&part), &format!("::/{name}"), s(&out)],
        );
        assert!(
            std::fs::read(&out).unwrap() == *data,
            "{name} in partition {}",
            p.number
        );
    }
}

#[test]
fn gpt_disk_with_ext4_fat32_swap_and_an_unknown_partition() {
    let disk = Disk::new(
        240,
        1,
        "label: gpt\n\
         start=2048, size=196608, type=linux\n\
         start=198656, size=196608, type=uefi\n\
         start=395264, size=32768, type=swap\n\
         start=428032, size=16384, type=linux\n",
    );
    let ext4 = disk.fill(
        1,
        2048,
        196608,
        5 << 20,
        mkfs_ext(&["-t", "ext4", "-g", "8192"]),
    );
    let fat32 = disk.fill(2, 198656, 196608, 5 << 20, mkfs_fat("32"));
    let swap = disk.fill(3, 395264, 32768, 0, |part, _| {
        must(
            "mkswap",
            &["-U", "5eed0000-0000-4000-8000-00000000000a", s(part)],
        );
    });
    let (map, parts) = disk.usage();
    check_small(&disk, &map, &parts, &ext4, "ext4");
    check_small(&disk, &map, &parts, &fat32, "FAT");
    assert_eq!(
        (report(&parts, 3).kind, report(&parts, 3).used),
        ("swap", 4096)
    );
    // The junk partition is not known: all of it is kept.
    let unknown = report(&parts, 4);
    assert_eq!((unknown.kind, unknown.used), ("raw", 16384 * SECTOR));
    let (start, end) = (unknown.start, unknown.start + unknown.len);
    assert!(map.used_within(start, end).eq(std::iter::once(start..end)));

    let zeroed = disk.zeroed(&map);
    disk.same_table(&zeroed);
    check_ext(&disk, &zeroed, &parts, &ext4);
    check_fat(&disk, &zeroed, &fat32);
    let part = disk.extract(&zeroed, &swap);
    let uuid = must("blkid", &["-p", "-o", "value", "-s", "UUID", s(&part)]);
    assert_eq!(uuid.trim(), "5eed0000-0000-4000-8000-00000000000a");
    assert!(
        read_range(&part, 4096, swap.len - 4096)
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn ext2_ext3_and_ext4_flavours() {
    let disk = Disk::new(
        200,
        2,
        "label: gpt\n\
         start=2048, size=98304, type=linux\n\
         start=100352, size=98304, type=linux\n\
         start=198656, size=98304, type=linux\n\
         start=296960, size=98304, type=linux\n",
    );
    // 1 KiB blocks (block 0 outside the groups, groups left uninitialised);
    // 32-byte descriptors with uninit_bg's CRC-16; ext3; ext2 with backups in
    // every group.
    let flavours: [(&[&str], &str); 4] = [
        (&["-t", "ext4", "-b", "1024"], "ext4"),
        (
            &[
                "-t",
                "ext4",
                "-O",
                "^64bit,^metadata_csum,uninit_bg",
                "-g",
                "4096",
            ],
            "ext4",
        ),
        (&["-t", "ext3", "-g", "4096"], "ext4"),
        (
            &[
                "-t",
                "ext2",
                "-O",
                "^sparse_super,^resize_inode",
                "-g",
                "2048",
            ],
            "ext4",
        ),
    ];
    let mut filled = Vec::new();
    for (i, (options, _)) in flavours.iter().enumerate() {
        let start = 2048 + i as u64 * 98304;
        let options: &'static [&'static str] = options;
        filled.push(disk.fill(i as u32 + 1, start, 98304, 2 << 20, mkfs_ext(options)));
    }
    let (map, parts) = disk.usage();
    let zeroed = disk.zeroed(&map);
    disk.same_table(&zeroed);
    for (p, (_, kind)) in filled.iter().zip(flavours) {
        check_small(&disk, &map, &parts, p, kind);
        check_ext(&disk, &zeroed, &parts, p);
    }
}

#[test]
fn mbr_disk_with_fat16_and_fat12_and_ext4_in_logical_partitions() {
    let disk = Disk::new(
        128,
        3,
        "label: dos\n\
         start=2048, size=131072, type=6\n\
         start=133120, size=126976, type=5\n\
         start=135168, size=16384, type=1\n\
         start=153600, size=65536, type=83\n",
    );
    let fat16 = disk.fill(1, 2048, 131072, 3 << 20, mkfs_fat("16"));
    let fat12 = disk.fill(5, 135168, 16384, 1 << 20, mkfs_fat("12"));
    let ext4 = disk.fill(6, 153600, 65536, 2 << 20, mkfs_ext(&["-t", "ext4"]));
    let (map, parts) = disk.usage();
    let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 5, 6]);
    check_small(&disk, &map, &parts, &fat16, "FAT");
    check_small(&disk, &map, &parts, &fat12, "FAT");
    check_small(&disk, &map, &parts, &ext4, "ext4");
    // The logical partitions' boot records lie between them: kept.
    for ebr in [133120, 151552] {
        assert!(
            map.any_used(ebr * SECTOR, (ebr + 1) * SECTOR),
            "EBR at {ebr}"
        );
    }
    let zeroed = disk.zeroed(&map);
    disk.same_table(&zeroed);
    check_fat(&disk, &zeroed, &fat16);
    check_fat(&disk, &zeroed, &fat12);
    check_ext(&disk, &zeroed, &parts, &ext4);
}

#[test]
fn a_fat_file_system_on_the_whole_disk() {
    // No partition table: dosfstools' boot sector carries the MBR's signature
    // but no partitions, and is read as the file system it is.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    junk_disk(&path, 64 * MIB, 4);
    let disk = Disk {
        dir,
        path,
        size: 64 * MIB,
    };
    let whole = disk.fill(0, 0, 64 * MIB / SECTOR, 2 << 20, mkfs_fat("16"));
    let (map, parts) = disk.usage();
    assert_eq!(parts.len(), 1);
    check_small(&disk, &map, &parts, &whole, "FAT");
    check_fat(&disk, &disk.zeroed(&map), &whole);
}
