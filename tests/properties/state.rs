use super::*;
use imprint::format::bundle::BundleRef;
use imprint::format::state::*;

fn mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![
        Mode::Deploy,
        Mode::Upgrade,
        Mode::Committed,
        Mode::RolledBack,
    ])
}

pub(crate) fn record() -> impl Strategy<Value = Record> {
    let previous =
        (guid(), vec(guid(), 0..8)).prop_map(|(disk_guid, partition_guids)| PreviousOs {
            disk_guid,
            partition_guids,
        });
    let bundle = (any::<u8>(), any::<u64>(), digest()).prop_map(|(slot, len, sha256)| BundleRef {
        slot,
        len,
        sha256,
    });
    let agent = prop_oneof![
        Just(Agent::NotChecked),
        Just(Agent::Own),
        any::<u32>().prop_map(|format| Agent::Installed { format }),
        ".{0,60}".prop_map(Agent::Skipped),
    ];
    (
        (
            mode(),
            ".{0,40}",
            digest(),
            any::<u64>(),
            prop::option::of(previous),
        ),
        (
            prop::collection::btree_map(".{0,20}", ".{0,40}", 0..8),
            any::<u32>(),
            prop::option::of(".{0,80}"),
            prop::option::of(".{0,40}"),
            prop::option::of("[A-Za-z0-9_-]{0,60}".prop_map(imprint::format::cmdline::Secret)),
        ),
        (
            mode(),
            prop::option::of(bundle),
            prop::option::of(vec(any::<u8>(), 0..600)),
            agent,
            prop::option::of(
                (".{0,40}", any::<u64>()).prop_map(|(tag, issued)| ReleaseStamp { tag, issued }),
            ),
            prop::option::of(timings()),
        ),
        prop::option::of(
            (".{0,10}", ".{0,200}", any::<u64>()).prop_map(|(done, why, at)| HandoffNote {
                done,
                why,
                at,
            }),
        ),
    )
        .prop_map(
            |(
                (mode, image_name, image_digest, deployed_at, previous),
                (settings, boot_attempts, status_url, target, credential),
                (deployed_mode, bundle, saved_boot_record, agent, release, timings),
                handoff,
            )| Record {
                version: RECORD_VERSION,
                mode,
                image_name,
                image_digest,
                deployed_at,
                previous,
                settings,
                boot_attempts,
                status_url,
                target,
                deployed_mode,
                bundle,
                saved_boot_record,
                agent,
                release,
                timings,
                credential,
                handoff,
            },
        )
}

fn timings() -> impl Strategy<Value = imprint::format::timing::Timings> {
    use imprint::format::timing::{ByteSources, DataWork, Phase, Timings};
    let phase = prop::sample::select(Phase::ALL.to_vec());
    (
        any::<u64>(),
        vec((phase, any::<u64>()), 0..12),
        any::<[u64; 3]>(),
        any::<[u64; 4]>(),
        any::<u64>(),
    )
        .prop_map(|(started_ms, entries, work, bytes, handoff_at_ms)| {
            let mut t = Timings {
                started_ms,
                data: DataWork {
                    fetch_ms: work[0],
                    verify_ms: work[1],
                    disk_ms: work[2],
                },
                bytes: ByteSources {
                    target: bytes[0],
                    previous: bytes[1],
                    media: bytes[2],
                    network: bytes[3],
                },
                handoff_at_ms,
                ..Timings::default()
            };
            for (p, ms) in entries {
                t.add(p, ms);
            }
            t
        })
}

const HEADER: usize = 24;

fn read_bounded(part: Vec<u8>) -> Result<(Record, u64), StateError> {
    bounded(part.len(), || read(&mut Cursor::new(part)))
}

/// Slot 0 of `part` with its checksum made right again for `len` payload
/// bytes (as written in its header), if they fit.
fn reseal(part: &mut [u8]) {
    let len = u32::from_le_bytes(part[16..20].try_into().unwrap()) as usize;
    if let Some(payload) = part.get(HEADER..HEADER + len) {
        let crc = crc32fast::hash(payload);
        part[20..24].copy_from_slice(&crc.to_le_bytes());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn records_round_trip(first in record(), second in record()) {
        let mut part = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
        prop_assert_eq!(write(&mut part, &first).unwrap(), 1);
        let (back, generation) = read(&mut part).unwrap();
        prop_assert_eq!((back, generation), (first, 1));
        prop_assert_eq!(write(&mut part, &second).unwrap(), 2);
        let (back, generation) = read(&mut part).unwrap();
        prop_assert_eq!((back, generation), (second, 2));
    }

    #[test]
    fn mutated_payloads_never_panic(
        r in record(),
        ms in mutations(),
        fix_crc in any::<bool>(),
    ) {
        let mut part = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
        write(&mut part, &r).unwrap();
        let mut part = part.into_inner();
        let len = u32::from_le_bytes(part[16..20].try_into().unwrap()) as usize;
        let payload = mutate(&part[HEADER..HEADER + len], &ms);
        let room = (SLOT_SIZE - SLOT_RESERVED) as usize - HEADER;
        let payload = &payload[..payload.len().min(room)];
        part[HEADER..HEADER + room].fill(0);
        part[HEADER..HEADER + payload.len()].copy_from_slice(payload);
        part[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        if fix_crc {
            reseal(&mut part);
        }
        let _ = read_bounded(part);
    }

    #[test]
    fn mutated_slots_never_panic(r in record(), ms in mutations(), fix_crc in any::<bool>()) {
        let mut part = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
        write(&mut part, &r).unwrap();
        write(&mut part, &r).unwrap();
        let mut part = part.into_inner();
        // Header and start of payload of slot 0, then the whole partition
        // cut or grown.
        let head = mutate(&part[..HEADER + 64], &ms);
        let n = head.len().min(HEADER + 64);
        part[..n].copy_from_slice(&head[..n]);
        if fix_crc {
            reseal(&mut part);
        }
        let _ = read_bounded(part.clone());
        let cut = mutate(&part, &ms);
        let _ = read_bounded(cut);
    }

    #[test]
    fn arbitrary_partitions_never_panic(mut part in bytes(), magic in any::<bool>()) {
        if magic && part.len() >= 8 {
            part[..8].copy_from_slice(MAGIC);
        }
        part.resize(part.len().max(HEADER), 0);
        reseal(&mut part);
        let _ = read_bounded(part);
    }
}

/// A slot holding `payload`, checksummed, in a partition of two slots.
fn partition_with(payload: &[u8]) -> Vec<u8> {
    let mut part = vec![0u8; 2 * SLOT_SIZE as usize];
    part[..8].copy_from_slice(MAGIC);
    part[8..16].copy_from_slice(&1u64.to_le_bytes());
    part[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    part[20..24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    part[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    part
}

#[test]
fn declared_lengths_do_not_allocate() {
    use imprint::format::digest::Digest;
    use imprint::format::gpt::Guid;
    // version, mode, image name, digest, deployed_at: then the previous OS
    // with 2^60 partition GUIDs, or 2^60 settings; or an image name of 2^60
    // bytes.
    let fixed = (RECORD_VERSION, Mode::Deploy, "os", Digest([0; 32]), 0u64);
    let mut guids = postcard::to_stdvec(&(fixed, Some(Guid([0; 16])))).unwrap();
    guids.extend(varint(1 << 60));
    let mut settings = postcard::to_stdvec(&(fixed, None::<()>)).unwrap();
    settings.extend(varint(1 << 60));
    let mut name = postcard::to_stdvec(&(RECORD_VERSION, Mode::Deploy)).unwrap();
    name.extend(varint(1 << 60));
    for payload in [guids, settings, name] {
        let part = partition_with(&payload);
        let mut result = None;
        let heap = peak_heap(|| result = Some(read(&mut Cursor::new(&part))));
        assert!(
            matches!(result, Some(Err(StateError::Undecodable { .. }))),
            "{result:?}"
        );
        // One 64 KiB slot buffer at a time, and little else.
        assert!(heap <= 68 << 10, "{heap} bytes of heap for {payload:?}");
    }
}
