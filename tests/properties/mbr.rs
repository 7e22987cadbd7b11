use super::*;
use imprint::format::mbr::*;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chain_sectors_name_their_target(
        original in vec(any::<u8>(), 512),
        target in guid(),
        lba in any::<u64>(),
        ms in mutations(),
    ) {
        let original: [u8; 512] = original.try_into().unwrap();
        let sector = chain_sector(&original, target, lba);
        prop_assert_eq!(chain_target(&sector), Some(target));
        prop_assert_eq!(&sector[CODE_AREA..], &original[CODE_AREA..]);
        let mut mutated = mutate(&sector, &ms);
        mutated.resize(512, 0);
        let mutated: [u8; 512] = mutated.try_into().unwrap();
        let got = chain_target(&mutated);
        let stub_intact = mutated[..CHAIN_STUB.len()] == CHAIN_STUB;
        prop_assert_eq!(got.is_some(), stub_intact);
    }

    #[test]
    fn arbitrary_sectors_never_panic(sector in vec(any::<u8>(), 512)) {
        let sector: [u8; 512] = sector.try_into().unwrap();
        let _ = chain_target(&sector);
    }
}
