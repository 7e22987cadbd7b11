//! The two slots of the state partition: which one holds the newest record,
//! and writing the next generation into the other.

use super::formats::decode_payload;
use super::record::Record;
use super::{HEADER, MAGIC, MAX_PAYLOAD, SLOT_RESERVED, SLOT_SIZE, StateError};
use std::io::{self, Read, Seek, SeekFrom, Write};

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
    use super::super::testing::{raw_slot, record};
    use super::super::*;
    use std::io::{Cursor, Read, Seek, SeekFrom, Write};

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
            None::<crate::format::timing::Timings>,
            None::<crate::format::cmdline::Secret>,
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
