//! GUID partition tables: reading the primary header and entries of an image or disk.
//!
//! Works on any `Read + Seek`; never on a device directly, so it is unit tested on
//! byte buffers. Checks both CRCs and every bound before trusting a field.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

/// A GUID as stored on disk (mixed-endian, the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Guid(pub [u8; 16]);

/// EFI system partition.
pub const ESP_TYPE: Guid = Guid::from_fields(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// BIOS boot partition (GRUB's core image on GPT disks).
pub const BIOS_BOOT_TYPE: Guid = Guid::from_fields(
    0x21686148,
    0x6449,
    0x6E6F,
    [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);

impl Guid {
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One used partition entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// 1-based index in the entry array (the number Linux gives the partition).
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// What a GPT says about a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub sector_size: u32,
    pub disk_guid: Guid,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
    #[error("GPT header {0}")]
    BadHeader(&'static str),
    #[error("GPT header checksum mismatch")]
    HeaderCrc,
    #[error("GPT partition entries checksum mismatch")]
    EntriesCrc,
}

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MAX_ENTRIES_BYTES: u64 = 1 << 20;

// Byte offsets of the GPT header's fields (UEFI spec, table 5-5).
const H_SIZE: usize = 12;
const H_CRC: usize = 16;
const H_MY_LBA: usize = 24;
const H_ALTERNATE_LBA: usize = 32;
const H_FIRST_USABLE: usize = 40;
const H_LAST_USABLE: usize = 48;
const H_DISK_GUID: usize = 56;
const H_ENTRIES_LBA: usize = 72;
const H_ENTRY_COUNT: usize = 80;
const H_ENTRY_SIZE: usize = 84;
const H_ENTRIES_CRC: usize = 88;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Reads the primary GPT, trying 512- and 4096-byte sectors. `Ok(None)` means there
/// is no GPT signature at all (a raw filesystem or an MBR-only image).
pub fn read<R: Read + Seek>(disk: &mut R) -> Result<Option<Layout>, GptError> {
    for sector_size in [512u32, 4096] {
        let mut header = vec![0u8; sector_size as usize];
        disk.seek(SeekFrom::Start(sector_size as u64))?;
        match disk.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e.into()),
        }
        if &header[..8] == SIGNATURE {
            return parse(disk, sector_size, &header).map(Some);
        }
    }
    Ok(None)
}

fn parse<R: Read + Seek>(
    disk: &mut R,
    sector_size: u32,
    header: &[u8],
) -> Result<Layout, GptError> {
    let header_size = le32(header, H_SIZE) as usize;
    if !(92..=sector_size as usize).contains(&header_size) {
        return Err(GptError::BadHeader("size is out of range"));
    }
    let mut crc_input = header[..header_size].to_vec();
    crc_input[H_CRC..H_CRC + 4].fill(0);
    if crc32fast::hash(&crc_input) != le32(header, H_CRC) {
        return Err(GptError::HeaderCrc);
    }
    if le64(header, H_MY_LBA) != 1 {
        return Err(GptError::BadHeader("does not say it lives at LBA 1"));
    }
    let first_usable_lba = le64(header, H_FIRST_USABLE);
    let last_usable_lba = le64(header, H_LAST_USABLE);
    if first_usable_lba > last_usable_lba {
        return Err(GptError::BadHeader(
            "has first usable LBA after last usable LBA",
        ));
    }
    let disk_guid = Guid(
        header[H_DISK_GUID..H_DISK_GUID + 16]
            .try_into()
            .unwrap_or_default(),
    );
    let entries_lba = le64(header, H_ENTRIES_LBA);
    let count = le32(header, H_ENTRY_COUNT) as u64;
    let entry_size = le32(header, H_ENTRY_SIZE) as u64;
    if entry_size < 128 || !entry_size.is_multiple_of(8) || entry_size > 4096 {
        return Err(GptError::BadHeader("has an invalid partition entry size"));
    }
    let total = count * entry_size;
    if total > MAX_ENTRIES_BYTES || entries_lba < 2 {
        return Err(GptError::BadHeader("has an invalid partition entry array"));
    }
    let offset = entries_lba
        .checked_mul(sector_size as u64)
        .ok_or(GptError::BadHeader("has an invalid partition entry array"))?;
    let mut entries = vec![0u8; total as usize];
    disk.seek(SeekFrom::Start(offset))?;
    disk.read_exact(&mut entries)?;
    if crc32fast::hash(&entries) != le32(header, H_ENTRIES_CRC) {
        return Err(GptError::EntriesCrc);
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size as usize).enumerate() {
        let type_guid = Guid(e[0..16].try_into().unwrap_or_default());
        if type_guid.is_nil() {
            continue;
        }
        let first_lba = le64(e, 32);
        let last_lba = le64(e, 40);
        if first_lba > last_lba || last_lba > last_usable_lba || first_lba < first_usable_lba {
            return Err(GptError::BadHeader(
                "lists a partition outside the usable area",
            ));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            type_guid,
            unique_guid: Guid(e[16..32].try_into().unwrap_or_default()),
            first_lba,
            last_lba,
            attributes: le64(e, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(Layout {
        sector_size,
        disk_guid,
        first_usable_lba,
        last_usable_lba,
        partitions,
    })
}

/// Gives partition `number` of the GPT in `head` a new unique GUID, fixing both
/// checksums of the primary copy (run before [`relocate`], which derives the backup).
pub fn renew_partition_guid(head: &mut [u8], number: u32, guid: Guid) -> Result<(), RelocateError> {
    let (_, t) = table_in(head)?;
    if number == 0 || number as usize > t.count {
        return Err(RelocateError::Damaged(format!(
            "no partition entry {number}"
        )));
    }
    let at = t.entries_at + (number as usize - 1) * t.entry_size;
    head[at + 16..at + 32].copy_from_slice(&guid.0);
    let crc = crc32fast::hash(&head[t.entries_at..t.entries_at + t.entries_len()]);
    let header = &mut head[t.ss..t.ss * 2];
    header[H_ENTRIES_CRC..H_ENTRIES_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    seal(header, t.header_size);
    Ok(())
}

/// Where the primary GPT in an image's head keeps its parts.
struct Table {
    /// Sector size: the primary header is at byte `ss`.
    ss: usize,
    header_size: usize,
    entries_at: usize,
    count: usize,
    entry_size: usize,
}

impl Table {
    fn entries_len(&self) -> usize {
        self.count * self.entry_size
    }
}

/// The GPT in `head` (checked by [`read`]) and where its parts are.
fn table_in(head: &[u8]) -> Result<(Layout, Table), RelocateError> {
    let layout = read(&mut io::Cursor::new(head))
        .map_err(|e| RelocateError::Damaged(e.to_string()))?
        .ok_or(RelocateError::NoGpt(head.len()))?;
    let ss = layout.sector_size as usize;
    let header = &head[ss..];
    let table = Table {
        ss,
        header_size: le32(header, H_SIZE) as usize,
        entries_at: le64(header, H_ENTRIES_LBA) as usize * ss,
        count: le32(header, H_ENTRY_COUNT) as usize,
        entry_size: le32(header, H_ENTRY_SIZE) as usize,
    };
    Ok((layout, table))
}

/// Recomputes a header's own checksum.
fn seal(header: &mut [u8], header_size: usize) {
    header[H_CRC..H_CRC + 4].fill(0);
    let crc = crc32fast::hash(&header[..header_size]);
    header[H_CRC..H_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A partition to add when rewriting a GPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPartition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub name: String,
    /// Size in bytes; placed in the free space at the end, 1 MiB aligned.
    pub size: u64,
}

/// The GPT of an image, rewritten for the disk it was deployed to.
#[derive(Debug)]
pub struct Relocated {
    /// Bytes to write at `backup_offset`: backup entries then backup header.
    pub backup: Vec<u8>,
    pub backup_offset: u64,
    pub layout: Layout,
    /// The partition added, if one was asked for.
    pub added: Option<Partition>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelocateError {
    #[error("the image has no GPT in its first {0} bytes")]
    NoGpt(usize),
    #[error("the image's GPT is damaged: {0}")]
    Damaged(String),
    #[error("the disk ({disk} bytes) is smaller than the image's partitions need")]
    DiskTooSmall { disk: u64 },
    #[error(
        "no room for a {needed}-byte {name} partition after the image's last partition; use a disk at least {needed} bytes larger than the image or give the image one"
    )]
    NoRoom { name: String, needed: u64 },
    #[error("the GPT has no free entry for another partition")]
    NoFreeEntry,
}

/// Rewrites the GPT held in `head` (the image's first bytes, as written at the
/// start of the disk) for a disk of `disk_size` bytes: the last usable LBA and the
/// backup header move to the real end, the protective MBR covers the disk, and
/// `add`, if given, becomes a new partition in the free space at the end, and
/// `disk_guid`, if given, replaces the disk GUID (so two disks deployed from one
/// image can be told apart). `head` is patched in place; the backup copy is
/// returned to be written at the end.
pub fn relocate(
    head: &mut [u8],
    disk_size: u64,
    add: Option<&NewPartition>,
    disk_guid: Option<Guid>,
) -> Result<Relocated, RelocateError> {
    let (layout, t) = table_in(head)?;
    let ss = t.ss as u64;
    let h = t.ss;
    let (count, entry_size, entries_at) = (t.count, t.entry_size, t.entries_at);
    let entries_len = t.entries_len();
    let entry_sectors = (entries_len as u64).div_ceil(ss);
    let disk_sectors = disk_size / ss;
    let max_part = layout
        .partitions
        .iter()
        .map(|p| p.last_lba)
        .max()
        .unwrap_or(0);
    // The usable area must still start inside it (a header may say anything up
    // to 2^64, and the new partition's place is counted from there).
    if disk_sectors < 2 + 2 * entry_sectors + 2
        || disk_sectors - 2 - entry_sectors <= max_part
        || disk_sectors - 2 - entry_sectors < layout.first_usable_lba
    {
        return Err(RelocateError::DiskTooSmall { disk: disk_size });
    }
    let last_usable = disk_sectors - 2 - entry_sectors;
    let mut layout = layout;
    layout.last_usable_lba = last_usable;

    let mut added = None;
    if let Some(new) = add {
        let align = (1 << 20) / ss;
        let first = (max_part + 1).max(layout.first_usable_lba).div_ceil(align) * align;
        let sectors = new.size.div_ceil(ss);
        if first + sectors - 1 > last_usable {
            return Err(RelocateError::NoRoom {
                name: new.name.clone(),
                needed: new.size,
            });
        }
        let slot = (0..count)
            .find(|i| head[entries_at + i * entry_size..][..16] == [0u8; 16])
            .ok_or(RelocateError::NoFreeEntry)?;
        let e = &mut head[entries_at + slot * entry_size..][..entry_size];
        e.fill(0);
        e[0..16].copy_from_slice(&new.type_guid.0);
        e[16..32].copy_from_slice(&new.unique_guid.0);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&(first + sectors - 1).to_le_bytes());
        for (j, u) in new.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
        let part = Partition {
            number: slot as u32 + 1,
            type_guid: new.type_guid,
            unique_guid: new.unique_guid,
            first_lba: first,
            last_lba: first + sectors - 1,
            attributes: 0,
            name: new.name.clone(),
        };
        layout.partitions.push(part.clone());
        added = Some(part);
    }
    let entries = head[entries_at..entries_at + entries_len].to_vec();
    let entries_crc = crc32fast::hash(&entries);

    let put = |hdr: &mut [u8], at: usize, value: u64| {
        hdr[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    let mut primary = head[h..h * 2].to_vec();
    if let Some(guid) = disk_guid {
        primary[H_DISK_GUID..H_DISK_GUID + 16].copy_from_slice(&guid.0);
        layout.disk_guid = guid;
    }
    put(&mut primary, H_ALTERNATE_LBA, disk_sectors - 1);
    put(&mut primary, H_LAST_USABLE, last_usable);
    primary[H_ENTRIES_CRC..H_ENTRIES_CRC + 4].copy_from_slice(&entries_crc.to_le_bytes());
    let mut backup_header = primary.clone();
    seal(&mut primary, t.header_size);
    head[h..h * 2].copy_from_slice(&primary);

    let backup_entries_lba = disk_sectors - 1 - entry_sectors;
    put(&mut backup_header, H_MY_LBA, disk_sectors - 1);
    put(&mut backup_header, H_ALTERNATE_LBA, 1);
    put(&mut backup_header, H_ENTRIES_LBA, backup_entries_lba);
    seal(&mut backup_header, t.header_size);
    let mut backup = entries;
    backup.resize((entry_sectors * ss) as usize, 0);
    backup.extend_from_slice(&backup_header);

    // Protective MBR: one 0xEE partition covering the disk (capped at 2^32-1).
    if head[510..512] == [0x55, 0xAA] && head[446 + 4] == 0xEE {
        // Counted in logical sectors, which are 4096 bytes on a 4Kn disk.
        let sectors = (disk_sectors - 1).min(u32::MAX as u64) as u32;
        head[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    }
    Ok(Relocated {
        backup,
        backup_offset: backup_entries_lba * ss,
        layout,
        added,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds a minimal valid GPT image of `sectors` 512-byte sectors with the given
    /// (type, first, last, name) partitions. Used by other modules' tests too.
    pub(crate) fn image_with(sectors: u64, parts: &[(Guid, u64, u64, &str)]) -> Vec<u8> {
        image_with_sector_size(512, sectors, parts)
    }

    /// A GPT image of `sectors` sectors of `ss` bytes, 128 entries of 128 bytes.
    pub(crate) fn image_with_sector_size(
        ss: usize,
        sectors: u64,
        parts: &[(Guid, u64, u64, &str)],
    ) -> Vec<u8> {
        let mut img = vec![0u8; sectors as usize * ss];
        let mut entries = vec![0u8; 128 * 128];
        let entry_sectors = entries.len().div_ceil(ss) as u64;
        for (i, (ty, first, last, name)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&ty.0);
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        img[2 * ss..2 * ss + entries.len()].copy_from_slice(&entries);
        let h = &mut img[ss..ss + 512];
        h[..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
        h[40..48].copy_from_slice(&(2 + entry_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 2 - entry_sectors).to_le_bytes());
        h[56..72].copy_from_slice(&[0xAB; 16]);
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        img
    }

    #[test]
    fn reads_partitions_back() {
        let img = image_with(4096, &[(ESP_TYPE, 2048, 4000, "EFI system")]);
        let layout = read(&mut Cursor::new(&img)).unwrap().unwrap();
        assert_eq!(layout.sector_size, 512);
        assert_eq!(layout.partitions.len(), 1);
        let p = &layout.partitions[0];
        assert_eq!((p.number, p.first_lba, p.last_lba), (1, 2048, 4000));
        assert_eq!(
            p.type_guid.to_string(),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        assert_eq!(p.name, "EFI system");
    }

    #[test]
    fn no_signature_is_not_an_error() {
        assert!(read(&mut Cursor::new(vec![0u8; 8192])).unwrap().is_none());
        assert!(read(&mut Cursor::new(vec![0u8; 100])).unwrap().is_none());
    }

    #[test]
    fn corruption_is_detected() {
        let good = image_with(4096, &[(ESP_TYPE, 2048, 4000, "x")]);
        let mut bad_header = good.clone();
        bad_header[512 + 40] ^= 1;
        assert!(matches!(
            read(&mut Cursor::new(&bad_header)),
            Err(GptError::HeaderCrc)
        ));
        let mut bad_entries = good.clone();
        bad_entries[1024 + 33] ^= 1;
        assert!(matches!(
            read(&mut Cursor::new(&bad_entries)),
            Err(GptError::EntriesCrc)
        ));
        let truncated = &good[..1500];
        assert!(read(&mut Cursor::new(truncated)).is_err());
    }

    /// `image` on a disk of `disk_size` bytes with a 1 MiB state partition added,
    /// its head first patched by `patch`, as the install sequence writes it.
    fn deploy_with_state_partition(
        image: &[u8],
        disk_size: u64,
        patch: impl FnOnce(&mut [u8]),
    ) -> (Vec<u8>, Relocated) {
        let mut disk = image.to_vec();
        disk.resize(disk_size as usize, 0);
        let mut head = disk[..64 << 10].to_vec();
        patch(&mut head);
        let new = NewPartition {
            type_guid: Guid([7; 16]),
            unique_guid: Guid([8; 16]),
            name: "imprint-state".into(),
            size: 1 << 20,
        };
        let r = relocate(&mut head, disk_size, Some(&new), Some(Guid([9; 16]))).unwrap();
        disk[..head.len()].copy_from_slice(&head);
        disk[r.backup_offset as usize..][..r.backup.len()].copy_from_slice(&r.backup);
        assert_eq!(r.backup_offset + r.backup.len() as u64, disk_size);
        (disk, r)
    }

    #[test]
    fn relocates_to_a_larger_disk_and_adds_a_partition() {
        let image = image_with(4096, &[(ESP_TYPE, 2048, 4000, "EFI system")]);
        let disk_size = 16u64 << 20;
        let (disk, r) = deploy_with_state_partition(&image, disk_size, |_| {});

        let layout = read(&mut Cursor::new(&disk)).unwrap().unwrap();
        assert_eq!(layout.last_usable_lba, disk_size / 512 - 34);
        assert_eq!(layout.disk_guid, Guid([9; 16]));
        assert_eq!(r.layout.disk_guid, Guid([9; 16]));
        assert_eq!(layout.partitions.len(), 2);
        let state = &layout.partitions[1];
        assert_eq!(state.name, "imprint-state");
        assert_eq!(state.first_lba % 2048, 0);
        assert!(state.first_lba > 4000);
        assert_eq!((state.last_lba - state.first_lba + 1) * 512, 1 << 20);
        assert_eq!(Some(state.clone()), r.added);

        // The backup header is valid where it claims to be and points back at LBA 1.
        let last = (disk_size / 512 - 1) as usize * 512;
        let bh = &disk[last..last + 512];
        assert_eq!(&bh[..8], SIGNATURE);
        assert_eq!(le64(bh, 24), disk_size / 512 - 1);
        assert_eq!(le64(bh, 32), 1);
        let mut crc_input = bh[..92].to_vec();
        crc_input[16..20].fill(0);
        assert_eq!(crc32fast::hash(&crc_input), le32(bh, 16));
        let entries_at = le64(bh, 72) as usize * 512;
        assert_eq!(
            crc32fast::hash(&disk[entries_at..entries_at + 128 * 128]),
            le32(bh, 88)
        );
    }

    #[test]
    fn relocation_refusals() {
        let image = image_with(4096, &[(ESP_TYPE, 2048, 4000, "EFI system")]);
        let mut head = image[..64 << 10].to_vec();
        let new = NewPartition {
            type_guid: Guid([7; 16]),
            unique_guid: Guid([8; 16]),
            name: "imprint-state".into(),
            size: 8 << 20,
        };
        assert!(matches!(
            relocate(&mut head.clone(), 4096 * 512, Some(&new), None),
            Err(RelocateError::NoRoom { .. })
        ));
        assert!(matches!(
            relocate(&mut head, 3000 * 512, None, None),
            Err(RelocateError::DiskTooSmall { .. })
        ));
        let mut blank = vec![0u8; 64 << 10];
        assert!(matches!(
            relocate(&mut blank, 1 << 30, None, None),
            Err(RelocateError::NoGpt(_))
        ));
    }

    #[test]
    fn relocation_refuses_a_usable_area_past_the_disk() {
        // A header whose usable area starts near 2^64: the state partition's
        // place, aligned up from there, must not wrap round to LBA 0.
        let mut head = image_with(4096, &[])[..64 << 10].to_vec();
        for first in [u64::MAX, u64::MAX - 100, 1 << 40] {
            let header = &mut head[512..1024];
            header[H_FIRST_USABLE..H_FIRST_USABLE + 8].copy_from_slice(&first.to_le_bytes());
            header[H_LAST_USABLE..H_LAST_USABLE + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            seal(header, 92);
            let new = NewPartition {
                type_guid: Guid([7; 16]),
                unique_guid: Guid([8; 16]),
                name: "imprint-state".into(),
                size: 1 << 20,
            };
            assert_eq!(
                relocate(&mut head.clone(), 16 << 20, Some(&new), None).unwrap_err(),
                RelocateError::DiskTooSmall { disk: 16 << 20 }
            );
        }
    }

    #[test]
    fn partition_guids_can_be_renewed() {
        let image = image_with(4096, &[(ESP_TYPE, 2048, 4000, "EFI system")]);
        let mut head = image[..64 << 10].to_vec();
        renew_partition_guid(&mut head, 1, Guid([5; 16])).unwrap();
        let layout = read(&mut Cursor::new(&head)).unwrap().unwrap();
        assert_eq!(layout.partitions[0].unique_guid, Guid([5; 16]));
        assert!(renew_partition_guid(&mut head, 200, Guid([5; 16])).is_err());
        let r = relocate(&mut head, 8 << 20, None, None).unwrap();
        assert_eq!(r.layout.partitions[0].unique_guid, Guid([5; 16]));
    }

    #[test]
    fn disks_with_4096_byte_sectors() {
        let ss = 4096usize;
        let mut image = image_with_sector_size(ss, 1024, &[(ESP_TYPE, 256, 511, "EFI system")]);
        image[446 + 4] = 0xEE;
        image[510..512].copy_from_slice(&[0x55, 0xAA]);
        let layout = read(&mut Cursor::new(&image)).unwrap().unwrap();
        assert_eq!(layout.sector_size, 4096);
        assert_eq!(layout.first_usable_lba, 6);
        assert_eq!(layout.partitions[0].first_lba, 256);

        let disk_size = 16u64 << 20;
        let (disk, _) = deploy_with_state_partition(&image, disk_size, |head| {
            renew_partition_guid(head, 1, Guid([5; 16])).unwrap()
        });

        let sectors = disk_size / ss as u64;
        let layout = read(&mut Cursor::new(&disk)).unwrap().unwrap();
        assert_eq!(layout.sector_size, 4096);
        assert_eq!(layout.last_usable_lba, sectors - 2 - 4);
        assert_eq!(layout.partitions[0].unique_guid, Guid([5; 16]));
        let state = &layout.partitions[1];
        assert_eq!(state.first_lba % 256, 0, "1 MiB aligned");
        assert_eq!((state.last_lba - state.first_lba + 1) * 4096, 1 << 20);
        // The protective MBR counts 4096-byte sectors.
        assert_eq!(le32(&disk, 446 + 12) as u64, sectors - 1);
        // The backup header fills the last 4096-byte sector and points back at LBA 1.
        let bh = &disk[disk.len() - ss..];
        assert_eq!(&bh[..8], SIGNATURE);
        assert_eq!(le64(bh, 24), sectors - 1);
        assert_eq!(le64(bh, 32), 1);
        let entries_at = le64(bh, 72) as usize * ss;
        assert_eq!(entries_at, disk.len() - 5 * ss);
        assert_eq!(
            crc32fast::hash(&disk[entries_at..entries_at + 128 * 128]),
            le32(bh, 88)
        );
    }
}
