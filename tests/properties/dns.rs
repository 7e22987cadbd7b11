use super::*;
use imprint::format::dns::*;
use std::net::Ipv4Addr;

/// An answer to `query(id, name)`: CNAMEs and A records and others, names
/// compressed or written out.
fn answer(id: u16, name: &str, records: &[(u16, u16, Vec<u8>, bool)]) -> Vec<u8> {
    let mut m = query(id, name).unwrap();
    let qname = m[12..m.len() - 4].to_vec();
    m[2] = 0x81;
    m[3] = 0x80;
    m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    for (kind, class, data, compressed) in records {
        if *compressed {
            m.extend_from_slice(&[0xC0, 12]);
        } else {
            m.extend_from_slice(&qname);
        }
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&class.to_be_bytes());
        m.extend_from_slice(&60u32.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
    }
    m
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}\\.?"
}

fn record() -> impl Strategy<Value = (u16, u16, Vec<u8>, bool)> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<bool>()).prop_map(|(ip, c)| (1, 1, ip.to_vec(), c)),
        (
            prop::sample::select(vec![1u16, 5, 28]),
            prop::sample::select(vec![1u16, 3]),
            vec(any::<u8>(), 0..20),
            any::<bool>()
        ),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn answers_give_their_a_records(
        id in any::<u16>(),
        name in name(),
        records in vec(record(), 0..8),
    ) {
        let m = answer(id, &name, &records);
        let want: Vec<Ipv4Addr> = records
            .iter()
            .filter(|(k, c, d, _)| *k == 1 && *c == 1 && d.len() == 4)
            .map(|(_, _, d, _)| Ipv4Addr::new(d[0], d[1], d[2], d[3]))
            .collect();
        prop_assert_eq!(parse_answer(&m, id, &name), Ok(want));
        prop_assert_eq!(parse_answer(&m, id.wrapping_add(1), &name), Err(DnsError::WrongId));
        for cut in 0..m.len() {
            let _ = parse_answer(&m[..cut], id, &name);
        }
    }

    #[test]
    fn mutated_answers_never_panic(
        id in any::<u16>(),
        name in name(),
        records in vec(record(), 0..8),
        ms in mutations(),
    ) {
        let m = mutate(&answer(id, &name, &records), &ms);
        let _ = bounded(m.len(), || parse_answer(&m, id, &name));
    }

    #[test]
    fn arbitrary_answers_never_panic(bytes in bytes(), id in any::<u16>(), name in ".{0,300}") {
        let _ = bounded(bytes.len(), || parse_answer(&bytes, id, &name));
        if let Ok(q) = query(id, &name) {
            prop_assert!(q.len() <= 12 + 255 + 4);
        }
    }
}
