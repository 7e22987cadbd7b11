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

mod formats;
mod record;
mod slots;

pub use record::{Agent, HandoffNote, Mode, PreviousOs, Record, ReleaseStamp};
pub use slots::{read, write, write_fresh};

use std::io;

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

/// What the tests of the slots and of the formats both build on.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::format::digest::Digest;

    pub fn record(mode: Mode) -> Record {
        Record {
            deployed_at: 1_800_000_000,
            settings: [("hostname".to_string(), "node-1".to_string())].into(),
            status_url: Some("http://10.0.2.2:8080/status".into()),
            target: Some("52:54:00:12:34:56".into()),
            ..Record::new(mode, "os", Digest::of(b"m"))
        }
    }

    /// A slot holding `payload` under a valid checksum, at `generation`.
    pub fn raw_slot(part: &mut [u8], slot: usize, generation: u64, payload: &[u8]) {
        let at = slot * SLOT_SIZE as usize;
        part[at..at + 8].copy_from_slice(MAGIC);
        part[at + 8..at + 16].copy_from_slice(&generation.to_le_bytes());
        part[at + 16..at + 20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        part[at + 20..at + 24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        part[at + HEADER..at + HEADER + payload.len()].copy_from_slice(payload);
    }
}
