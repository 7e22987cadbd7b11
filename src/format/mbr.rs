//! The BIOS boot-sector stub of an upgrade: it boots the disk whose GPT disk GUID
//! it carries, or, when no disk has it, the boot sector kept at the LBA it carries
//! (the front disk's own). Written over the front disk's boot code (its partition
//! table and signature stay), it makes a firmware that boots that disk first
//! continue into the chosen disk's own boot code. The bytes are
//! `boot/chainload.S`, assembled.

use super::gpt::Guid;

/// `boot/chainload.S` assembled (`as --32`, `objcopy -O binary`), up to its
/// trailing zeros.
pub const CHAIN_STUB: [u8; 150] = [
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, 0xfc, 0xbe, 0x00,
    0x7c, 0xbf, 0x00, 0x06, 0xb9, 0x00, 0x01, 0xf3, 0xa5, 0xea, 0x1e, 0x06, 0x00, 0x00, 0x88, 0x16,
    0x97, 0x06, 0xb2, 0x81, 0x88, 0x16, 0x96, 0x06, 0xb8, 0x01, 0x02, 0xbb, 0x00, 0x7e, 0xb9, 0x02,
    0x00, 0x30, 0xf6, 0xcd, 0x13, 0x72, 0x31, 0xbe, 0x38, 0x7e, 0xbf, 0xa8, 0x07, 0xb9, 0x08, 0x00,
    0xf3, 0xa7, 0x75, 0x24, 0x8a, 0x16, 0x96, 0x06, 0xb8, 0x01, 0x02, 0xbb, 0x00, 0x7c, 0xb9, 0x01,
    0x00, 0x30, 0xf6, 0xcd, 0x13, 0x72, 0x11, 0x81, 0x3e, 0xfe, 0x7d, 0x55, 0xaa, 0x75, 0x09, 0x8a,
    0x16, 0x96, 0x06, 0xea, 0x00, 0x7c, 0x00, 0x00, 0x8a, 0x16, 0x96, 0x06, 0xfe, 0xc2, 0x80, 0xfa,
    0x90, 0x72, 0xb1, 0x8a, 0x16, 0x97, 0x06, 0xbe, 0x90, 0x07, 0xb4, 0x42, 0xcd, 0x13, 0x72, 0x11,
    0x81, 0x3e, 0xfe, 0x7d, 0x55, 0xaa, 0x75, 0x09, 0x8a, 0x16, 0x97, 0x06, 0xea, 0x00, 0x7c, 0x00,
    0x00, 0xcd, 0x18, 0xf4, 0xeb, 0xfd,
];
/// The extended-read packet the stub's fallback uses (16 bytes at
/// [`DAP_OFFSET`]): one sector to 0000:7c00 from the LBA at [`RESCUE_LBA_OFFSET`].
const DAP: [u8; 8] = [16, 0, 1, 0, 0x00, 0x7c, 0, 0];
pub const DAP_OFFSET: usize = 400;
/// Where the stub expects the LBA of the front disk's own boot sector.
pub const RESCUE_LBA_OFFSET: usize = 408;
/// Where the stub expects the target disk's GUID (as stored in the GPT header).
pub const GUID_OFFSET: usize = 424;
/// End of the boot code area; the partition table follows.
pub const CODE_AREA: usize = 440;

/// `original` (a protective MBR) with its boot code replaced by the stub aimed at
/// the disk with GPT disk GUID `target`, falling back to the boot sector at
/// `rescue_lba` (512-byte sectors) of the disk the firmware booted.
pub fn chain_sector(original: &[u8; 512], target: Guid, rescue_lba: u64) -> [u8; 512] {
    let mut out = *original;
    out[..CODE_AREA].fill(0);
    out[..CHAIN_STUB.len()].copy_from_slice(&CHAIN_STUB);
    out[DAP_OFFSET..DAP_OFFSET + DAP.len()].copy_from_slice(&DAP);
    out[RESCUE_LBA_OFFSET..RESCUE_LBA_OFFSET + 8].copy_from_slice(&rescue_lba.to_le_bytes());
    out[GUID_OFFSET..GUID_OFFSET + 16].copy_from_slice(&target.0);
    out
}

/// The GUID `sector`'s stub boots, if its boot code is the stub.
pub fn chain_target(sector: &[u8; 512]) -> Option<Guid> {
    if sector[..CHAIN_STUB.len()] != CHAIN_STUB {
        return None;
    }
    sector[GUID_OFFSET..GUID_OFFSET + 16]
        .try_into()
        .ok()
        .map(Guid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn keeps_the_partition_table_and_signature() {
        let mut mbr = [0u8; 512];
        mbr[..440].fill(0xCC);
        mbr[446..462].copy_from_slice(&[
            0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0xFF, 0xFF, 0x3F, 0,
        ]);
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        let out = chain_sector(&mbr, Guid([7; 16]), 0x1234_5678);
        assert_eq!(&out[440..], &mbr[440..]);
        assert_eq!(&out[..CHAIN_STUB.len()], &CHAIN_STUB);
        assert_eq!(&out[GUID_OFFSET..GUID_OFFSET + 16], &[7; 16]);
        assert_eq!(
            &out[RESCUE_LBA_OFFSET..RESCUE_LBA_OFFSET + 8],
            &0x1234_5678u64.to_le_bytes()
        );
        assert!(out[CHAIN_STUB.len()..DAP_OFFSET].iter().all(|&b| b == 0));
        assert_eq!(chain_target(&out), Some(Guid([7; 16])));
        assert_eq!(chain_target(&mbr), None);
    }

    #[test]
    fn stub_is_the_assembled_source() {
        let dir = tempfile::tempdir().unwrap();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/boot/chainload.S");
        let obj = dir.path().join("chainload.o");
        let bin = dir.path().join("chainload.bin");
        let ok = Command::new("as")
            .args(["--32", "-o"])
            .arg(&obj)
            .arg(src)
            .status()
            .expect("GNU as (binutils)")
            .success()
            && Command::new("objcopy")
                .args(["-O", "binary", "-j", ".text"])
                .arg(&obj)
                .arg(&bin)
                .status()
                .expect("objcopy (binutils)")
                .success();
        assert!(ok, "assembling boot/chainload.S");
        let assembled = std::fs::read(&bin).unwrap();
        assert_eq!(assembled.len(), CODE_AREA);
        // The source leaves the LBA and GUID zero; chain_sector fills them in.
        let sector = chain_sector(&[0; 512], Guid([0; 16]), 0);
        assert_eq!(&assembled[..], &sector[..CODE_AREA]);
    }
}
