//! The FAT boot sector's volume ID: what `/etc/fstab` and boot loaders call a FAT
//! file system's UUID (written like `1A2B-3C4D`), read and changed in place (in the FAT32
//! backup boot sector too).

use std::io::{self, Read, Seek, SeekFrom, Write};

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("reading the file system: {0}")]
    Io(#[from] io::Error),
    #[error("no FAT boot sector with an extended boot signature")]
    NotFat,
}

/// Where the volume ID sits, by FAT flavour: (extended boot signature, ID).
fn id_offset(sector: &[u8; 512]) -> Option<usize> {
    if sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([sector[0x0B], sector[0x0C]]);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    let fat16_size = u16::from_le_bytes([sector[0x16], sector[0x17]]);
    let (signature, id) = if fat16_size == 0 {
        (0x42, 0x43)
    } else {
        (0x26, 0x27)
    };
    (sector[signature] == 0x29).then_some(id)
}

fn read_sector<D: Read + Seek>(part: &mut D, offset: u64) -> io::Result<[u8; 512]> {
    let mut sector = [0u8; 512];
    part.seek(SeekFrom::Start(offset))?;
    part.read_exact(&mut sector)?;
    Ok(sector)
}

/// The volume ID of the FAT file system in `part`.
pub fn volume_id<D: Read + Seek>(part: &mut D) -> Result<u32, FatError> {
    let sector = read_sector(part, 0)?;
    let at = id_offset(&sector).ok_or(FatError::NotFat)?;
    Ok(u32::from_le_bytes(
        sector[at..at + 4].try_into().unwrap_or_default(),
    ))
}

/// The volume ID as fstab and blkid write it.
pub fn volume_id_text(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)
}

/// Gives the FAT file system in `part` the volume ID `id`. Returns the old one.
pub fn set_volume_id<D: Read + Write + Seek>(part: &mut D, id: u32) -> Result<u32, FatError> {
    let mut sector = read_sector(part, 0)?;
    let at = id_offset(&sector).ok_or(FatError::NotFat)?;
    let old = u32::from_le_bytes(sector[at..at + 4].try_into().unwrap_or_default());
    // FAT32 keeps a backup boot sector (usually sector 6): it changes first.
    if at == 0x43 {
        let bytes_per_sector = u16::from_le_bytes([sector[0x0B], sector[0x0C]]) as u64;
        let backup = u16::from_le_bytes([sector[0x32], sector[0x33]]) as u64;
        if backup != 0 && backup != 0xFFFF {
            let offset = backup * bytes_per_sector;
            let mut copy = read_sector(part, offset)?;
            if id_offset(&copy) == Some(at) {
                copy[at..at + 4].copy_from_slice(&id.to_le_bytes());
                part.seek(SeekFrom::Start(offset))?;
                part.write_all(&copy)?;
            }
        }
    }
    sector[at..at + 4].copy_from_slice(&id.to_le_bytes());
    part.seek(SeekFrom::Start(0))?;
    part.write_all(&sector)?;
    part.flush()?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn fat16_and_fat32_ids() {
        let mut fat16 = vec![0u8; 8192];
        fat16[0x0B] = 0x00;
        fat16[0x0C] = 0x02;
        fat16[0x16] = 8;
        fat16[0x26] = 0x29;
        fat16[0x27..0x2B].copy_from_slice(&0x1234_ABCDu32.to_le_bytes());
        fat16[510] = 0x55;
        fat16[511] = 0xAA;
        let mut part = Cursor::new(fat16);
        assert_eq!(volume_id(&mut part).unwrap(), 0x1234_ABCD);
        assert_eq!(volume_id_text(0x1234_ABCD), "1234-ABCD");
        assert_eq!(set_volume_id(&mut part, 7).unwrap(), 0x1234_ABCD);
        assert_eq!(volume_id(&mut part).unwrap(), 7);

        let mut fat32 = vec![0u8; 8192];
        fat32[0x0C] = 0x02;
        fat32[0x32] = 6;
        fat32[0x42] = 0x29;
        fat32[510] = 0x55;
        fat32[511] = 0xAA;
        let backup = fat32[..512].to_vec();
        fat32[6 * 512..7 * 512].copy_from_slice(&backup);
        let mut part = Cursor::new(fat32);
        set_volume_id(&mut part, 0xDEAD_BEEF).unwrap();
        let img = part.into_inner();
        assert_eq!(&img[0x43..0x47], &0xDEAD_BEEFu32.to_le_bytes());
        assert_eq!(
            &img[6 * 512 + 0x43..6 * 512 + 0x47],
            &0xDEAD_BEEFu32.to_le_bytes()
        );

        assert!(matches!(
            volume_id(&mut Cursor::new(vec![0u8; 512])),
            Err(FatError::NotFat)
        ));
    }
}
