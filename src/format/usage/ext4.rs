//! ext2/3/4 allocation, group by group: the blocks set in each block bitmap,
//! plus what every group carries whatever its bitmap says (superblock and
//! descriptor copies, its bitmaps and inode table).
//!
//! Read only where the layout is exactly the one described here; otherwise an
//! error, and the caller counts the file system whole: meta_bg (descriptor
//! blocks spread over the disk), bigalloc (bitmaps of clusters, not blocks),
//! snapshots, an external journal device, features not known here, and a file
//! system not cleanly unmounted (its journal may allocate blocks its bitmaps do
//! not show yet). Checksums are checked where the file system has them: a
//! bitmap read wrong would lose data, not just space.

use super::{RangeSet, UsageError};
use crate::format::ext4::{Ext4Error, Superblock};
use std::io::{Read, Seek, SeekFrom};

// Superblock fields (struct ext4_super_block), beyond what ext4::Superblock reads.
const S_INODES_COUNT: usize = 0x00;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_LOG_CLUSTER_SIZE: usize = 0x1C;
const S_CLUSTERS_PER_GROUP: usize = 0x24;
const S_INODES_PER_GROUP: usize = 0x28;
const S_STATE: usize = 0x3A;
const S_REV_LEVEL: usize = 0x4C;
const S_INODE_SIZE: usize = 0x58;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_UUID: usize = 0x68;
const S_RESERVED_GDT_BLOCKS: usize = 0xCE;
const S_DESC_SIZE: usize = 0xFE;
const S_CHECKSUM_SEED: usize = 0x270;
const S_CHECKSUM: usize = 0x3FC;

// Group descriptor fields (struct ext4_group_desc).
const G_BLOCK_BITMAP: usize = 0x00;
const G_INODE_BITMAP: usize = 0x04;
const G_INODE_TABLE: usize = 0x08;
const G_FLAGS: usize = 0x12;
const G_BLOCK_BITMAP_CSUM_LO: usize = 0x18;
const G_CHECKSUM: usize = 0x1E;
const G_BLOCK_BITMAP_HI: usize = 0x20;
const G_INODE_BITMAP_HI: usize = 0x24;
const G_INODE_TABLE_HI: usize = 0x28;
const G_BLOCK_BITMAP_CSUM_HI: usize = 0x38;

const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;
const BG_BLOCK_UNINIT: u16 = 0x2;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Incompatible features that leave the layout read here as it is: filetype,
/// extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed, largedir,
/// inline_data, encrypt, casefold.
const INCOMPAT_KNOWN: u32 = 0x2
    | 0x40
    | INCOMPAT_64BIT
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | INCOMPAT_CSUM_SEED
    | 0x4000
    | 0x8000
    | 0x1_0000
    | 0x2_0000;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_HAS_SNAPSHOT: u32 = 0x80;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const RO_COMPAT_REPLICA: u32 = 0x800;
/// Read-only features known here, less those that change allocation
/// (snapshots, bigalloc, replica): every bit up to orphan_present.
const RO_COMPAT_KNOWN: u32 =
    0x1_FFFF & !(RO_COMPAT_HAS_SNAPSHOT | RO_COMPAT_BIGALLOC | RO_COMPAT_REPLICA);

/// How group descriptors (and, with metadata_csum, bitmaps) are checksummed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Csum {
    None,
    /// uninit_bg: CRC-16 of the UUID, group number and descriptor.
    Gdt,
    /// metadata_csum: CRC-32C from the file system's seed.
    Metadata(u32),
}

/// The layout, every field checked against the partition.
struct Geometry {
    sb: Superblock,
    uuid: [u8; 16],
    groups: u64,
    desc_size: u64,
    /// The descriptor table, and the blocks kept free after it for growing it.
    gdt_blocks: u64,
    reserved_gdt: u64,
    itable_blocks: u64,
    csum: Csum,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// CRC-32C as the kernel's `ext4_chksum` runs it: from `seed`, not inverted.
fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// CRC-16 (polynomial 0x8005, reflected) as the kernel's `crc16`.
pub(super) fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn geometry<D: Read + Seek>(part: &mut D, part_len: u64) -> Result<Geometry, UsageError> {
    use UsageError::{Ext4 as Bad, Ext4Unsupported as Unsupported};
    if part_len < 2048 {
        return Err(Bad("the partition is too small to hold a superblock"));
    }
    let mut raw = [0u8; 1024];
    part.seek(SeekFrom::Start(1024))?;
    part.read_exact(&mut raw)?;
    let sb = Superblock::parse(&raw).map_err(|e| match e {
        Ext4Error::Io(e) => UsageError::Io(e),
        Ext4Error::Damaged(what) => Bad(what),
        _ => Bad("no superblock"),
    })?;
    let incompat = le32(&raw, S_FEATURE_INCOMPAT);
    let ro_compat = le32(&raw, S_FEATURE_RO_COMPAT);
    let state = le16(&raw, S_STATE);
    if incompat & INCOMPAT_RECOVER != 0 || state & STATE_VALID == 0 || state & STATE_ERROR != 0 {
        return Err(Unsupported(
            "is mounted, was not cleanly unmounted or has errors (unmount it or run e2fsck -f, then capture again to store only what it uses)",
        ));
    }
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err(Unsupported("is an external journal device"));
    }
    if incompat & INCOMPAT_META_BG != 0 {
        return Err(Unsupported(
            "uses meta_bg (group descriptors spread over the disk), which is not read here",
        ));
    }
    if ro_compat & RO_COMPAT_BIGALLOC != 0 {
        return Err(Unsupported(
            "uses bigalloc (bitmaps of clusters), which is not read here",
        ));
    }
    if incompat & !INCOMPAT_KNOWN != 0 || ro_compat & !RO_COMPAT_KNOWN != 0 {
        return Err(Unsupported("has features not known here"));
    }
    let csum = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        if crc32c(!0, &raw[..S_CHECKSUM]) != le32(&raw, S_CHECKSUM) {
            return Err(Bad("the superblock's checksum does not match"));
        }
        let seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(&raw, S_CHECKSUM_SEED)
        } else {
            crc32c(!0, &raw[S_UUID..S_UUID + 16])
        };
        Csum::Metadata(seed)
    } else if ro_compat & RO_COMPAT_GDT_CSUM != 0 {
        Csum::Gdt
    } else {
        Csum::None
    };
    let bs = sb.block_size;
    if sb.first_data_block != u64::from(bs == 1024) {
        return Err(Bad("the first data block does not suit the block size"));
    }
    // One bitmap block per group, of blocks (not clusters).
    let bpg = sb.blocks_per_group;
    if !(256..=8 * bs).contains(&bpg) || !bpg.is_multiple_of(8) {
        return Err(Bad("blocks per group out of range"));
    }
    if le32(&raw, S_LOG_CLUSTER_SIZE) != le32(&raw, S_LOG_BLOCK_SIZE)
        || u64::from(le32(&raw, S_CLUSTERS_PER_GROUP)) != bpg
    {
        return Err(Bad("clusters differ from blocks without bigalloc"));
    }
    if sb.blocks <= sb.first_data_block {
        return Err(Bad("no blocks"));
    }
    if sb.blocks.checked_mul(bs).is_none_or(|len| len > part_len) {
        return Err(Bad("the file system is larger than its partition"));
    }
    let groups = (sb.blocks - sb.first_data_block).div_ceil(bpg);
    let ipg = u64::from(le32(&raw, S_INODES_PER_GROUP));
    if !(1..=8 * bs).contains(&ipg) {
        return Err(Bad("inodes per group out of range"));
    }
    if groups.checked_mul(ipg) != Some(u64::from(le32(&raw, S_INODES_COUNT))) {
        return Err(Bad("the inode count does not match the group count"));
    }
    let inode_size = match le32(&raw, S_REV_LEVEL) {
        0 => 128,
        _ => u64::from(le16(&raw, S_INODE_SIZE)),
    };
    if !inode_size.is_power_of_two() || !(128..=bs).contains(&inode_size) {
        return Err(Bad("inode size out of range"));
    }
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        u64::from(le16(&raw, S_DESC_SIZE))
    } else {
        32
    };
    if !desc_size.is_power_of_two() || !(32..=1024).contains(&desc_size) {
        return Err(Bad("group descriptor size out of range"));
    }
    let gdt_blocks = (groups * desc_size).div_ceil(bs);
    let reserved_gdt = u64::from(le16(&raw, S_RESERVED_GDT_BLOCKS));
    if reserved_gdt > bs / 4 {
        return Err(Bad("too many reserved descriptor blocks"));
    }
    // Without meta_bg, the descriptor table follows the superblock in group 0.
    let gdt_end = sb.first_data_block + 1 + gdt_blocks + reserved_gdt;
    if gdt_end > sb.blocks.min(sb.first_data_block + bpg) {
        return Err(Bad(
            "the group descriptor table does not fit in the first group",
        ));
    }
    Ok(Geometry {
        uuid: raw[S_UUID..S_UUID + 16].try_into().unwrap_or_default(),
        groups,
        desc_size,
        gdt_blocks,
        reserved_gdt,
        itable_blocks: (ipg * inode_size).div_ceil(bs),
        csum,
        sb,
    })
}

impl Geometry {
    /// Whether descriptor `desc` of group `g` carries the checksum it should.
    fn desc_ok(&self, g: u64, desc: &[u8]) -> bool {
        let group = (g as u32).to_le_bytes();
        let rest = &desc[G_CHECKSUM + 2..];
        let sum = match self.csum {
            Csum::None => return true,
            Csum::Gdt => {
                let crc = crc16(!0, &self.uuid);
                let crc = crc16(crc, &group);
                let crc = crc16(crc, &desc[..G_CHECKSUM]);
                crc16(crc, rest)
            }
            Csum::Metadata(seed) => {
                let crc = crc32c(seed, &group);
                let crc = crc32c(crc, &desc[..G_CHECKSUM]);
                let crc = crc32c(crc, &[0, 0]);
                crc32c(crc, rest) as u16
            }
        };
        sum == le16(desc, G_CHECKSUM)
    }

    /// Whether group `g`'s block bitmap carries the checksum its descriptor says.
    fn bitmap_ok(&self, desc: &[u8], bitmap: &[u8]) -> bool {
        let Csum::Metadata(seed) = self.csum else {
            return true;
        };
        let sum = crc32c(seed, &bitmap[..(self.sb.blocks_per_group / 8) as usize]);
        let lo = u32::from(le16(desc, G_BLOCK_BITMAP_CSUM_LO));
        if desc.len() >= G_BLOCK_BITMAP_CSUM_HI + 2 {
            sum == lo | u32::from(le16(desc, G_BLOCK_BITMAP_CSUM_HI)) << 16
        } else {
            sum & 0xFFFF == lo
        }
    }

    /// A block address from a descriptor's low and (64-byte descriptors) high half.
    fn block(&self, desc: &[u8], lo: usize, hi: usize) -> u64 {
        let high = if self.desc_size >= 64 {
            u64::from(le32(desc, hi)) << 32
        } else {
            0
        };
        u64::from(le32(desc, lo)) | high
    }
}

/// Calls `run(start, end)` for every run of set bits among the first `n` bits
/// of `bitmap` (bit 0 is the low bit of byte 0, as ext4 numbers them).
pub(super) fn set_runs(bitmap: &[u8], n: u64, mut run: impl FnMut(u64, u64)) {
    let n = n.min(bitmap.len() as u64 * 8);
    let mut open = None;
    let mut i = 0;
    while i < n {
        let byte = bitmap[(i / 8) as usize];
        // Whole bytes of one value, the common case, at once.
        let (set, step) = if i % 8 == 0 && i + 8 <= n && (byte == 0 || byte == 0xFF) {
            (byte == 0xFF, 8)
        } else {
            (byte >> (i % 8) & 1 == 1, 1)
        };
        match (set, open) {
            (true, None) => open = Some(i),
            (false, Some(start)) => {
                run(start, i);
                open = None;
            }
            _ => {}
        }
        i += step;
    }
    if let Some(start) = open {
        run(start, n);
    }
}

pub(super) fn used<D: Read + Seek>(
    part: &mut D,
    part_len: u64,
    set: &mut RangeSet,
) -> Result<(), UsageError> {
    let geo = geometry(part, part_len)?;
    let sb = &geo.sb;
    let bs = sb.block_size;
    let blocks = |start: u64, count: u64| start * bs..(start + count) * bs;
    // The boot block and the primary superblock.
    set.push(0..((sb.first_data_block + 1) * bs).max(2048));
    // Past the file system's end, the partition holds what the file system
    // does not describe (an md RAID member's superblock, say): kept.
    set.push((sb.blocks * bs).min(part_len)..part_len);
    let mut desc = vec![0u8; geo.desc_size as usize];
    let mut bitmap = vec![0u8; bs as usize];
    let table = (sb.first_data_block + 1) * bs;
    for g in 0..geo.groups {
        part.seek(SeekFrom::Start(table + g * geo.desc_size))?;
        part.read_exact(&mut desc)?;
        if !geo.desc_ok(g, &desc) {
            return Err(UsageError::Ext4(
                "a group descriptor's checksum does not match",
            ));
        }
        let block_bitmap = geo.block(&desc, G_BLOCK_BITMAP, G_BLOCK_BITMAP_HI);
        let inode_bitmap = geo.block(&desc, G_INODE_BITMAP, G_INODE_BITMAP_HI);
        let inode_table = geo.block(&desc, G_INODE_TABLE, G_INODE_TABLE_HI);
        if block_bitmap >= sb.blocks
            || inode_bitmap >= sb.blocks
            || inode_table
                .checked_add(geo.itable_blocks)
                .is_none_or(|end| end > sb.blocks)
        {
            return Err(UsageError::Ext4(
                "a group descriptor points outside the file system",
            ));
        }
        set.push(blocks(block_bitmap, 1));
        set.push(blocks(inode_bitmap, 1));
        set.push(blocks(inode_table, geo.itable_blocks));
        let first = sb.first_data_block + g * sb.blocks_per_group;
        let count = sb.blocks_per_group.min(sb.blocks - first);
        if g == 0 || sb.has_backup(g) {
            let copy = 1 + geo.gdt_blocks + geo.reserved_gdt;
            set.push(blocks(first, copy.min(count)));
        }
        // An uninitialised bitmap (only with descriptor checksums, as the kernel
        // reads the flag) is junk: its group holds only what was pushed above.
        if geo.csum != Csum::None && le16(&desc, G_FLAGS) & BG_BLOCK_UNINIT != 0 {
            continue;
        }
        part.seek(SeekFrom::Start(block_bitmap * bs))?;
        part.read_exact(&mut bitmap)?;
        if !geo.bitmap_ok(&desc, &bitmap) {
            return Err(UsageError::Ext4("a block bitmap's checksum does not match"));
        }
        set_runs(&bitmap, count, |a, b| set.push(blocks(first + a, b - a)));
    }
    Ok(())
}
