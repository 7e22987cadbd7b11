use super::*;
use imprint::format::fat::*;

/// A FAT16 or FAT32 boot sector (with its backup at `backup` for FAT32).
fn image(fat32: bool, bytes_per_sector: u16, backup: u16, id: u32) -> Vec<u8> {
    let mut img = vec![0u8; 8 * 4096];
    img[0x0B..0x0D].copy_from_slice(&bytes_per_sector.to_le_bytes());
    let at = if fat32 {
        img[0x32..0x34].copy_from_slice(&backup.to_le_bytes());
        img[0x42] = 0x29;
        0x43
    } else {
        img[0x16] = 8;
        img[0x26] = 0x29;
        0x27
    };
    img[at..at + 4].copy_from_slice(&id.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    let copy = img[..512].to_vec();
    let offset = backup as usize * bytes_per_sector as usize;
    if fat32 && offset > 0 && offset + 512 <= img.len() {
        img[offset..offset + 512].copy_from_slice(&copy);
    }
    img
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn volume_ids_round_trip(
        fat32 in any::<bool>(),
        bps in prop::sample::select(vec![512u16, 1024, 2048, 4096]),
        backup in 0u16..8,
        id in any::<u32>(),
        new in any::<u32>(),
    ) {
        let mut part = Cursor::new(image(fat32, bps, backup, id));
        prop_assert_eq!(volume_id(&mut part).unwrap(), id);
        prop_assert_eq!(set_volume_id(&mut part, new).unwrap(), id);
        prop_assert_eq!(volume_id(&mut part).unwrap(), new);
        let offset = backup as usize * bps as usize;
        let img = part.into_inner();
        if fat32 && offset > 0 && offset + 512 <= img.len() {
            prop_assert_eq!(&img[offset + 0x43..offset + 0x47], &new.to_le_bytes());
        }
        let text = volume_id_text(new);
        prop_assert_eq!(u32::from_str_radix(&text.replace('-', ""), 16), Ok(new));
    }

    #[test]
    fn mutated_sectors_never_panic(
        fat32 in any::<bool>(),
        backup in any::<u16>(),
        ms in mutations(),
        new in any::<u32>(),
    ) {
        let img = mutate(&image(fat32, 512, backup, 7), &ms);
        let mut part = Cursor::new(img);
        let _ = volume_id(&mut part);
        let _ = set_volume_id(&mut part, new);
    }
}
