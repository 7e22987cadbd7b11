//! FAT12/16/32 allocation: the reserved sectors, every FAT copy and the FAT12/16
//! root directory, and each data cluster whose entry is not zero in any FAT copy
//! (a copy out of step with the first only makes more used).
//!
//! The FAT's width follows Linux and dosfstools: 32 bits when the boot sector's
//! 16-bit FAT size is zero, else 12 or 16 by the cluster count. What Linux would
//! refuse to mount is refused.

use super::{RangeSet, UsageError};
use std::io::{Read, Seek, SeekFrom};

/// Clusters whose entries are read at a time (for FAT32, 256 KiB of each copy).
const WINDOW: u64 = 1 << 16;
/// FAT copies read at most (two is usual).
const MAX_FATS: u64 = 4;
/// Most clusters read as FAT12, by Linux (MAX_FAT12), dosfstools and Microsoft.
const FAT12_MAX: u64 = 4084;
/// Most clusters Linux accepts in a FAT16 and a FAT32 (MAX_FAT16, MAX_FAT32).
const FAT16_MAX: u64 = 0xFFF4;
const FAT32_MAX: u64 = 0x0FFF_FFF6;

/// The layout, in bytes from the start of the file system.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Layout {
    pub bits: u64,
    pub fat_start: u64,
    pub fat_bytes: u64,
    pub fats: u64,
    pub data_start: u64,
    pub cluster: u64,
    pub clusters: u64,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// The layout the boot sector `s` describes, checked against `part_len`.
pub(super) fn layout(s: &[u8; 512], part_len: u64) -> Result<Layout, UsageError> {
    use UsageError::Fat as Bad;
    if s[510..512] != [0x55, 0xAA] {
        return Err(Bad("no boot sector signature"));
    }
    let bps = le16(s, 0x0B);
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return Err(Bad("bytes per sector out of range"));
    }
    let spc = u64::from(s[0x0D]);
    if !spc.is_power_of_two() {
        return Err(Bad("sectors per cluster is not a power of two"));
    }
    let reserved = le16(s, 0x0E);
    let fats = u64::from(s[0x10]);
    if reserved == 0 || !(1..=MAX_FATS).contains(&fats) {
        return Err(Bad("no reserved sectors, or a count of FATs out of range"));
    }
    let root_entries = le16(s, 0x11);
    let total = match le16(s, 0x13) {
        0 => le32(s, 0x20),
        n => n,
    };
    let fat32 = le16(s, 0x16) == 0;
    let fat_size = if fat32 { le32(s, 0x24) } else { le16(s, 0x16) };
    if fat_size == 0 {
        return Err(Bad("the FAT has no size"));
    }
    // Linux refuses a FAT12/16 root directory of part of a sector, and places a
    // FAT32's data after one that should not be there.
    if fat32 && root_entries != 0
        || !fat32 && (root_entries == 0 || !(root_entries * 32).is_multiple_of(bps))
    {
        return Err(Bad("the root directory's size does not suit the FAT type"));
    }
    let data_sectors = reserved + fats * fat_size + root_entries * 32 / bps;
    if total <= data_sectors {
        return Err(Bad("no data area"));
    }
    if total * bps > part_len {
        return Err(Bad("the file system is larger than its partition"));
    }
    let clusters = (total - data_sectors) / spc;
    let bits = match clusters {
        _ if fat32 => 32,
        0..=FAT12_MAX => 12,
        _ => 16,
    };
    let max = match bits {
        12 => FAT12_MAX,
        16 => FAT16_MAX,
        _ => FAT32_MAX,
    };
    if clusters > max {
        return Err(Bad("more clusters than the FAT type can number"));
    }
    Ok(Layout {
        bits,
        fat_start: reserved * bps,
        fat_bytes: fat_size * bps,
        fats,
        data_start: data_sectors * bps,
        cluster: spc * bps,
        clusters,
    })
}

/// Entry `i` of the FAT bytes `fat` (which start at an even entry).
pub(super) fn entry(fat: &[u8], i: usize, bits: u64) -> u32 {
    match bits {
        12 => {
            let at = i + i / 2;
            let pair = u16::from_le_bytes([fat[at], fat[at + 1]]);
            u32::from(if i % 2 == 1 { pair >> 4 } else { pair & 0xFFF })
        }
        16 => u32::from(u16::from_le_bytes([fat[2 * i], fat[2 * i + 1]])),
        _ => {
            u32::from_le_bytes([fat[4 * i], fat[4 * i + 1], fat[4 * i + 2], fat[4 * i + 3]])
                & 0x0FFF_FFFF
        }
    }
}

/// Byte offset in a FAT of entry `e` (even for FAT12), and past entry `e - 1`.
fn offset(e: u64, bits: u64) -> u64 {
    (e * bits).div_ceil(8)
}

pub(super) fn used<D: Read + Seek>(
    part: &mut D,
    part_len: u64,
    set: &mut RangeSet,
) -> Result<(), UsageError> {
    if part_len < 512 {
        return Err(UsageError::Fat(
            "the partition is too small for a boot sector",
        ));
    }
    let mut sector = [0u8; 512];
    part.seek(SeekFrom::Start(0))?;
    part.read_exact(&mut sector)?;
    let l = layout(&sector, part_len)?;
    // Reserved sectors, the FATs, the FAT12/16 root directory.
    set.push(0..l.data_start);
    // Past the file system's last cluster, the partition holds what the file
    // system does not describe (an md RAID member's superblock, say): kept.
    set.push((l.data_start + l.clusters * l.cluster).min(part_len)..part_len);
    // Entries 0 and 1 are not clusters; a FAT too small to number every
    // cluster leaves the rest unknown, and so used (Linux does not use them).
    let entries = (l.fat_bytes * 8 / l.bits).min(l.clusters + 2);
    if entries <= 2 {
        return Err(UsageError::Fat("the FAT is too small for any cluster"));
    }
    let cluster = |e: u64| l.data_start + (e - 2) * l.cluster;
    set.push(cluster(entries)..cluster(l.clusters + 2));
    let mut fat = Vec::new();
    let mut in_use = Vec::new();
    let mut e0 = 0;
    while e0 < entries {
        let e1 = (e0 + WINDOW).min(entries);
        in_use.clear();
        in_use.resize((e1 - e0) as usize, false);
        let (from, to) = (offset(e0, l.bits), offset(e1, l.bits));
        fat.resize((to - from) as usize, 0);
        for copy in 0..l.fats {
            part.seek(SeekFrom::Start(l.fat_start + copy * l.fat_bytes + from))?;
            part.read_exact(&mut fat)?;
            for (i, used) in in_use.iter_mut().enumerate() {
                *used |= entry(&fat, i, l.bits) != 0;
            }
        }
        for (i, &used) in in_use.iter().enumerate() {
            let e = e0 + i as u64;
            if used && e >= 2 {
                set.push(cluster(e)..cluster(e + 1));
            }
        }
        e0 = e1;
    }
    Ok(())
}
