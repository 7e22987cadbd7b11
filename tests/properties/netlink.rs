use super::*;
use imprint::format::netlink::*;

/// A reply of netlink messages: (type, sequence, payload).
fn reply(messages: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, seq, payload) in messages {
        let len = 16 + payload.len();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().div_ceil(4) * 4, 0);
    }
    out
}

fn message() -> impl Strategy<Value = (u16, u32, Vec<u8>)> {
    prop_oneof![
        (any::<u16>(), 0u32..4, vec(any::<u8>(), 0..40)),
        (
            Just(NLMSG_ERROR),
            0u32..4,
            prop_oneof![Just(i32::MIN), Just(0), -200i32..200, any::<i32>()],
            vec(any::<u8>(), 0..16),
        )
            .prop_map(|(k, s, code, rest)| {
                let mut payload = code.to_le_bytes().to_vec();
                payload.extend(rest);
                (k, s, payload)
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn acks_are_found(messages in vec(message(), 0..6), seq in 0u32..4) {
        let r = reply(&messages);
        let want = messages
            .iter()
            .find(|(k, s, _)| *k == NLMSG_ERROR && *s == seq)
            .map(|(_, _, p)| {
                let code = i32::from_le_bytes(p[..4].try_into().unwrap());
                code.checked_neg().ok_or(())
            });
        match (parse_ack(&r, seq), want) {
            (Ok(code), Some(Ok(want))) => prop_assert_eq!(code, want),
            (Err(_), Some(Err(()))) | (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{:?} for {:?}", got, want),
        }
        // Each message on its own, with whatever follows cut off.
        for cut in 0..r.len() {
            let _ = parse_ack(&r[..cut], seq);
        }
    }

    #[test]
    fn mutated_replies_never_panic(
        messages in vec(message(), 0..6),
        seq in 0u32..4,
        ms in mutations(),
    ) {
        let r = mutate(&reply(&messages), &ms);
        let _ = bounded(r.len(), || parse_ack(&r, seq));
    }

    #[test]
    fn arbitrary_replies_never_panic(bytes in bytes(), seq in any::<u32>()) {
        let _ = bounded(bytes.len(), || parse_ack(&bytes, seq));
    }
}
