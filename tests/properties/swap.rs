use super::*;
use imprint::format::swap::*;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn uuids_round_trip(mut page in vec(any::<u8>(), 4096..8192), new in any::<[u8; 16]>()) {
        page[4096 - 10..4096].copy_from_slice(b"SWAPSPACE2");
        let old: [u8; 16] = page[1036..1052].try_into().unwrap();
        let mut part = Cursor::new(page);
        prop_assert_eq!(uuid(&mut part).unwrap(), old);
        prop_assert_eq!(set_uuid(&mut part, new).unwrap(), old);
        prop_assert_eq!(uuid(&mut part).unwrap(), new);
    }

    #[test]
    fn arbitrary_areas_never_panic(bytes in bytes(), new in any::<[u8; 16]>()) {
        let before = bytes.clone();
        let mut part = Cursor::new(bytes);
        if set_uuid(&mut part, new).is_err() {
            prop_assert!(part.get_ref() == &before);
        }
    }
}
