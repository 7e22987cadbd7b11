//! The ext2/3/4 superblock: reading a file system's UUID, and giving it a new one
//! in place, the way `tune2fs -U` does with `metadata_csum_seed`.
//!
//! With `metadata_csum`, every metadata checksum is seeded from the UUID, so a
//! plain UUID change would invalidate them all. The `metadata_csum_seed` feature
//! stores that seed in the superblock instead: set it to the seed of the old UUID,
//! and the UUID can change without touching anything but the superblocks (the
//! primary and every backup). Kernels since 4.4, e2fsprogs since 1.43 and GRUB
//! since 2.06 read it. A file system whose group descriptors carry the older
//! `uninit_bg` checksums (seeded by the UUID, without a seed field) is refused.

use std::io::{self, Read, Seek, SeekFrom, Write};

const SUPERBLOCK_OFFSET: u64 = 1024;
const SUPERBLOCK_SIZE: usize = 1024;
const MAGIC: u16 = 0xEF53;

// Superblock fields (struct ext4_super_block).
const S_BLOCKS_COUNT_LO: usize = 0x04;
const S_FIRST_DATA_BLOCK: usize = 0x14;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_BLOCKS_PER_GROUP: usize = 0x20;
const S_MAGIC: usize = 0x38;
const S_BLOCK_GROUP_NR: usize = 0x5A;
const S_FEATURE_COMPAT: usize = 0x5C;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_UUID: usize = 0x68;
const S_BACKUP_BGS: usize = 0x24C;
const S_BLOCKS_COUNT_HI: usize = 0x150;
const S_CHECKSUM_SEED: usize = 0x270;
const S_CHECKSUM: usize = 0x3FC;

const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("reading the file system: {0}")]
    Io(#[from] io::Error),
    #[error("no ext2/3/4 superblock (magic {0:#06x})")]
    NotExt4(u16),
    #[error("the superblock is implausible: {0}")]
    Damaged(&'static str),
    #[error(
        "the file system uses uninit_bg group descriptor checksums, which depend on its UUID; its UUID is left as it is"
    )]
    GroupChecksums,
    #[error("backup superblock of group {0} is not where the primary says")]
    BadBackup(u64),
}

/// What the superblock says, as far as a UUID change needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub block_size: u64,
    pub blocks: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    backup_bgs: [u32; 2],
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// CRC-32C as ext4 computes it: seeded with all ones, not inverted at the end.
fn ext4_crc32c(data: &[u8]) -> u32 {
    !crc32c::crc32c(data)
}

impl Superblock {
    pub(crate) fn parse(sb: &[u8]) -> Result<Superblock, Ext4Error> {
        let magic = le16(sb, S_MAGIC);
        if magic != MAGIC {
            return Err(Ext4Error::NotExt4(magic));
        }
        let log = le32(sb, S_LOG_BLOCK_SIZE);
        if log > 6 {
            return Err(Ext4Error::Damaged("block size above 64 KiB"));
        }
        let incompat = le32(sb, S_FEATURE_INCOMPAT);
        let mut blocks = le32(sb, S_BLOCKS_COUNT_LO) as u64;
        if incompat & INCOMPAT_64BIT != 0 {
            blocks |= (le32(sb, S_BLOCKS_COUNT_HI) as u64) << 32;
        }
        let blocks_per_group = le32(sb, S_BLOCKS_PER_GROUP) as u64;
        if blocks_per_group == 0 {
            return Err(Ext4Error::Damaged("no blocks per group"));
        }
        Ok(Superblock {
            uuid: sb[S_UUID..S_UUID + 16].try_into().unwrap_or_default(),
            block_size: 1024 << log,
            blocks,
            first_data_block: le32(sb, S_FIRST_DATA_BLOCK) as u64,
            blocks_per_group,
            compat: le32(sb, S_FEATURE_COMPAT),
            incompat,
            ro_compat: le32(sb, S_FEATURE_RO_COMPAT),
            backup_bgs: [le32(sb, S_BACKUP_BGS), le32(sb, S_BACKUP_BGS + 4)],
        })
    }

    fn groups(&self) -> u64 {
        self.blocks
            .saturating_sub(self.first_data_block)
            .div_ceil(self.blocks_per_group)
    }

    /// Whether group `g` carries a backup superblock.
    pub(crate) fn has_backup(&self, g: u64) -> bool {
        if g == 0 {
            return false;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.contains(&(g as u32));
        }
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut n = base;
            while n < g {
                n *= base;
            }
            n == g
        })
    }

    /// Byte offsets of every superblock copy: the primary, then the backups.
    fn copies(&self) -> Vec<(u64, u64)> {
        let mut out = vec![(0, SUPERBLOCK_OFFSET)];
        for g in 1..self.groups() {
            if self.has_backup(g) {
                let block = g * self.blocks_per_group + self.first_data_block;
                out.push((g, block * self.block_size));
            }
        }
        out
    }
}

/// A file system UUID as blkid, fstab and GRUB write it: lower-case hex in the
/// 8-4-4-4-12 groups, bytes in on-disk order.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Reads the primary superblock of the file system in `part`.
pub fn read<D: Read + Seek>(part: &mut D) -> Result<Superblock, Ext4Error> {
    let mut sb = vec![0u8; SUPERBLOCK_SIZE];
    part.seek(SeekFrom::Start(SUPERBLOCK_OFFSET))?;
    part.read_exact(&mut sb)?;
    Superblock::parse(&sb)
}

/// Gives the file system in `part` the UUID `uuid`, in every superblock copy.
/// Returns the old UUID.
pub fn set_uuid<D: Read + Write + Seek>(
    part: &mut D,
    uuid: [u8; 16],
) -> Result<[u8; 16], Ext4Error> {
    let primary = read(part)?;
    // Every copy lies in the file system, which must lie in the partition: that
    // bounds the copies to look for by what is there, not by what the
    // superblock claims.
    let len = part.seek(SeekFrom::End(0))?;
    if primary
        .blocks
        .checked_mul(primary.block_size)
        .is_none_or(|bytes| bytes > len)
    {
        return Err(Ext4Error::Damaged(
            "the file system is larger than its partition",
        ));
    }
    let csum = primary.ro_compat & RO_COMPAT_METADATA_CSUM != 0;
    if !csum && primary.ro_compat & RO_COMPAT_GDT_CSUM != 0 {
        return Err(Ext4Error::GroupChecksums);
    }
    // With metadata_csum, the seed the metadata was checksummed with: the old
    // UUID's, unless the file system already keeps its own.
    let seed =
        (csum && primary.incompat & INCOMPAT_CSUM_SEED == 0).then(|| ext4_crc32c(&primary.uuid));
    let copies = primary.copies();
    // Check every copy before changing any.
    let mut sbs = Vec::with_capacity(copies.len());
    for &(group, offset) in &copies {
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        part.seek(SeekFrom::Start(offset))?;
        part.read_exact(&mut sb)?;
        if le16(&sb, S_MAGIC) != MAGIC || (group > 0 && le16(&sb, S_BLOCK_GROUP_NR) as u64 != group)
        {
            return Err(Ext4Error::BadBackup(group));
        }
        sbs.push(sb);
    }
    // Backups first, the primary last: until the primary changes, the file
    // system is the old one, whole.
    for (&(_, offset), mut sb) in copies.iter().zip(sbs).rev() {
        if let Some(seed) = seed {
            put32(&mut sb, S_CHECKSUM_SEED, seed);
            let incompat = le32(&sb, S_FEATURE_INCOMPAT) | INCOMPAT_CSUM_SEED;
            put32(&mut sb, S_FEATURE_INCOMPAT, incompat);
        }
        sb[S_UUID..S_UUID + 16].copy_from_slice(&uuid);
        if csum {
            let sum = ext4_crc32c(&sb[..S_CHECKSUM]);
            put32(&mut sb, S_CHECKSUM, sum);
        }
        part.seek(SeekFrom::Start(offset))?;
        part.write_all(&sb)?;
    }
    part.flush()?;
    Ok(primary.uuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal superblock image: `groups` groups of 8192 1 KiB blocks,
    /// metadata_csum, sparse_super, with backups where sparse_super puts them.
    fn image(groups: u64) -> Vec<u8> {
        let bpg = 8192u64;
        let mut img = vec![0u8; (groups * bpg * 1024 + 1024) as usize];
        let mut sb = vec![0u8; SUPERBLOCK_SIZE];
        put32(&mut sb, S_BLOCKS_COUNT_LO, (groups * bpg + 1) as u32);
        put32(&mut sb, S_FIRST_DATA_BLOCK, 1);
        put32(&mut sb, S_BLOCKS_PER_GROUP, bpg as u32);
        sb[S_MAGIC..S_MAGIC + 2].copy_from_slice(&MAGIC.to_le_bytes());
        put32(
            &mut sb,
            S_FEATURE_RO_COMPAT,
            RO_COMPAT_SPARSE_SUPER | RO_COMPAT_METADATA_CSUM,
        );
        sb[S_UUID..S_UUID + 16].copy_from_slice(&[0xAA; 16]);
        let primary = Superblock::parse(&sb).unwrap();
        for (g, offset) in primary.copies() {
            let mut copy = sb.clone();
            copy[S_BLOCK_GROUP_NR..S_BLOCK_GROUP_NR + 2].copy_from_slice(&(g as u16).to_le_bytes());
            let sum = ext4_crc32c(&copy[..S_CHECKSUM]);
            put32(&mut copy, S_CHECKSUM, sum);
            img[offset as usize..offset as usize + SUPERBLOCK_SIZE].copy_from_slice(&copy);
        }
        img
    }

    #[test]
    fn backups_where_sparse_super_puts_them() {
        let sb = Superblock::parse(&image(30)[1024..2048]).unwrap();
        let groups: Vec<u64> = sb.copies().iter().map(|c| c.0).collect();
        assert_eq!(groups, [0, 1, 3, 5, 7, 9, 25, 27]);
    }

    #[test]
    fn every_copy_gets_the_uuid_and_keeps_the_old_seed() {
        let mut part = Cursor::new(image(10));
        let old = set_uuid(&mut part, [0x55; 16]).unwrap();
        assert_eq!(old, [0xAA; 16]);
        let img = part.into_inner();
        let sb = Superblock::parse(&img[1024..2048]).unwrap();
        for (_, offset) in sb.copies() {
            let copy = &img[offset as usize..offset as usize + SUPERBLOCK_SIZE];
            assert_eq!(&copy[S_UUID..S_UUID + 16], &[0x55; 16]);
            assert_ne!(le32(copy, S_FEATURE_INCOMPAT) & INCOMPAT_CSUM_SEED, 0);
            assert_eq!(le32(copy, S_CHECKSUM_SEED), ext4_crc32c(&[0xAA; 16]));
            assert_eq!(le32(copy, S_CHECKSUM), ext4_crc32c(&copy[..S_CHECKSUM]));
        }
        // Again: the seed stays the first UUID's.
        let mut part = Cursor::new(img);
        set_uuid(&mut part, [0x66; 16]).unwrap();
        let img = part.into_inner();
        assert_eq!(
            le32(&img[1024..], S_CHECKSUM_SEED),
            ext4_crc32c(&[0xAA; 16])
        );
    }

    #[test]
    fn a_file_system_larger_than_its_partition_is_refused() {
        // 2^50 blocks of 64 KiB in groups of 2^31 blocks, every group with a
        // backup: the copies' offsets pass 2^64. And 2^32 - 1 groups of one
        // block: four billion places to look for copies.
        let absurd = |log: u32, per_group: u32, blocks: u64, ro_compat: u32| {
            let mut img = image(2);
            let sb = &mut img[1024..2048];
            put32(sb, S_LOG_BLOCK_SIZE, log);
            put32(sb, S_BLOCKS_PER_GROUP, per_group);
            put32(sb, S_FEATURE_INCOMPAT, INCOMPAT_64BIT);
            put32(sb, S_BLOCKS_COUNT_LO, blocks as u32);
            put32(sb, S_BLOCKS_COUNT_HI, (blocks >> 32) as u32);
            put32(sb, S_FEATURE_RO_COMPAT, ro_compat);
            img
        };
        for img in [
            absurd(6, 1 << 31, 1 << 50, 0),
            absurd(0, 1, u32::MAX as u64, RO_COMPAT_SPARSE_SUPER),
            absurd(0, 8192, u64::MAX, RO_COMPAT_METADATA_CSUM),
        ] {
            let before = img.clone();
            let mut part = Cursor::new(img);
            assert!(matches!(
                set_uuid(&mut part, [1; 16]),
                Err(Ext4Error::Damaged(_))
            ));
            assert_eq!(part.into_inner(), before);
        }
    }

    #[test]
    fn refusals_change_nothing() {
        assert!(matches!(
            read(&mut Cursor::new(vec![0u8; 4096])),
            Err(Ext4Error::NotExt4(0))
        ));
        let mut img = image(4);
        put32(
            &mut img[1024..],
            S_FEATURE_RO_COMPAT,
            RO_COMPAT_SPARSE_SUPER | RO_COMPAT_GDT_CSUM,
        );
        let before = img.clone();
        let mut part = Cursor::new(img);
        assert!(matches!(
            set_uuid(&mut part, [1; 16]),
            Err(Ext4Error::GroupChecksums)
        ));
        assert_eq!(part.into_inner(), before);
        // A backup out of place: refused before anything is written.
        let mut img = image(4);
        let backup = (8192 + 1) * 1024;
        img[backup + S_MAGIC] = 0;
        let before = img.clone();
        let mut part = Cursor::new(img);
        assert!(matches!(
            set_uuid(&mut part, [1; 16]),
            Err(Ext4Error::BadBackup(1))
        ));
        assert_eq!(part.into_inner(), before);
        // Truncated.
        assert!(read(&mut Cursor::new(vec![0u8; 1500])).is_err());
    }
}
