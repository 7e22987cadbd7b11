use super::*;
use imprint::format::efi::*;
use imprint::format::gpt::Partition;

fn partition() -> impl Strategy<Value = Partition> {
    (any::<u32>(), guid(), any::<u64>(), any::<u64>()).prop_map(|(number, unique_guid, a, b)| {
        // The size field is last - first + 1.
        let (first_lba, last_lba) = (a.min(b), a.max(b).min(u64::MAX - 1));
        Partition {
            number,
            type_guid: imprint::format::gpt::ESP_TYPE,
            unique_guid,
            first_lba: first_lba.min(last_lba),
            last_lba,
            attributes: 0,
            name: String::new(),
        }
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn load_options_name_their_partition(
        // A description or loader with a NUL in it would end early: the
        // firmware reads both as NUL-terminated strings.
        description in "[^\\x00]{0,40}",
        loader in "[^\\x00]{0,100}",
        part in partition(),
        ms in mutations(),
    ) {
        let option = load_option(&description, &part, &loader);
        prop_assert_eq!(option_partition(&option), Some(part.unique_guid));
        let mutated = mutate(&option, &ms);
        let _ = bounded(mutated.len(), || option_partition(&mutated));
    }

    #[test]
    fn orders_round_trip(order in vec(any::<u16>(), 0..64), first in any::<u16>()) {
        prop_assert_eq!(parse_order(&encode_order(&order)), order.clone());
        let promoted = promote(&order, first);
        prop_assert_eq!(promoted[0], first);
        prop_assert!(order.iter().all(|n| promoted.contains(n)));
        prop_assert_eq!(promoted.iter().filter(|&&n| n == first).count(), 1);
        if let Some(n) = free_number(&order) {
            prop_assert!(!order.contains(&n));
        }
    }

    #[test]
    fn arbitrary_variables_never_panic(bytes in bytes()) {
        let _ = bounded(bytes.len(), || option_partition(&bytes));
        prop_assert_eq!(parse_order(&bytes).len(), bytes.len() / 2);
    }
}
