//! The state record kept in each deployed disk's `imprint-state` partition: what
//! was deployed, in which mode, where the previous OS lives, the per-host settings,
//! and whether the new OS has committed.
//!
//! Double-buffered: two slots of [`SLOT_SIZE`] bytes at the start of the partition.
//! Each slot is `magic | generation | length | crc32 | postcard payload`; the intact
//! slot (magic and checksum hold) with the highest generation wins, and a write
//! always goes to the other slot as the next generation, so a power cut at any
//! moment leaves the previous record readable. That holds even when this build
//! cannot decode the newest record (one written by another build): it still counts
//! for the generation and the choice of slot. The last [`SLOT_RESERVED`] bytes of
//! each slot are never written by a record: the state partition keeps other things
//! there.
//!
//! Formats: the payload starts with its format number. Format 1 records (in the
//! three shapes format 1 had) and formats 2 to 5 are read and brought to
//! format 6 in memory; a record
//! of a newer format is reported as such, and [`write`] refuses to replace it
//! (only [`write_fresh`], for a deploy's new record, does). The bytes earlier builds
//! wrote are kept in `tests/fixtures/state/`.

use super::digest::Digest;
use super::gpt::Guid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub const MAGIC: &[u8; 8] = b"IMPSTATE";
pub const SLOT_SIZE: u64 = 64 << 10;
/// The tail of each slot a record never covers.
pub const SLOT_RESERVED: u64 = 4096;
const HEADER: usize = 8 + 8 + 4 + 4;
/// The largest payload a slot holds.
const MAX_PAYLOAD: usize = (SLOT_SIZE - SLOT_RESERVED) as usize - HEADER;
/// Format 2 added [`Record::agent`], format 3 [`Record::release`], format 4
/// [`Record::timings`], format 5 [`Record::credential`], format 6
/// [`Record::handoff`]; earlier formats are still read.
pub const RECORD_VERSION: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Deploy,
    Upgrade,
    Committed,
    RolledBack,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Deploy => "deploy",
            Mode::Upgrade => "upgrade",
            Mode::Committed => "committed",
            Mode::RolledBack => "rolled-back",
        }
    }
}

/// Where the previous OS lives, for upgrades.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousOs {
    pub disk_guid: Guid,
    pub partition_guids: Vec<Guid>,
}

/// What the deploy environment did about the installed OS's first-boot agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Agent {
    /// Not looked at (a record from before format 2).
    NotChecked,
    /// The image carries its own agent.
    Own,
    /// The deploy environment installed itself as the agent, of this format.
    Installed { format: u32 },
    /// No agent was installed, for this reason.
    Skipped(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub mode: Mode,
    pub image_name: String,
    pub image_digest: Digest,
    /// Unix seconds of the deploy.
    pub deployed_at: u64,
    pub previous: Option<PreviousOs>,
    /// Per-host settings handed over at deploy time (`hostname`, ...).
    pub settings: BTreeMap<String, String>,
    pub boot_attempts: u32,
    /// Where first boot reports to, and under which name.
    pub status_url: Option<String>,
    pub target: Option<String>,
    /// The mode the record had before it was committed or rolled back.
    pub deployed_mode: Mode,
    /// The configuration bundle captured for an upgrade away from this OS.
    pub bundle: Option<super::bundle::BundleRef>,
    /// BIOS upgrades: this disk's first sector as it was before the upgrade made
    /// the firmware pass over it; writing it back is the rollback.
    pub saved_boot_record: Option<Vec<u8>>,
    pub agent: Agent,
    /// The signed release deployed, when a key vouched for it: a later deploy
    /// of the same image refuses an earlier release.
    pub release: Option<ReleaseStamp>,
    /// Where the deploy's time went and where its bytes came from; the first
    /// boot adds the hand-off.
    pub timings: Option<super::timing::Timings>,
    /// The credential the provisioning server gave the deploy: the installed
    /// OS's report goes with it.
    pub credential: Option<super::cmdline::Secret>,
    /// How the deploy environment last started this OS where a kexec was
    /// asked for: by kexec, or by a reboot, and why.
    pub handoff: Option<HandoffNote>,
}

/// How the deploy environment handed the machine to this OS when asked to
/// kexec: `kexec`, or `reboot` through the firmware when it could not kexec
/// safely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffNote {
    /// `kexec` or `reboot`.
    pub done: String,
    /// Why it did not kexec (empty for a kexec).
    pub why: String,
    /// Unix seconds.
    pub at: u64,
}

/// What a release signature said about the image deployed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStamp {
    pub tag: String,
    /// Unix seconds, as signed.
    pub issued: u64,
}

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

impl Record {
    /// A fresh record for `image` in `mode`, with nothing else set.
    pub fn new(mode: Mode, image_name: &str, image_digest: Digest) -> Record {
        Record {
            version: RECORD_VERSION,
            mode,
            deployed_mode: mode,
            image_name: image_name.to_string(),
            image_digest,
            deployed_at: 0,
            previous: None,
            settings: BTreeMap::new(),
            boot_attempts: 0,
            status_url: None,
            target: None,
            bundle: None,
            saved_boot_record: None,
            agent: Agent::NotChecked,
            release: None,
            timings: None,
            credential: None,
            handoff: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the state record: {0}")]
    Io(#[from] io::Error),
    #[error("no valid state record (both copies empty or damaged)")]
    Empty,
    #[error(
        "the state record is of format {0}, written by a newer imprint (this one knows formats 1 to {RECORD_VERSION}); upgrade imprint to read or change it"
    )]
    Newer(u32),
    #[error(
        "the state record (generation {generation}) passes its checksum but does not decode as format {version}: {reason}; it was not written by a build of imprint this one can read, and is left as it is"
    )]
    Undecodable {
        generation: u64,
        version: u32,
        reason: String,
    },
    #[error("state record is {0} bytes; the limit is {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error(
        "the state record's generation counter is at its end ({0}); the partition was not written by imprint"
    )]
    GenerationExhausted(u64),
}

/// A slot whose magic and checksum hold: a record this build may or may not decode.
#[derive(Debug)]
struct Slot {
    generation: u64,
    record: Result<Record, StateError>,
}

/// The slot in `buf` (one slot's bytes), or `None` if it holds no intact record
/// (no magic, a length beyond the slot, a checksum that fails).
fn decode_slot(buf: &[u8]) -> Option<Slot> {
    let header = buf.get(..HEADER)?;
    if &header[..8] != MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[20..24].try_into().ok()?);
    // The length is bounded by the slot before it is used. Builds before the
    // reserved tail could fill the whole slot, so that is the bound, not MAX_PAYLOAD.
    if len > SLOT_SIZE as usize - HEADER {
        return None;
    }
    let payload = buf.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some(Slot {
        generation,
        record: decode_payload(payload, generation),
    })
}

/// The record in an intact slot's payload, from any format this build knows,
/// brought to the current one.
fn decode_payload(payload: &[u8], generation: u64) -> Result<Record, StateError> {
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
        _ => postcard::take_from_bytes::<Option<super::bundle::BundleRef>>(rest)
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

/// Both slots of `part`, as far as they hold intact records.
fn read_slots<D: Read + Seek>(part: &mut D) -> Result<[Option<Slot>; 2], StateError> {
    let mut slots = [None, None];
    let mut buf = vec![0u8; SLOT_SIZE as usize];
    for (i, slot) in slots.iter_mut().enumerate() {
        part.seek(SeekFrom::Start(i as u64 * SLOT_SIZE))?;
        // A partition too short for a slot holds no record there.
        if part.read_exact(&mut buf).is_ok() {
            *slot = decode_slot(&buf);
        }
    }
    Ok(slots)
}

/// Which of the two slots holds the newest intact record: the highest generation,
/// whether or not its payload decodes (on a tie, the one that does).
fn newest(slots: &[Option<Slot>; 2]) -> Option<usize> {
    let key = |i: usize| slots[i].as_ref().map(|s| (s.generation, s.record.is_ok()));
    match (key(0), key(1)) {
        (None, None) => None,
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (Some(a), Some(b)) => Some(if b > a { 1 } else { 0 }),
    }
}

/// Reads both slots at the start of `part` (the state partition); returns the
/// newest record and its generation. A newest record this build cannot decode is
/// an error, not a reason to fall back to the older copy: that one is stale.
pub fn read<D: Read + Seek>(part: &mut D) -> Result<(Record, u64), StateError> {
    let mut slots = read_slots(part)?;
    let slot = newest(&slots)
        .and_then(|i| slots[i].take())
        .ok_or(StateError::Empty)?;
    Ok((slot.record?, slot.generation))
}

/// What a write may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replace {
    /// Not a record of a newer format: it holds what this build cannot carry over.
    UpToThisFormat,
    /// Anything: the record of an OS that is being replaced as a whole.
    Anything,
}

/// Writes `record` as the next generation, into the slot not holding the newest
/// one, and flushes. `part` must be the state partition. Refuses, changing
/// nothing, if the newest record is of a format newer than this build knows.
pub fn write<D: Read + Write + Seek>(part: &mut D, record: &Record) -> Result<u64, StateError> {
    write_slot(part, record, Replace::UpToThisFormat)
}

/// Like [`write`], for a deploy's brand-new record on a disk it has just written:
/// whatever record is there, of any format, belongs to what the deploy replaced.
/// The old slot is still left alone, so the generations keep rising.
pub fn write_fresh<D: Read + Write + Seek>(
    part: &mut D,
    record: &Record,
) -> Result<u64, StateError> {
    write_slot(part, record, Replace::Anything)
}

fn write_slot<D: Read + Write + Seek>(
    part: &mut D,
    record: &Record,
    replace: Replace,
) -> Result<u64, StateError> {
    let slots = read_slots(part)?;
    let newest = newest(&slots);
    let current = newest.and_then(|i| slots[i].as_ref());
    if let Some(Slot {
        record: Err(StateError::Newer(version)),
        ..
    }) = current
        && replace == Replace::UpToThisFormat
    {
        return Err(StateError::Newer(*version));
    }
    // The generation follows the newest intact slot even when this build cannot
    // decode it: a lower one would lose to it, and the write would be as good as
    // lost, its other copy gone too.
    let generation = match current {
        Some(s) => s
            .generation
            .checked_add(1)
            .ok_or(StateError::GenerationExhausted(s.generation))?,
        None => 1,
    };
    let slot = match newest {
        Some(0) => 1,
        _ => 0,
    };
    let payload = postcard::to_stdvec(record).map_err(|e| io::Error::other(e.to_string()))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(StateError::TooLarge(payload.len()));
    }
    let mut buf = Vec::with_capacity(SLOT_SIZE as usize);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
    buf.resize((SLOT_SIZE - SLOT_RESERVED) as usize, 0);
    part.seek(SeekFrom::Start(slot * SLOT_SIZE))?;
    part.write_all(&buf)?;
    part.flush()?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn record(mode: Mode) -> Record {
        Record {
            deployed_at: 1_800_000_000,
            settings: [("hostname".to_string(), "node-1".to_string())].into(),
            status_url: Some("http://10.0.2.2:8080/status".into()),
            target: Some("52:54:00:12:34:56".into()),
            ..Record::new(mode, "os", Digest::of(b"m"))
        }
    }

    /// A slot holding `payload` under a valid checksum, at `generation`.
    fn raw_slot(part: &mut [u8], slot: usize, generation: u64, payload: &[u8]) {
        let at = slot * SLOT_SIZE as usize;
        part[at..at + 8].copy_from_slice(MAGIC);
        part[at + 8..at + 16].copy_from_slice(&generation.to_le_bytes());
        part[at + 16..at + 20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        part[at + 20..at + 24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        part[at + HEADER..at + HEADER + payload.len()].copy_from_slice(payload);
    }

    #[test]
    fn a_newest_slot_that_does_not_decode_is_never_overwritten() {
        // Format 2 by its number, but not a record this build can decode.
        let undecodable = [2u8, 9, 9, 9];
        // Slot 0 garbage, slot 1 generation 5 with a valid checksum: the write
        // goes to slot 0 as generation 6, and is what is read back.
        let mut part = vec![0u8; 2 * SLOT_SIZE as usize];
        raw_slot(&mut part, 1, 5, &undecodable);
        let mut part = Cursor::new(part);
        assert_eq!(write(&mut part, &record(Mode::Committed)).unwrap(), 6);
        assert_eq!(read(&mut part).unwrap(), (record(Mode::Committed), 6));
        assert_eq!(
            &part.get_ref()[SLOT_SIZE as usize + HEADER..][..4],
            &undecodable
        );

        // Slot 0 a good generation 1, slot 1 the undecodable generation 2: the
        // write is generation 3, into slot 0, leaving generation 2 alone.
        let mut part = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
        write(&mut part, &record(Mode::Deploy)).unwrap();
        raw_slot(part.get_mut(), 1, 2, &undecodable);
        assert_eq!(write(&mut part, &record(Mode::Committed)).unwrap(), 3);
        assert_eq!(read(&mut part).unwrap(), (record(Mode::Committed), 3));
        assert_eq!(
            &part.get_ref()[SLOT_SIZE as usize + HEADER..][..4],
            &undecodable
        );
    }

    #[test]
    fn newest_valid_copy_wins() {
        let mut part = Cursor::new(vec![0u8; 4 * SLOT_SIZE as usize]);
        assert!(matches!(read(&mut part), Err(StateError::Empty)));
        assert_eq!(write(&mut part, &record(Mode::Deploy)).unwrap(), 1);
        assert_eq!(write(&mut part, &record(Mode::Committed)).unwrap(), 2);
        let (r, g) = read(&mut part).unwrap();
        assert_eq!((r.mode, g), (Mode::Committed, 2));
        // Generation 2 went to slot 1; damage it and generation 1 comes back.
        part.get_mut()[SLOT_SIZE as usize + HEADER + 3] ^= 0xff;
        let (r, g) = read(&mut part).unwrap();
        assert_eq!((r.mode, g), (Mode::Deploy, 1));
        // The next write replaces the damaged slot, never the good one.
        assert_eq!(write(&mut part, &record(Mode::RolledBack)).unwrap(), 2);
        let (r, _) = read(&mut part).unwrap();
        assert_eq!(r.mode, Mode::RolledBack);
        part.get_mut()[SLOT_SIZE as usize + 5] ^= 0xff;
        assert_eq!(read(&mut part).unwrap().0.mode, Mode::Deploy);
    }

    #[test]
    fn records_never_touch_the_reserved_tail_of_a_slot() {
        let mut part = Cursor::new(vec![0xEEu8; 2 * SLOT_SIZE as usize]);
        for mode in [Mode::Deploy, Mode::Upgrade, Mode::Committed] {
            write(&mut part, &record(mode)).unwrap();
        }
        assert_eq!(read(&mut part).unwrap().0.mode, Mode::Committed);
        for slot in 0..2 {
            let end = ((slot + 1) * SLOT_SIZE) as usize;
            let tail = &part.get_ref()[end - SLOT_RESERVED as usize..end];
            assert!(tail.iter().all(|&b| b == 0xEE), "slot {slot}");
        }
        let huge = Record {
            saved_boot_record: Some(vec![1; MAX_PAYLOAD]),
            ..record(Mode::Deploy)
        };
        assert!(matches!(
            write(&mut part, &huge),
            Err(StateError::TooLarge(_))
        ));
    }

    #[test]
    fn format_1_records_are_still_read() {
        // A format 1 record is a current one without its last five fields.
        let mut v1 = record(Mode::Committed);
        v1.version = 1;
        let mut payload = postcard::to_stdvec(&v1).unwrap();
        let tail = postcard::to_stdvec(&(
            Agent::NotChecked,
            None::<ReleaseStamp>,
            None::<super::super::timing::Timings>,
            None::<super::super::cmdline::Secret>,
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
            include_bytes!("../../tests/fixtures/state/v1-base.bin"),
        ),
        (
            "format 1 with bundle",
            include_bytes!("../../tests/fixtures/state/v1-bundle.bin"),
        ),
        (
            "format 1 with bundle and saved boot record",
            include_bytes!("../../tests/fixtures/state/v1.bin"),
        ),
        (
            "format 2",
            include_bytes!("../../tests/fixtures/state/v2.bin"),
        ),
        (
            "format 3",
            include_bytes!("../../tests/fixtures/state/v3.bin"),
        ),
        (
            "format 4",
            include_bytes!("../../tests/fixtures/state/v4.bin"),
        ),
        (
            "format 5",
            include_bytes!("../../tests/fixtures/state/v5.bin"),
        ),
        (
            "format 6",
            include_bytes!("../../tests/fixtures/state/v6.bin"),
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
            bundle: (shape >= 1).then(|| super::super::bundle::BundleRef {
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
                super::super::cmdline::Secret("Zm9yIHRoZSBmaXh0dXJlIG9ubHkgMTIzNDU2Nzg5".into())
            }),
            handoff: (shape >= 7).then(|| HandoffNote {
                done: "reboot".into(),
                why: "its command line names no root=".into(),
                at: 1_800_000_400,
            }),
        }
    }

    /// The timings of format 4's fixture.
    fn fixture_timings() -> super::super::timing::Timings {
        use super::super::timing::{ByteSources, DataWork, Phase, Timings};
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

    /// An intact slot whose payload is of format `version`, as a newer build might
    /// write it (this build cannot know its fields).
    fn newer_payload(version: u8) -> Vec<u8> {
        let mut payload = vec![version];
        payload.extend_from_slice(b"fields of a format this build has never seen");
        payload
    }

    #[test]
    fn a_record_of_a_newer_format_is_named_and_kept() {
        let mut part = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
        write(&mut part, &record(Mode::Deploy)).unwrap();
        raw_slot(part.get_mut(), 1, 2, &newer_payload(7));
        let err = read(&mut part).unwrap_err();
        assert!(matches!(err, StateError::Newer(7)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("written by a newer imprint") && text.contains("upgrade imprint"),
            "{text}"
        );
        // An update refuses and changes nothing, not even the older slot.
        let before = part.get_ref().clone();
        let refused = write(&mut part, &record(Mode::Committed)).unwrap_err();
        assert!(matches!(refused, StateError::Newer(7)), "{refused:?}");
        assert!(*part.get_ref() == before);
        // A fresh deploy's record replaces it, as the next generation, in the other
        // slot.
        assert_eq!(write_fresh(&mut part, &record(Mode::Deploy)).unwrap(), 3);
        assert_eq!(read(&mut part).unwrap(), (record(Mode::Deploy), 3));
        assert_eq!(&part.get_ref()[SLOT_SIZE as usize + HEADER], &7);
        // The newer record was only the older slot: updates go ahead again.
        assert_eq!(write(&mut part, &record(Mode::Committed)).unwrap(), 4);
    }

    #[test]
    fn a_decodable_record_is_never_overwritten_while_the_other_slot_is_garbage() {
        for garbage in [vec![0u8; 64], b"IMPSTATE but nothing valid after".to_vec()] {
            for good in 0..2 {
                let mut part = vec![0xA5u8; 2 * SLOT_SIZE as usize];
                let mut fresh = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
                write(&mut fresh, &record(Mode::Deploy)).unwrap();
                let slot = &fresh.get_ref()[..SLOT_SIZE as usize];
                let s = SLOT_SIZE as usize;
                part[good * s..(good + 1) * s].copy_from_slice(slot);
                let other = (1 - good) * s;
                part[other..other + garbage.len()].copy_from_slice(&garbage);
                let mut part = Cursor::new(part);
                assert_eq!(write(&mut part, &record(Mode::Committed)).unwrap(), 2);
                assert_eq!(
                    &part.get_ref()[good * s..(good + 1) * s],
                    slot,
                    "the good copy in slot {good} was overwritten"
                );
                assert_eq!(read(&mut part).unwrap(), (record(Mode::Committed), 2));
            }
        }
    }

    #[test]
    fn lengths_are_bounded_by_the_slot_before_anything_is_allocated() {
        let s = SLOT_SIZE as usize;
        // A length past the slot is no record at all, whatever follows.
        for len in [u32::MAX, (s - HEADER + 1) as u32, (s * 2) as u32] {
            let mut part = vec![0u8; 4 * s];
            part[..8].copy_from_slice(MAGIC);
            part[8..16].copy_from_slice(&9u64.to_le_bytes());
            part[16..20].copy_from_slice(&len.to_le_bytes());
            assert!(matches!(
                read(&mut Cursor::new(part)),
                Err(StateError::Empty)
            ));
        }
        // One that fills the slot (as builds before the reserved tail could) is
        // taken at its word.
        let mut part = vec![0u8; 2 * s];
        raw_slot(&mut part, 0, 4, &vec![2u8; s - HEADER]);
        assert!(matches!(
            read(&mut Cursor::new(part)),
            Err(StateError::Undecodable { generation: 4, .. })
        ));
        // Inside an intact payload, a length prefix claiming more than the payload
        // holds is an error, not an allocation: here the saved boot record's.
        let mut payload = postcard::to_stdvec(&Record {
            saved_boot_record: None,
            agent: Agent::Own,
            ..record(Mode::Deploy)
        })
        .unwrap();
        let tail = postcard::to_stdvec(&(
            None::<Vec<u8>>,
            Agent::Own,
            None::<ReleaseStamp>,
            None::<super::super::timing::Timings>,
            None::<super::super::cmdline::Secret>,
            None::<HandoffNote>,
        ))
        .unwrap();
        payload.truncate(payload.len() - tail.len());
        payload.push(1); // Some(
        payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        let mut part = vec![0u8; 2 * s];
        raw_slot(&mut part, 0, 5, &payload);
        let err = read(&mut Cursor::new(part)).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Undecodable {
                    version: RECORD_VERSION,
                    ..
                }
            ),
            "{err:?}"
        );
        // And the slots are read a slot at a time, never by a length from the disk.
        let mut probe = Probe {
            inner: Cursor::new(vec![0u8; 2 * s]),
            largest: 0,
        };
        probe.inner.get_mut()[..8].copy_from_slice(MAGIC);
        probe.inner.get_mut()[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = read(&mut probe);
        let _ = write(&mut probe, &record(Mode::Deploy));
        assert!(probe.largest <= s, "{} bytes read at once", probe.largest);
    }

    /// A stream that remembers the largest read asked of it.
    struct Probe {
        inner: Cursor<Vec<u8>>,
        largest: usize,
    }

    impl Read for Probe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest = self.largest.max(buf.len());
            self.inner.read(buf)
        }
    }

    impl Write for Probe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Probe {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
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

    #[test]
    fn the_generation_counter_does_not_wrap() {
        let mut part = vec![0u8; 2 * SLOT_SIZE as usize];
        raw_slot(
            &mut part,
            0,
            u64::MAX,
            &postcard::to_stdvec(&record(Mode::Deploy)).unwrap(),
        );
        let mut part = Cursor::new(part);
        assert!(matches!(
            write(&mut part, &record(Mode::Committed)),
            Err(StateError::GenerationExhausted(u64::MAX))
        ));
    }

    #[test]
    fn a_torn_write_leaves_the_old_record() {
        let mut part = Cursor::new(vec![0u8; 2 * SLOT_SIZE as usize]);
        write(&mut part, &record(Mode::Deploy)).unwrap();
        let before = part.get_ref().clone();
        write(&mut part, &record(Mode::Committed)).unwrap();
        // Every prefix of the second write, as if power failed mid-way.
        let after = part.get_ref().clone();
        for cut in (0..SLOT_SIZE as usize).step_by(997) {
            let mut torn = before.clone();
            let s = SLOT_SIZE as usize;
            torn[s..s + cut].copy_from_slice(&after[s..s + cut]);
            let (r, _) = read(&mut Cursor::new(torn)).unwrap();
            assert!(matches!(r.mode, Mode::Deploy | Mode::Committed));
        }
    }

    #[test]
    fn garbage_is_not_a_record() {
        let mut x = 7u64;
        for _ in 0..200 {
            let mut buf = vec![0u8; 2 * SLOT_SIZE as usize];
            buf[..8].copy_from_slice(MAGIC);
            for b in buf[8..200].iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = read(&mut Cursor::new(buf));
        }
    }
}
