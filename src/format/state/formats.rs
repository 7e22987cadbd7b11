//! An intact slot's payload decoded from any format this build knows and
//! brought to the current one.

use super::record::{Agent, Mode, PreviousOs, Record};
use super::{RECORD_VERSION, StateError};
use crate::format::digest::Digest;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The fields of format 1 as it began. Format 1 then grew twice while keeping its
/// number, each time by a field at the end: `bundle`, then `saved_boot_record`.
/// Records of all three shapes exist on disks and are read (see [`decode_v1`]).
#[derive(Deserialize)]
struct RecordV1 {
    version: u32,
    mode: Mode,
    image_name: String,
    image_digest: Digest,
    deployed_at: u64,
    previous: Option<PreviousOs>,
    settings: BTreeMap<String, String>,
    boot_attempts: u32,
    status_url: Option<String>,
    target: Option<String>,
    deployed_mode: Mode,
}

/// The record in an intact slot's payload, from any format this build knows,
/// brought to the current one.
pub(super) fn decode_payload(payload: &[u8], generation: u64) -> Result<Record, StateError> {
    let undecodable = |version: u32, reason: String| StateError::Undecodable {
        generation,
        version,
        reason,
    };
    let version = match postcard::take_from_bytes::<u32>(payload) {
        Ok((v, _)) => v,
        Err(e) => return Err(undecodable(0, format!("no format number ({e})"))),
    };
    let decoded = match version {
        1 => decode_v1(payload),
        // Formats 3 to 6 each only added an optional field at the end: an
        // earlier payload is a current one with those absent (postcard's
        // `None` is one 0 byte).
        2..=5 => {
            let absent = vec![0u8; (RECORD_VERSION - version) as usize];
            take_whole::<Record>(&[payload, &absent].concat()).map(|r| Record {
                version: RECORD_VERSION,
                ..r
            })
        }
        RECORD_VERSION => take_whole::<Record>(payload),
        v if v > RECORD_VERSION => return Err(StateError::Newer(v)),
        v => return Err(undecodable(v, "no imprint wrote this format".into())),
    };
    decoded.map_err(|reason| undecodable(version, reason))
}

/// Decodes a `T` that must take all of `bytes`.
fn take_whole<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| e.to_string())?;
    match rest.len() {
        0 => Ok(value),
        n => Err(format!("{n} bytes left over")),
    }
}

/// A format 1 record of any of its three shapes: the fields of [`RecordV1`], then
/// `bundle` if present, then `saved_boot_record` if present. Postcard fields have
/// no names, so the shape is told by where the payload ends.
fn decode_v1(payload: &[u8]) -> Result<Record, String> {
    let (v1, rest) = postcard::take_from_bytes::<RecordV1>(payload).map_err(|e| e.to_string())?;
    let (bundle, rest) = match rest {
        [] => (None, rest),
        _ => postcard::take_from_bytes::<Option<crate::format::bundle::BundleRef>>(rest)
            .map_err(|e| e.to_string())?,
    };
    let saved_boot_record = match rest {
        [] => None,
        _ => take_whole::<Option<Vec<u8>>>(rest)?,
    };
    let _ = v1.version;
    Ok(Record {
        version: RECORD_VERSION,
        mode: v1.mode,
        image_name: v1.image_name,
        image_digest: v1.image_digest,
        deployed_at: v1.deployed_at,
        previous: v1.previous,
        settings: v1.settings,
        boot_attempts: v1.boot_attempts,
        status_url: v1.status_url,
        target: v1.target,
        deployed_mode: v1.deployed_mode,
        bundle,
        saved_boot_record,
        agent: Agent::NotChecked,
        release: None,
        timings: None,
        credential: None,
        handoff: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{raw_slot, record};
    use super::super::*;
    use crate::format::digest::Digest;
    use crate::format::gpt::Guid;
    use std::io::Cursor;

    #[test]
    fn format_1_records_are_still_read() {
        // A format 1 record is a current one without its last five fields.
        let mut v1 = record(Mode::Committed);
        v1.version = 1;
        let mut payload = postcard::to_stdvec(&v1).unwrap();
        let tail = postcard::to_stdvec(&(
            Agent::NotChecked,
            None::<ReleaseStamp>,
            None::<crate::format::timing::Timings>,
            None::<crate::format::cmdline::Secret>,
            None::<HandoffNote>,
        ))
        .unwrap();
        payload.truncate(payload.len() - tail.len());
        let mut part = vec![0u8; 2 * SLOT_SIZE as usize];
        part[..8].copy_from_slice(MAGIC);
        part[8..16].copy_from_slice(&7u64.to_le_bytes());
        part[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        part[20..24].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        part[HEADER..HEADER + payload.len()].copy_from_slice(&payload);
        let (read_back, generation) = read(&mut Cursor::new(part)).unwrap();
        assert_eq!(generation, 7);
        assert_eq!(read_back, record(Mode::Committed));
        assert_eq!(read_back.agent, Agent::NotChecked);
    }

    /// The shapes the record has had on disk, oldest first, with the bytes a build
    /// of each wrote (slot 0's header and payload, generation 3): see
    /// tests/fixtures/state/README.md for the builds.
    const FIXTURES: [(&str, &[u8]); 8] = [
        (
            "format 1 as it began",
            include_bytes!("../../../tests/fixtures/state/v1-base.bin"),
        ),
        (
            "format 1 with bundle",
            include_bytes!("../../../tests/fixtures/state/v1-bundle.bin"),
        ),
        (
            "format 1 with bundle and saved boot record",
            include_bytes!("../../../tests/fixtures/state/v1.bin"),
        ),
        (
            "format 2",
            include_bytes!("../../../tests/fixtures/state/v2.bin"),
        ),
        (
            "format 3",
            include_bytes!("../../../tests/fixtures/state/v3.bin"),
        ),
        (
            "format 4",
            include_bytes!("../../../tests/fixtures/state/v4.bin"),
        ),
        (
            "format 5",
            include_bytes!("../../../tests/fixtures/state/v5.bin"),
        ),
        (
            "format 6",
            include_bytes!("../../../tests/fixtures/state/v6.bin"),
        ),
    ];

    /// The record each fixture holds, as read by this build: fields a shape did
    /// not have read as absent.
    fn fixture_record(shape: usize) -> Record {
        Record {
            version: RECORD_VERSION,
            mode: Mode::Committed,
            image_name: "fleet-os".into(),
            image_digest: Digest::of(b"manifest of fleet-os"),
            deployed_at: 1_800_000_000,
            previous: Some(PreviousOs {
                disk_guid: Guid([0x11; 16]),
                partition_guids: vec![Guid([0x22; 16]), Guid([0x33; 16])],
            }),
            settings: [
                ("hostname".to_string(), "node-7".to_string()),
                ("timezone".to_string(), "Europe/Paris".to_string()),
            ]
            .into(),
            boot_attempts: 2,
            status_url: Some("http://10.0.2.2:8080/status".into()),
            target: Some("52:54:00:12:34:56".into()),
            deployed_mode: Mode::Upgrade,
            bundle: (shape >= 1).then(|| crate::format::bundle::BundleRef {
                slot: 1,
                len: 4242,
                sha256: Digest::of(b"bundle"),
            }),
            saved_boot_record: (shape >= 2)
                .then(|| (0..512u32).map(|i| (i * 7 + 3) as u8).collect()),
            agent: if shape >= 3 {
                Agent::Installed { format: 1 }
            } else {
                Agent::NotChecked
            },
            release: (shape >= 4).then(|| ReleaseStamp {
                tag: "stable".into(),
                issued: 1_799_990_000,
            }),
            timings: (shape >= 5).then(fixture_timings),
            credential: (shape >= 6).then(|| {
                crate::format::cmdline::Secret("Zm9yIHRoZSBmaXh0dXJlIG9ubHkgMTIzNDU2Nzg5".into())
            }),
            handoff: (shape >= 7).then(|| HandoffNote {
                done: "reboot".into(),
                why: "its command line names no root=".into(),
                at: 1_800_000_400,
            }),
        }
    }

    /// The timings of format 4's fixture.
    fn fixture_timings() -> crate::format::timing::Timings {
        use crate::format::timing::{ByteSources, DataWork, Phase, Timings};
        Timings {
            started_ms: 1_520,
            phases: vec![
                (Phase::Drivers, 410),
                (Phase::Network, 1_200),
                (Phase::Manifest, 50),
                (Phase::Disk, 0),
                (Phase::Capture, 30),
                (Phase::Write, 3_300),
                (Phase::BootRecords, 200),
                (Phase::Handoff, 9_000),
                (Phase::OsBoot, 4_250),
            ],
            data: DataWork {
                fetch_ms: 7_000,
                verify_ms: 2_000,
                disk_ms: 1_000,
            },
            bytes: ByteSources {
                target: 1 << 20,
                previous: 2 << 20,
                media: 3 << 20,
                network: 4 << 20,
            },
            handoff_at_ms: 1_800_000_300_000,
        }
    }

    /// A partition holding `slot_bytes` in slot 0, its other bytes `fill`.
    fn partition_with(slot_bytes: &[u8], fill: u8) -> Cursor<Vec<u8>> {
        let mut part = vec![fill; 2 * SLOT_SIZE as usize];
        part[..slot_bytes.len()].copy_from_slice(slot_bytes);
        Cursor::new(part)
    }

    #[test]
    fn records_written_by_earlier_builds_are_read_field_by_field() {
        for (shape, (name, bytes)) in FIXTURES.iter().enumerate() {
            let (record, generation) = read(&mut partition_with(bytes, 0)).unwrap();
            let want = fixture_record(shape);
            assert_eq!(generation, 3, "{name}");
            assert_eq!(record.version, RECORD_VERSION, "{name}");
            assert_eq!(record.mode, want.mode, "{name}");
            assert_eq!(record.image_name, want.image_name, "{name}");
            assert_eq!(record.image_digest, want.image_digest, "{name}");
            assert_eq!(record.deployed_at, want.deployed_at, "{name}");
            assert_eq!(record.previous, want.previous, "{name}");
            assert_eq!(record.settings, want.settings, "{name}");
            assert_eq!(record.boot_attempts, want.boot_attempts, "{name}");
            assert_eq!(record.status_url, want.status_url, "{name}");
            assert_eq!(record.target, want.target, "{name}");
            assert_eq!(record.deployed_mode, want.deployed_mode, "{name}");
            assert_eq!(record.bundle, want.bundle, "{name}");
            assert_eq!(record.saved_boot_record, want.saved_boot_record, "{name}");
            assert_eq!(record.agent, want.agent, "{name}");
            assert_eq!(record.release, want.release, "{name}");
            assert_eq!(record.timings, want.timings, "{name}");
            assert_eq!(record.credential, want.credential, "{name}");
            assert_eq!(record.handoff, want.handoff, "{name}");
            assert_eq!(record, want, "{name}");
        }
    }

    #[test]
    fn a_record_of_an_earlier_format_is_rewritten_in_the_current_one() {
        for (shape, (name, bytes)) in FIXTURES.iter().enumerate() {
            // The rest of the partition is not zero, as on a used disk.
            let mut part = partition_with(bytes, 0xEE);
            let (mut record, _) = read(&mut part).unwrap();
            record.boot_attempts += 1;
            assert_eq!(write(&mut part, &record).unwrap(), 4, "{name}");
            let disk = part.get_ref();
            // The old record is untouched, in slot 0; the new one is in slot 1.
            assert_eq!(&disk[..bytes.len()], *bytes, "{name}");
            let new = &disk[SLOT_SIZE as usize..];
            assert_eq!(&new[..8], MAGIC);
            assert_eq!(u64::from_le_bytes(new[8..16].try_into().unwrap()), 4);
            assert_eq!(new[HEADER] as u32, RECORD_VERSION, "{name}");
            let (back, generation) = read(&mut part).unwrap();
            assert_eq!(generation, 4, "{name}");
            assert_eq!(back.boot_attempts, 3, "{name}");
            assert_eq!(back.bundle, fixture_record(shape).bundle, "{name}");
            assert_eq!(back, record, "{name}");
        }
    }

    #[test]
    fn this_build_writes_format_6_as_the_fixture_has_it() {
        // The current format, byte for byte: a change to the record's fields shows
        // up here, and needs a new format number and a new fixture.
        let mut part = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
        for mode in [Mode::Deploy, Mode::Upgrade] {
            write(
                &mut part,
                &Record {
                    mode,
                    ..fixture_record(7)
                },
            )
            .unwrap();
        }
        assert_eq!(write(&mut part, &fixture_record(7)).unwrap(), 3);
        let current = FIXTURES[7].1;
        if std::env::var_os("IMPRINT_WRITE_STATE_FIXTURE").is_some() {
            // Made once, when the format was new: see tests/fixtures/state/README.md.
            let len =
                HEADER + u32::from_le_bytes(part.get_ref()[16..20].try_into().unwrap()) as usize;
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state/v6.bin"),
                &part.get_ref()[..len],
            )
            .unwrap();
        }
        assert_eq!(&part.get_ref()[..current.len()], current);
    }

    #[test]
    fn formats_no_imprint_wrote_are_not_records() {
        for payload in [vec![0u8, 1, 2], vec![], vec![0x80]] {
            let mut part = vec![0u8; 2 * SLOT_SIZE as usize];
            raw_slot(&mut part, 0, 1, &payload);
            let err = read(&mut Cursor::new(part)).unwrap_err();
            assert!(
                matches!(err, StateError::Undecodable { generation: 1, .. }),
                "{payload:?}: {err:?}"
            );
        }
        // Trailing bytes after a whole record mean it is not what it claims.
        let mut payload = postcard::to_stdvec(&record(Mode::Deploy)).unwrap();
        payload.push(0);
        let mut part = vec![0u8; 2 * SLOT_SIZE as usize];
        raw_slot(&mut part, 0, 1, &payload);
        assert!(matches!(
            read(&mut Cursor::new(part)),
            Err(StateError::Undecodable {
                version: RECORD_VERSION,
                ..
            })
        ));
    }
}
