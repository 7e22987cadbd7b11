use super::*;
use imprint::format::bundle::*;
use imprint::format::digest::Digest;

fn clean() -> impl Strategy<Value = String> {
    "(/[A-Za-z0-9._ -]{1,12}){1,5}".prop_filter("clean", |p| clean_path(p))
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        vec(any::<u8>(), 0..300).prop_map(EntryKind::File),
        Just(EntryKind::Dir),
        ".{0,60}".prop_map(EntryKind::Symlink),
    ];
    (
        clean(),
        0u32..0o10000,
        any::<u32>(),
        any::<u32>(),
        (any::<i64>(), 0u32..1_000_000_000),
        kind,
    )
        .prop_map(|(path, mode, uid, gid, mtime, kind)| Entry {
            path,
            mode,
            uid,
            gid,
            mtime,
            kind,
        })
}

fn bundle() -> impl Strategy<Value = Bundle> {
    (any::<u64>(), vec(entry(), 0..12)).prop_map(|(created_at, entries)| Bundle {
        version: BUNDLE_VERSION,
        created_at,
        entries,
    })
}

fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
    bounded(bytes.len(), || Bundle::decode(bytes, &Digest::of(bytes)))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn bundles_round_trip(b in bundle()) {
        let bytes = b.encode();
        prop_assert_eq!(decode(&bytes), Ok(b));
        let mut other = bytes.clone();
        other.push(0);
        prop_assert_eq!(Bundle::decode(&other, &Digest::of(&bytes)), Err(BundleError::Damaged));
    }

    #[test]
    fn unclean_paths_are_refused(mut b in bundle(), path in ".{0,40}", at in any::<usize>()) {
        let entry = Entry {
            path: path.clone(),
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            kind: EntryKind::Dir,
        };
        let at = at % (b.entries.len() + 1);
        b.entries.insert(at, entry);
        let got = decode(&b.encode());
        if clean_path(&path) {
            prop_assert_eq!(got, Ok(b));
        } else {
            prop_assert!(matches!(got, Err(BundleError::BadPath(_))), "{:?}", got);
        }
    }

    #[test]
    fn mutated_bundles_never_panic(b in bundle(), ms in mutations()) {
        let bytes = mutate(&b.encode(), &ms);
        if let Ok(back) = decode(&bytes) {
            prop_assert!(back.entries.iter().all(|e| clean_path(&e.path)));
        }
    }

    #[test]
    fn every_truncation_is_refused(b in bundle()) {
        let bytes = b.encode();
        for len in 0..bytes.len() {
            prop_assert!(decode(&bytes[..len]).is_err(), "prefix {} accepted", len);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes()) {
        let _ = decode(&bytes);
    }
}

#[test]
fn declared_lengths_do_not_allocate() {
    // 2^60 entries; one entry whose file declares 2^60 bytes; one whose path
    // declares 2^60 bytes.
    let mut entries = vec![BUNDLE_VERSION as u8, 1];
    entries.extend(varint(1 << 60));
    let mut file = vec![BUNDLE_VERSION as u8, 1, 1, 2, b'/', b'x', 0, 0, 0, 0, 0, 0];
    file.extend(varint(1 << 60));
    let mut path = vec![BUNDLE_VERSION as u8, 1, 1];
    path.extend(varint(1 << 60));
    path.extend_from_slice(b"/etc");
    for bytes in [entries, file, path] {
        let mut result = None;
        let heap = peak_heap(|| result = Some(Bundle::decode(&bytes, &Digest::of(&bytes))));
        assert!(
            matches!(result, Some(Err(BundleError::Malformed(_)))),
            "{result:?}"
        );
        assert!(heap <= 4 << 10, "{heap} bytes of heap for {bytes:?}");
    }
}
