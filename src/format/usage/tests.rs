// Expected maps of one range read best as one-element lists.
#![allow(clippy::single_range_in_vec_init)]

use super::*;
use crate::format::gpt::tests::image_with;
use crate::format::gpt::{ESP_TYPE, Guid};
use std::io::Cursor;

const K: u64 = 1024;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn raw_crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

#[test]
fn maps_merge_and_answer_range_questions() {
    let map = UsedMap::new([10..20, 0..5, 5..7, 15..30, 40..40, 50..60]);
    assert_eq!(map.ranges(), &[0..7, 10..30, 50..60]);
    assert_eq!(map.used_bytes(), 7 + 20 + 10);
    assert_eq!(map.used_span(), 60);
    assert!(map.any_used(0, 1));
    assert!(map.any_used(29, 31));
    assert!(!map.any_used(30, 50));
    assert!(!map.any_used(7, 10));
    assert!(map.any_used(7, 11));
    assert!(!map.any_used(60, 1000));
    assert!(!map.any_used(5, 5));
    let within: Vec<_> = map.used_within(5, 55).collect();
    assert_eq!(within, [5..7, 10..30, 50..55]);
    assert_eq!(map.used_within(30, 50).count(), 0);
    assert_eq!(map.used_within(12, 13).collect::<Vec<_>>(), [12..13]);
    assert_eq!(UsedMap::default().used_span(), 0);
    assert!(!UsedMap::default().any_used(0, u64::MAX));
}

#[test]
fn too_many_ranges_coarsen_without_losing_a_used_byte() {
    let mut set = RangeSet::with_cap(8);
    // 100 one-byte ranges 10 KiB apart, pushed backwards (no cheap merging).
    let ranges: Vec<_> = (0..100u64)
        .rev()
        .map(|i| i * 10 * K..i * 10 * K + 1)
        .collect();
    for r in &ranges {
        set.push(r.clone());
    }
    let out = set.finish();
    assert!(out.len() <= 8, "{} ranges", out.len());
    let map = UsedMap { ranges: out };
    for r in &ranges {
        assert_eq!(map.used_within(r.start, r.end).count(), 1, "{r:?} lost");
    }
    assert!(map.ranges().windows(2).all(|w| w[0].end < w[1].start));
}

#[test]
fn bitmap_runs_match_bit_by_bit() {
    let bitmap = [0xFF, 0x00, 0b1010_0110, 0xFF, 0xFF, 0x0F, 0x80];
    for n in [0u64, 1, 8, 9, 17, 20, 40, 44, 55, 56, 1000] {
        let mut runs = Vec::new();
        ext4::set_runs(&bitmap, n, |a, b| runs.push(a..b));
        let mut naive: Vec<Range<u64>> = Vec::new();
        for i in 0..n.min(56) {
            if bitmap[i as usize / 8] >> (i % 8) & 1 == 1 {
                match naive.last_mut() {
                    Some(r) if r.end == i => r.end = i + 1,
                    _ => naive.push(i..i + 1),
                }
            }
        }
        assert_eq!(runs, naive, "{n} bits");
    }
}

// A minimal ext2-style file system: 1 KiB blocks, groups of 256 blocks, 16
// inodes of 128 bytes per group (2 inode table blocks), sparse_super, one
// descriptor block. Group g starts at block 1 + 256 g; groups 0 and 1 carry
// the superblock and descriptors, then the block bitmap, inode bitmap and
// inode table follow in each group.
const BPG: u64 = 256;
const GDT_CSUM: u32 = 0x10;
const METADATA_CSUM: u32 = 0x400;

fn ext4_image(groups: u64, csum: u32) -> Vec<u8> {
    let blocks = 1 + groups * BPG;
    let mut img = vec![0u8; (blocks * K) as usize];
    let sb = &mut img[1024..2048];
    put32(sb, 0x00, (groups * 16) as u32);
    put32(sb, 0x04, blocks as u32);
    put32(sb, 0x14, 1);
    put32(sb, 0x20, BPG as u32);
    put32(sb, 0x24, BPG as u32);
    put32(sb, 0x28, 16);
    put16(sb, 0x38, 0xEF53);
    put16(sb, 0x3A, 1);
    put32(sb, 0x4C, 1);
    put16(sb, 0x58, 128);
    put32(sb, 0x64, 0x1 | csum);
    sb[0x68..0x78].copy_from_slice(&[7; 16]);
    for g in 0..groups {
        let first = 1 + g * BPG;
        let meta = first + if backup(g) { 2 } else { 0 };
        let desc = (2 * K + 32 * g) as usize;
        put32(&mut img, desc, meta as u32);
        put32(&mut img, desc + 4, meta as u32 + 1);
        put32(&mut img, desc + 8, meta as u32 + 2);
        for b in first..meta + 4 {
            set_block(&mut img, b);
        }
    }
    seal(&mut img, groups);
    img
}

/// Whether group `g` carries a superblock copy (sparse_super).
fn backup(g: u64) -> bool {
    let power = |base: u64| {
        let mut n = base;
        while n < g {
            n *= base;
        }
        n == g
    };
    g <= 1 || power(3) || power(5) || power(7)
}

fn set_block(img: &mut [u8], block: u64) {
    let g = (block - 1) / BPG;
    let bitmap = le32_at(img, (2 * K + 32 * g) as usize) as u64;
    let bit = (block - 1) % BPG;
    img[(bitmap * K + bit / 8) as usize] |= 1 << (bit % 8);
}

fn le32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Recomputes the superblock's, descriptors' and bitmaps' checksums.
fn seal(img: &mut [u8], groups: u64) {
    let ro = le32_at(img, 1024 + 0x64);
    let seed = raw_crc32c(!0, &img[1024 + 0x68..1024 + 0x78]);
    for g in 0..groups {
        let desc = (2 * K + 32 * g) as usize;
        let bitmap = le32_at(img, desc) as usize * K as usize;
        if ro & METADATA_CSUM != 0 && bitmap + 32 <= img.len() {
            let sum = raw_crc32c(seed, &img[bitmap..bitmap + BPG as usize / 8]);
            put16(img, desc + 0x18, sum as u16);
        }
        let group = (g as u32).to_le_bytes();
        let sum = if ro & METADATA_CSUM != 0 {
            let c = raw_crc32c(seed, &group);
            let c = raw_crc32c(c, &img[desc..desc + 0x1E]);
            raw_crc32c(c, &[0, 0]) as u16
        } else {
            let c = ext4::crc16(!0, &[7; 16]);
            let c = ext4::crc16(c, &group);
            ext4::crc16(c, &img[desc..desc + 0x1E])
        };
        put16(img, desc + 0x1E, sum);
    }
    let sum = raw_crc32c(!0, &img[1024..1024 + 0x3FC]);
    put32(img, 1024 + 0x3FC, sum);
}

fn ext4_of(img: &[u8]) -> Result<Vec<Range<u64>>, UsageError> {
    ext4_used(&mut Cursor::new(img), img.len() as u64)
}

#[test]
fn ext4_used_is_bitmaps_plus_group_metadata() {
    for csum in [0, GDT_CSUM, METADATA_CSUM] {
        let mut img = ext4_image(3, csum);
        for b in [10, 11, 12, 700] {
            set_block(&mut img, b);
        }
        seal(&mut img, 3);
        // Block 0 and group 0 (superblock, descriptors, bitmaps, inode table);
        // group 1 the same from its backup on; group 2 has no backup.
        assert_eq!(
            ext4_of(&img).unwrap(),
            [
                0..7 * K,
                10 * K..13 * K,
                257 * K..263 * K,
                513 * K..517 * K,
                700 * K..701 * K
            ],
            "csum {csum:#x}"
        );
    }
}

#[test]
fn ext4_uninitialised_bitmaps_are_not_read() {
    // Groups 2 and 3 have junk bitmaps; with descriptor checksums their
    // BLOCK_UNINIT flags are honoured, so only their metadata counts: in group
    // 3, which carries a backup, the superblock and descriptors too.
    let mut img = ext4_image(4, GDT_CSUM);
    img[513 * K as usize..514 * K as usize].fill(0xFF);
    img[771 * K as usize..772 * K as usize].fill(0xFF);
    for g in [2, 3] {
        put16(&mut img, (2 * K + 32 * g + 0x12) as usize, 0x2);
    }
    seal(&mut img, 4);
    let used = ext4_of(&img).unwrap();
    assert_eq!(used[2..], [513 * K..517 * K, 769 * K..775 * K]);
    // Without checksums the kernel ignores the flag and reads the bitmap.
    put32(&mut img, 1024 + 0x64, 0x1);
    let used = ext4_of(&img).unwrap();
    assert_eq!(used[2..], [513 * K..1025 * K]);
}

#[test]
fn ext4_checksums_are_checked() {
    let mut img = ext4_image(3, METADATA_CSUM);
    img[3 * K as usize + 20] ^= 1; // group 0's block bitmap
    assert!(matches!(ext4_of(&img), Err(UsageError::Ext4(_))));
    let mut img = ext4_image(3, GDT_CSUM);
    img[2 * K as usize + 32 + 8] ^= 1; // group 1's inode table
    assert!(matches!(ext4_of(&img), Err(UsageError::Ext4(_))));
    let mut img = ext4_image(3, METADATA_CSUM);
    img[1024 + 0x78] ^= 1; // the label
    assert!(matches!(ext4_of(&img), Err(UsageError::Ext4(_))));
}

/// Superblock fields to set: (offset, value, width in bytes).
type Fields = &'static [(usize, u32, u8)];

#[test]
fn hostile_superblocks_are_refused_quickly() {
    let sb = 1024usize;
    let cases: &[(&str, Fields)] = &[
        ("4 billion blocks", &[(0x04, u32::MAX, 4)]),
        (
            "2^50 blocks",
            &[(0x60, 0x80, 4), (0x150, 1 << 18, 4), (0xFE, 64, 2)],
        ),
        ("128 KiB blocks", &[(0x18, 7, 4), (0x1C, 7, 4)]),
        (
            "huge block size",
            &[(0x18, u32::MAX, 4), (0x1C, u32::MAX, 4)],
        ),
        ("one block per group", &[(0x20, 1, 4), (0x24, 1, 4)]),
        ("no blocks per group", &[(0x20, 0, 4), (0x24, 0, 4)]),
        ("groups counted wrong", &[(0x00, 5 * 16, 4)]),
        ("no inodes", &[(0x00, 0, 4), (0x28, 0, 4)]),
        ("descriptor table past the first group", &[(0xCE, 255, 2)]),
        ("descriptors of 2 KiB", &[(0x60, 0x80, 4), (0xFE, 2048, 2)]),
        (
            "descriptor size not a power of two",
            &[(0x60, 0x80, 4), (0xFE, 48, 2)],
        ),
        ("first data block 0 with 1 KiB blocks", &[(0x14, 0, 4)]),
        ("inode size 7", &[(0x58, 7, 2)]),
        ("no magic", &[(0x38, 0, 2)]),
    ];
    for (what, fields) in cases {
        let mut img = ext4_image(3, 0);
        for &(at, v, width) in *fields {
            match width {
                2 => put16(&mut img, sb + at, v as u16),
                _ => put32(&mut img, sb + at, v),
            }
        }
        let start = std::time::Instant::now();
        assert!(matches!(ext4_of(&img), Err(UsageError::Ext4(_))), "{what}");
        assert!(start.elapsed().as_secs() < 2, "{what}");
    }
    // A descriptor pointing past the end, and a partition shorter than the file
    // system says.
    let mut img = ext4_image(3, 0);
    put32(&mut img, (2 * K + 32 + 8) as usize, 768);
    assert!(matches!(ext4_of(&img), Err(UsageError::Ext4(_))));
    let img = ext4_image(3, 0);
    assert!(matches!(
        ext4_used(&mut Cursor::new(&img), img.len() as u64 - 1),
        Err(UsageError::Ext4(_))
    ));
    assert!(ext4_used(&mut Cursor::new(&img[..100]), 100).is_err());
    // Layouts not read here.
    for (what, at, v) in [
        ("meta_bg", 0x60, 0x10),
        ("a journal to recover", 0x60, 0x4),
        ("an unknown feature", 0x60, 0x1000_0000),
        ("bigalloc", 0x64, 0x201),
        ("not cleanly unmounted", 0x3A, 0),
    ] {
        let mut img = ext4_image(3, 0);
        put32(&mut img, sb + at, v);
        assert!(
            matches!(ext4_of(&img), Err(UsageError::Ext4Unsupported(_))),
            "{what}"
        );
    }
}

/// A FAT12 file system: 512-byte sectors and clusters, one reserved sector, two
/// FATs of one sector, a root directory of one sector, 20 clusters.
fn fat12_image() -> Vec<u8> {
    let mut img = vec![0u8; 24 * 512];
    put16(&mut img, 0x0B, 512);
    img[0x0D] = 1;
    put16(&mut img, 0x0E, 1);
    img[0x10] = 2;
    put16(&mut img, 0x11, 16);
    put16(&mut img, 0x13, 24);
    put16(&mut img, 0x16, 1);
    img[510] = 0x55;
    img[511] = 0xAA;
    img
}

/// Writes FAT12 entry `e` = `v` into the FAT at `fat`.
fn put12(img: &mut [u8], fat: usize, e: usize, v: u16) {
    let at = fat + e + e / 2;
    let pair = u16::from_le_bytes([img[at], img[at + 1]]);
    let pair = if e % 2 == 1 {
        pair & 0x000F | v << 4
    } else {
        pair & 0xF000 | v
    };
    img[at..at + 2].copy_from_slice(&pair.to_le_bytes());
}

#[test]
fn fat12_entries_are_packed_in_pairs() {
    let fat = [0xF0, 0xFF, 0xFF, 0x03, 0x40, 0x00, 0xBC, 0x0A, 0x00];
    let entries: Vec<u32> = (0..6).map(|i| fat::entry(&fat, i, 12)).collect();
    assert_eq!(entries, [0xFF0, 0xFFF, 0x003, 0x004, 0xABC, 0x000]);

    let mut img = fat12_image();
    for (e, v) in [(2, 0xFFF), (3, 0x004), (4, 0xFFF), (7, 0xABC)] {
        put12(&mut img, 512, e, v);
    }
    // Only in the second FAT: counted too.
    put12(&mut img, 1024, 10, 0x001);
    let used = fat_used(&mut Cursor::new(&img), img.len() as u64).unwrap();
    let cluster = |c: u64| 2048 + (c - 2) * 512..2048 + (c - 1) * 512;
    assert_eq!(
        used,
        [0..cluster(4).end, cluster(7), cluster(10)],
        "clusters 5 and 6 share bytes with 4 and 7 but are free"
    );
}

#[test]
fn fat_layouts_are_checked() {
    let ok = fat12_image();
    let l = fat::layout(ok[..512].try_into().unwrap(), ok.len() as u64).unwrap();
    assert_eq!((l.bits, l.clusters, l.data_start), (12, 20, 2048));
    let cases: &[(&str, usize, u32, u8)] = &[
        ("bytes per sector", 0x0B, 100, 2),
        ("sectors per cluster", 0x0D, 3, 1),
        ("no FATs", 0x10, 0, 1),
        ("many FATs", 0x10, 200, 1),
        ("partial root sector", 0x11, 15, 2),
        ("larger than the partition", 0x13, 25, 2),
        ("no data area", 0x13, 4, 2),
        ("no FAT size", 0x16, 0, 2),
        ("no signature", 510, 0, 1),
    ];
    for &(what, at, v, width) in cases {
        let mut img = fat12_image();
        match width {
            1 => img[at] = v as u8,
            _ => put16(&mut img, at, v as u16),
        }
        let sector: [u8; 512] = img[..512].try_into().unwrap();
        assert!(
            matches!(
                fat::layout(&sector, img.len() as u64),
                Err(UsageError::Fat(_))
            ),
            "{what}"
        );
    }
    // A FAT too small for its clusters: those past it count as used.
    let mut img = vec![0u8; 600 * 512];
    img[..512].copy_from_slice(&fat12_image()[..512]);
    put16(&mut img, 0x13, 600);
    let used = fat_used(&mut Cursor::new(&img), img.len() as u64).unwrap();
    // One FAT sector numbers 341 entries: clusters 2..341.
    assert_eq!(used, [0..2048, 2048 + 339 * 512..2048 + 596 * 512]);
}

fn mbr_entry(img: &mut [u8], sector: usize, i: usize, kind: u8, first: u32, len: u32) {
    let e = sector * 512 + 446 + 16 * i;
    img[e + 4] = kind;
    put32(img, e + 8, first);
    put32(img, e + 12, len);
    img[sector * 512 + 510] = 0x55;
    img[sector * 512 + 511] = 0xAA;
}

#[test]
fn mbr_primary_and_logical_partitions() {
    let mut img = vec![0u8; 4096 * 512];
    mbr_entry(&mut img, 0, 0, 0x83, 100, 400);
    mbr_entry(&mut img, 0, 1, 0x0F, 1000, 3000);
    // Logical 5 at 1002, then the next record at 2000: logical 6 at 2010,
    // then a link backwards that must not loop.
    mbr_entry(&mut img, 1000, 0, 0x83, 2, 500);
    mbr_entry(&mut img, 1000, 1, 0x05, 1000, 1000);
    mbr_entry(&mut img, 2000, 0, 0x82, 10, 100);
    mbr_entry(&mut img, 2000, 1, 0x05, 0, 1000);
    let (map, parts) = disk_usage(&mut Cursor::new(&img), img.len() as u64).unwrap();
    let spans: Vec<_> = parts
        .iter()
        .map(|p| (p.number, p.start / 512, p.len / 512, p.kind))
        .collect();
    assert_eq!(
        spans,
        [
            (1, 100, 400, "raw"),
            (5, 1002, 500, "raw"),
            (6, 2010, 100, "raw")
        ]
    );
    // Every byte is used: raw partitions, and the table and gaps around them.
    assert_eq!(map.ranges(), &[0..img.len() as u64]);

    // A boot sector with no partitions, or a bad boot indicator, is no table.
    let mut fat = fat12_image();
    fat.resize(64 * K as usize, 0);
    assert!(
        table::read(&mut Cursor::new(&fat), fat.len() as u64)
            .unwrap()
            .is_none()
    );
    let mut bad = img.clone();
    bad[446] = 0x12;
    assert!(
        table::read(&mut Cursor::new(&bad), bad.len() as u64)
            .unwrap()
            .is_none()
    );
}

#[test]
fn gpt_disks_keep_tables_and_gaps_and_read_each_partition() {
    let linux = Guid([0x11; 16]);
    let sectors = 8192;
    let mut img = image_with(
        sectors,
        &[
            (linux, 2048, 2048 + 1538 - 1, "ext"),
            (linux, 4000, 4099, "swap"),
            (ESP_TYPE, 5000, 5999, "junk"),
        ],
    );
    let ext = ext4_image(3, METADATA_CSUM);
    img[2048 * 512..2048 * 512 + ext.len()].copy_from_slice(&ext);
    img[4000 * 512 + 0xFF6..4000 * 512 + 0x1000].copy_from_slice(b"SWAPSPACE2");
    // Version 1, its last page the partition's (100 sectors: 12 pages).
    img[4000 * 512 + 1024..4000 * 512 + 1028].copy_from_slice(&1u32.to_le_bytes());
    img[4000 * 512 + 1028..4000 * 512 + 1032].copy_from_slice(&11u32.to_le_bytes());
    img[4008 * 512..4100 * 512].fill(0x5A);
    img[5000 * 512..6000 * 512].fill(0xA5);
    let size = img.len() as u64;
    let (map, parts) = disk_usage(&mut Cursor::new(&img), size).unwrap();
    let kinds: Vec<_> = parts.iter().map(|p| (p.number, p.kind, p.used)).collect();
    let ext_used: u64 = ext4_of(&ext).unwrap().iter().map(|r| r.end - r.start).sum();
    assert_eq!(
        kinds,
        [
            (1, "ext4", ext_used),
            (2, "swap", 4096),
            (3, "raw", 1000 * 512)
        ]
    );
    let ext_start = 2048 * 512;
    // The GPT and the gap before the first partition; the swap area's data and
    // the ext4 file system's free blocks are not.
    assert!(map.used_within(0, ext_start).eq([0..ext_start]));
    assert!(!map.any_used(4000 * 512 + 4096, 4100 * 512));
    // A swap header the kernel would not take (another version, an area past
    // its partition) is no reason to drop the rest: read whole.
    for (at, value) in [(1024, 2u32), (1028, 12)] {
        let mut other = img.clone();
        other[4000 * 512 + at..4000 * 512 + at + 4].copy_from_slice(&value.to_le_bytes());
        let (_, parts) = disk_usage(&mut Cursor::new(&other), size).unwrap();
        assert_eq!((parts[1].kind, parts[1].used), ("raw", 100 * 512));
    }
    assert!(!map.any_used(ext_start + 20 * K, ext_start + 257 * K));
    assert!(map.any_used(ext_start + 257 * K, ext_start + 258 * K));
    assert!(
        map.used_within(5000 * 512, 6000 * 512)
            .eq([5000 * 512..6000 * 512])
    );
    // The gap after the last partition and the backup GPT.
    assert!(map.used_within(6000 * 512, size).eq([6000 * 512..size]));
    assert_eq!(map.used_span(), size);

    // A broken ext4 file system is read raw, and says why.
    img[ext_start as usize + 1024 + 0x3A] = 0;
    let (_, parts) = disk_usage(&mut Cursor::new(&img), size).unwrap();
    assert_eq!(parts[0].kind, "raw");
    assert_eq!(parts[0].used, 1538 * 512);
    assert!(parts[0].fallback.as_deref().unwrap().contains("cleanly"));

    // A damaged GPT is an error to repair, not a guess.
    img[512 + 40] ^= 1;
    assert!(matches!(
        disk_usage(&mut Cursor::new(&img), size),
        Err(UsageError::Gpt(_))
    ));
}

#[test]
fn a_disk_without_a_table_is_read_as_its_file_system() {
    let mut img = ext4_image(3, 0);
    let fs_end = img.len() as u64;
    img.resize(img.len() + 10 * K as usize, 0xEE);
    let (map, parts) = disk_usage(&mut Cursor::new(&img), img.len() as u64).unwrap();
    assert_eq!((parts[0].number, parts[0].kind), (0, "ext4"));
    // What lies past the file system's end is not the file system's to free.
    let mut want = ext4_of(&ext4_image(3, 0)).unwrap();
    want.push(fs_end..img.len() as u64);
    assert_eq!(map.ranges(), want);
    let fat = fat12_image();
    let (_, parts) = disk_usage(&mut Cursor::new(&fat), fat.len() as u64).unwrap();
    // No "FAT12" signature string: raw.
    assert_eq!(parts[0].kind, "raw");
    let (map, parts) = disk_usage(&mut Cursor::new(vec![1u8; 4096]), 4096).unwrap();
    assert_eq!((parts.len(), map.ranges()), (1, &[0..4096][..]));
    let (map, _) = disk_usage(&mut Cursor::new(Vec::new()), 0).unwrap();
    assert!(map.ranges().is_empty());
}

#[test]
fn windows_stop_at_their_end() {
    let mut disk = Cursor::new((0..100u8).collect::<Vec<_>>());
    let mut w = Window::new(&mut disk, 10, 20);
    let mut all = Vec::new();
    w.read_to_end(&mut all).unwrap();
    assert_eq!(all, (10..30).collect::<Vec<u8>>());
    assert_eq!(w.seek(SeekFrom::End(-5)).unwrap(), 15);
    assert!(w.seek(SeekFrom::Current(-100)).is_err());
    w.seek(SeekFrom::Start(1000)).unwrap();
    assert_eq!(w.read(&mut [0u8; 4]).unwrap(), 0);
}
