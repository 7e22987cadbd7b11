//! Linux swap areas: the UUID in the swap header, read and changed in place.
//! The header is the first page (4 KiB on x86-64): `SWAPSPACE2` ends it, and
//! the UUID sits at byte 1036, after the version, last page and bad-page count.

use std::io::{self, Read, Seek, SeekFrom, Write};

const PAGE: usize = 4096;
const MAGIC: &[u8] = b"SWAPSPACE2";
const UUID_AT: usize = 1024 + 12;

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("reading the swap header: {0}")]
    Io(#[from] io::Error),
    #[error("not a Linux swap area (no SWAPSPACE2 signature in its first 4 KiB)")]
    NotSwap,
}

fn header<D: Read + Seek>(part: &mut D) -> Result<[u8; PAGE], SwapError> {
    let mut page = [0u8; PAGE];
    part.seek(SeekFrom::Start(0))?;
    part.read_exact(&mut page)?;
    if &page[PAGE - MAGIC.len()..] != MAGIC {
        return Err(SwapError::NotSwap);
    }
    Ok(page)
}

/// The swap area's UUID.
pub fn uuid<D: Read + Seek>(part: &mut D) -> Result<[u8; 16], SwapError> {
    let page = header(part)?;
    let mut u = [0u8; 16];
    u.copy_from_slice(&page[UUID_AT..UUID_AT + 16]);
    Ok(u)
}

/// Gives the swap area the UUID `new`; returns the old one.
pub fn set_uuid<D: Read + Write + Seek>(
    part: &mut D,
    new: [u8; 16],
) -> Result<[u8; 16], SwapError> {
    let old = uuid(part)?;
    part.seek(SeekFrom::Start(UUID_AT as u64))?;
    part.write_all(&new)?;
    part.flush()?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn a_new_uuid_is_what_blkid_sees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swap.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let out = std::process::Command::new("mkswap")
            .args(["-U", "5eed0000-0000-4000-8000-000000000001"])
            .arg(&path)
            .output()
            .expect("mkswap (util-linux)");
        assert!(out.status.success(), "{out:?}");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let old = uuid(&mut file).unwrap();
        assert_eq!(
            crate::format::ext4::uuid_text(&old),
            "5eed0000-0000-4000-8000-000000000001"
        );
        let new = [
            0x0b, 0xad, 0xc0, 0xde, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 2,
        ];
        assert_eq!(set_uuid(&mut file, new).unwrap(), old);
        drop(file);
        let out = std::process::Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID"])
            .arg(&path)
            .output()
            .expect("blkid (util-linux)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0badc0de-0000-4000-8000-000000000002"
        );
    }

    #[test]
    fn anything_else_is_refused_and_left_alone() {
        let mut junk = Cursor::new(vec![0u8; PAGE]);
        assert!(matches!(
            set_uuid(&mut junk, [1; 16]),
            Err(SwapError::NotSwap)
        ));
        assert!(junk.get_ref().iter().all(|&b| b == 0));
        assert!(matches!(
            uuid(&mut Cursor::new(vec![0u8; 100])),
            Err(SwapError::Io(_))
        ));
    }
}
