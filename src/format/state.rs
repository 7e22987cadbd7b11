//! The state record kept in each deployed disk's `imprint-state` partition: what
//! was deployed, in which mode, where the previous OS lives, the per-host settings,
//! and whether the new OS has committed.
//!
//! Double-buffered: two slots of [`SLOT_SIZE`] bytes at the start of the partition.
//! Each slot is `magic | generation | length | crc32 | postcard payload`; the valid
//! slot with the highest generation wins, and a write always goes to the other
//! slot, so a power cut at any moment leaves the previous record readable. The
//! last [`SLOT_RESERVED`] bytes of each slot are never written by a record: the
//! state partition keeps other things there.

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
/// Format 2 added [`Record::agent`]; format 1 records are still read.
pub const RECORD_VERSION: u32 = 2;

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
}

/// A record of format 1: [`Record`] without `agent`.
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
    bundle: Option<super::bundle::BundleRef>,
    saved_boot_record: Option<Vec<u8>>,
}

impl From<RecordV1> for Record {
    fn from(v1: RecordV1) -> Record {
        let _ = v1.version;
        Record {
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
            bundle: v1.bundle,
            saved_boot_record: v1.saved_boot_record,
            agent: Agent::NotChecked,
        }
    }
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the state record: {0}")]
    Io(#[from] io::Error),
    #[error("no valid state record (both copies empty or damaged)")]
    Empty,
    #[error("state record of format {0} is newer than this imprint understands")]
    UnknownVersion(u32),
    #[error("state record is {0} bytes; the limit is {MAX_PAYLOAD}")]
    TooLarge(usize),
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    record: Result<Record, StateError>,
}

fn decode_slot(buf: &[u8]) -> Option<Slot> {
    if buf.len() < HEADER || &buf[..8] != MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(buf[16..20].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[20..24].try_into().ok()?);
    let payload = buf.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let record = match postcard::take_from_bytes::<u32>(payload) {
        Ok((1, _)) => postcard::from_bytes::<RecordV1>(payload)
            .map(Record::from)
            .map_err(|_| StateError::Empty),
        Ok((v, _)) if v != RECORD_VERSION => Err(StateError::UnknownVersion(v)),
        Ok(_) => postcard::from_bytes::<Record>(payload).map_err(|_| StateError::Empty),
        Err(_) => Err(StateError::Empty),
    };
    Some(Slot { generation, record })
}

/// Reads both slots at the start of `part` (the state partition); returns the
/// newest valid record and its generation.
pub fn read<D: Read + Seek>(part: &mut D) -> Result<(Record, u64), StateError> {
    let mut best: Option<Slot> = None;
    for i in 0..2 {
        let mut buf = vec![0u8; SLOT_SIZE as usize];
        part.seek(SeekFrom::Start(i * SLOT_SIZE))?;
        if part.read_exact(&mut buf).is_err() {
            continue;
        }
        if let Some(slot) = decode_slot(&buf)
            && best.as_ref().is_none_or(|b| slot.generation > b.generation)
        {
            best = Some(slot);
        }
    }
    let slot = best.ok_or(StateError::Empty)?;
    Ok((slot.record?, slot.generation))
}

/// Writes `record` as the next generation, into the slot not holding the current
/// one, and flushes. `part` must be the state partition.
pub fn write<D: Read + Write + Seek>(part: &mut D, record: &Record) -> Result<u64, StateError> {
    let current = read(part).map(|(_, g)| g).ok();
    // Find which slot holds the current generation, to write the other one.
    let mut current_slot = None;
    for i in 0..2u64 {
        let mut buf = vec![0u8; HEADER + 8];
        part.seek(SeekFrom::Start(i * SLOT_SIZE))?;
        if part.read_exact(&mut buf).is_ok()
            && &buf[..8] == MAGIC
            && Some(u64::from_le_bytes(
                buf[8..16].try_into().unwrap_or_default(),
            )) == current
        {
            current_slot = Some(i);
        }
    }
    let generation = current.map_or(1, |g| g + 1);
    let slot = match current_slot {
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
        // A format 1 record is a format 2 one without its last field.
        let mut v1 = record(Mode::Committed);
        v1.version = 1;
        let mut payload = postcard::to_stdvec(&v1).unwrap();
        let agent = postcard::to_stdvec(&Agent::NotChecked).unwrap();
        payload.truncate(payload.len() - agent.len());
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
