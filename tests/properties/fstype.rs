use super::*;
use imprint::format::fstype::*;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_heads_never_panic(bytes in bytes()) {
        let _ = identify(&bytes);
    }

    #[test]
    fn signatures_are_found(which in 0usize..5, mut noise in vec(any::<u8>(), HEAD_LEN)) {
        let (offset, magic, name): (usize, &[u8], &str) = [
            (0x10040, &b"_BHRfS_M"[..], "btrfs"),
            (0, b"LUKS\xba\xbe", "LUKS encrypted volume"),
            (0x8001, b"CD001", "ISO 9660"),
            (0x218, b"LVM2 001", "LVM physical volume"),
            (0, b"XFSB", "XFS"),
        ][which];
        let mut head = vec![0u8; HEAD_LEN];
        head[offset..offset + magic.len()].copy_from_slice(magic);
        prop_assert_eq!(identify(&head), Some(name));
        // Among other bytes, a signature listed earlier may win; never none.
        noise[offset..offset + magic.len()].copy_from_slice(magic);
        prop_assert!(identify(&noise).is_some());
    }
}
