//! Where a disk's partitions lie, from its GPT (the project's parser) or its MBR
//! (primary entries and the chain of logical ones), and which bytes outside them
//! hold the table itself.

use super::UsageError;
use crate::format::gpt;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

/// MBR entries count in 512-byte sectors here: an MBR disk with larger logical
/// sectors is rare, and its partitions, found in the wrong places, would hold no
/// signature and be counted whole.
const SECTOR: u64 = 512;
/// Logical partitions followed along an extended partition's chain, at most.
const MAX_LOGICAL: usize = 128;
/// A GPT's entry array as usually sized (128 entries of 128 bytes).
const GPT_ENTRIES: u64 = 16 << 10;

pub(super) struct Table {
    /// (number as Linux gives it, byte range), clipped to the disk.
    pub partitions: Vec<(u32, Range<u64>)>,
    /// Bytes that hold the table, used even where a partition claims them.
    pub reserved: Vec<Range<u64>>,
}

/// The disk's partition table; `None` where it has none (a file system on the
/// whole disk, or nothing known).
pub(super) fn read<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
) -> Result<Option<Table>, UsageError> {
    if let Some(layout) = gpt::read(disk)? {
        return Ok(Some(from_gpt(&layout, disk_size)));
    }
    mbr(disk, disk_size)
}

fn clipped(start: u64, end: u64, disk_size: u64) -> Option<Range<u64>> {
    let r = start.min(disk_size)..end.min(disk_size);
    (!r.is_empty()).then_some(r)
}

fn from_gpt(layout: &gpt::Layout, disk_size: u64) -> Table {
    let ss = u64::from(layout.sector_size);
    let partitions = layout
        .partitions
        .iter()
        .filter_map(|p| {
            let start = p.first_lba.saturating_mul(ss);
            let end = p.last_lba.saturating_add(1).saturating_mul(ss);
            Some((p.number, clipped(start, end, disk_size)?))
        })
        .collect();
    // The protective MBR, both headers and both entry arrays, wherever the
    // usable area's bounds put them.
    let head = layout.first_usable_lba.saturating_mul(ss);
    let tail = layout.last_usable_lba.saturating_add(1).saturating_mul(ss);
    let reserved = vec![
        0..head.max(2 * ss + GPT_ENTRIES),
        tail.min(disk_size)..disk_size,
        disk_size.saturating_sub(ss + GPT_ENTRIES)..disk_size,
    ];
    Table {
        partitions,
        reserved,
    }
}

/// One MBR partition entry: (boot indicator, type, first sector, sectors).
fn entry(sector: &[u8; 512], i: usize) -> (u8, u8, u64, u64) {
    let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
    let le32 = |at: usize| u64::from(u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]));
    (e[0], e[4], le32(8), le32(12))
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

/// The 512 bytes at `offset`, if the disk holds them.
fn sector<D: Read + Seek>(
    disk: &mut D,
    offset: u64,
    disk_size: u64,
) -> io::Result<Option<[u8; 512]>> {
    if offset.saturating_add(SECTOR) > disk_size {
        return Ok(None);
    }
    let mut s = [0u8; 512];
    disk.seek(SeekFrom::Start(offset))?;
    disk.read_exact(&mut s)?;
    Ok(Some(s))
}

/// An MBR as Linux accepts one: the boot signature, every boot indicator 0 or
/// 0x80, and (unlike Linux) at least one partition, so that the boot sector of
/// a FAT file system on the whole disk is read as the file system it is.
fn mbr<D: Read + Seek>(disk: &mut D, disk_size: u64) -> Result<Option<Table>, UsageError> {
    let Some(s) = sector(disk, 0, disk_size)? else {
        return Ok(None);
    };
    let entries: Vec<_> = (0..4).map(|i| entry(&s, i)).collect();
    if s[510..512] != [0x55, 0xAA]
        || entries.iter().any(|e| e.0 != 0 && e.0 != 0x80)
        || entries.iter().all(|e| e.1 == 0 || e.3 == 0)
    {
        return Ok(None);
    }
    let mut table = Table {
        partitions: Vec::new(),
        reserved: Vec::new(),
    };
    table.reserved.push(0..SECTOR);
    for (i, &(_, kind, first, sectors)) in entries.iter().enumerate() {
        if kind == 0 || sectors == 0 {
            continue;
        }
        if is_extended(kind) {
            logical(disk, first, disk_size, &mut table)?;
        } else if let Some(r) = clipped(first * SECTOR, (first + sectors) * SECTOR, disk_size) {
            table.partitions.push((i as u32 + 1, r));
        }
    }
    Ok(Some(table))
}

/// The logical partitions of the extended partition at sector `ext`: a chain of
/// boot records, each naming one partition and the next record. Followed only
/// forwards, so a chain that loops ends.
fn logical<D: Read + Seek>(
    disk: &mut D,
    ext: u64,
    disk_size: u64,
    table: &mut Table,
) -> io::Result<()> {
    let mut ebr = ext;
    let mut number = 5;
    for _ in 0..MAX_LOGICAL {
        table.reserved.push(ebr * SECTOR..(ebr + 1) * SECTOR);
        let Some(s) = sector(disk, ebr * SECTOR, disk_size)? else {
            break;
        };
        if s[510..512] != [0x55, 0xAA] {
            break;
        }
        let (_, kind, first, sectors) = entry(&s, 0);
        if kind != 0 && sectors != 0 && !is_extended(kind) {
            let start = ebr + first;
            if let Some(r) = clipped(start * SECTOR, (start + sectors) * SECTOR, disk_size) {
                table.partitions.push((number, r));
            }
            number += 1;
        }
        let (_, kind, first, sectors) = entry(&s, 1);
        let next = ext + first;
        if !is_extended(kind) || sectors == 0 || next <= ebr {
            break;
        }
        ebr = next;
    }
    Ok(())
}
