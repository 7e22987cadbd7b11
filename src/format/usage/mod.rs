//! Which bytes of a disk hold data: the allocation map a capture follows so that
//! the free blocks of file systems it understands are stored as zeros (as
//! partclone does), and junk left in free space never reaches an image.
//!
//! Conservative everywhere: a byte is free only when a file system we read
//! exactly says so. Partition tables, gaps between partitions, boot areas and
//! anything not understood (LUKS, LVM, btrfs, a damaged or unusual file system)
//! count as used.

mod ext4;
mod fat;
mod table;

use super::fstype;
use super::gpt::GptError;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

/// Most ranges one map keeps (16 bytes each: 4 MiB). A badly fragmented file
/// system could give one range per block; past this, the narrowest free gaps
/// are counted as used instead, which only makes a capture a little larger.
const MAX_RANGES: usize = 1 << 18;

/// What a swap area keeps across a reboot: its header page (UUID, label).
const SWAP_HEADER: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(
        "reading the disk: {0}; check the device (and the size given for it), then capture again"
    )]
    Io(#[from] io::Error),
    #[error(
        "the GPT is damaged ({0}); repair it (gdisk rebuilds it from the backup copy) before capturing"
    )]
    Gpt(GptError),
    #[error(
        "the ext2/3/4 file system is implausible: {0}; e2fsck -f may repair it, until then it is captured whole"
    )]
    Ext4(&'static str),
    #[error("the ext2/3/4 file system {0}; it is captured whole")]
    Ext4Unsupported(&'static str),
    #[error(
        "the FAT file system is implausible: {0}; fsck.vfat may repair it, until then it is captured whole"
    )]
    Fat(&'static str),
    #[error(
        "the swap area's header is not version 1 within its partition; it is captured whole (mkswap makes a new one)"
    )]
    Swap,
}

impl From<GptError> for UsageError {
    fn from(e: GptError) -> UsageError {
        match e {
            GptError::Io(e) => UsageError::Io(e),
            e => UsageError::Gpt(e),
        }
    }
}

/// Byte ranges of a disk that hold data; the rest is free and may be read as zeros.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsedMap {
    /// Sorted, merged (no two touch), none empty.
    ranges: Vec<Range<u64>>,
}

impl UsedMap {
    /// The map of `ranges` in any order, overlapping or not.
    pub fn new(ranges: impl IntoIterator<Item = Range<u64>>) -> UsedMap {
        let mut set = RangeSet::new();
        for r in ranges {
            set.push(r);
        }
        UsedMap {
            ranges: set.finish(),
        }
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    pub fn used_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Index of the first range ending after `start`.
    fn first_after(&self, start: u64) -> usize {
        self.ranges.partition_point(|r| r.end <= start)
    }

    /// Whether any byte of [start, end) is used (for skipping whole chunks fast).
    pub fn any_used(&self, start: u64, end: u64) -> bool {
        self.ranges
            .get(self.first_after(start))
            .is_some_and(|r| r.start < end && start < end)
    }

    /// The used sub-ranges of [start, end), clipped (for zeroing the free parts
    /// inside a chunk).
    pub fn used_within(&self, start: u64, end: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges[self.first_after(start)..]
            .iter()
            .take_while(move |r| r.start < end)
            .map(move |r| r.start.max(start)..r.end.min(end))
            .filter(|r| !r.is_empty())
    }

    /// Span from 0 to the end of the last used byte.
    pub fn used_span(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.end)
    }
}

/// Collects ranges in any order into a sorted, merged list of at most
/// [`MAX_RANGES`] (coarsened past that, never dropping a used byte).
struct RangeSet {
    ranges: Vec<Range<u64>>,
    cap: usize,
    /// Free gaps narrower than this are merged into the ranges around them.
    gap: u64,
}

impl RangeSet {
    fn new() -> RangeSet {
        RangeSet::with_cap(MAX_RANGES)
    }

    fn with_cap(cap: usize) -> RangeSet {
        RangeSet {
            ranges: Vec::new(),
            cap: cap.max(1),
            gap: 0,
        }
    }

    fn push(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        // Bitmaps give ranges in order: extend the last one without a sort.
        if let Some(last) = self.ranges.last_mut()
            && r.start >= last.start
            && r.start <= last.end.saturating_add(self.gap)
        {
            last.end = last.end.max(r.end);
            return;
        }
        self.ranges.push(r);
        if self.ranges.len() >= 2 * self.cap {
            self.compact();
        }
    }

    fn compact(&mut self) {
        loop {
            self.ranges.sort_unstable_by_key(|r| r.start);
            let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.ranges.len().min(self.cap));
            for r in self.ranges.drain(..) {
                match merged.last_mut() {
                    Some(last) if r.start <= last.end.saturating_add(self.gap) => {
                        last.end = last.end.max(r.end)
                    }
                    _ => merged.push(r),
                }
            }
            self.ranges = merged;
            if self.ranges.len() <= self.cap {
                return;
            }
            self.gap = (self.gap.saturating_mul(2)).max(4096);
        }
    }

    fn finish(mut self) -> Vec<Range<u64>> {
        self.compact();
        self.ranges
    }
}

/// What was found per partition, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartUsage {
    /// The partition's number as Linux gives it; 0 for a disk without a
    /// partition table (the file system, if any, fills the disk).
    pub number: u32,
    pub start: u64,
    pub len: u64,
    /// How it was read: "ext4" (ext2/3/4), "FAT", "swap", or "raw" (all used).
    pub kind: &'static str,
    /// Bytes used, within the partition.
    pub used: u64,
    /// Why a file system that was recognised was read raw after all.
    pub fallback: Option<String>,
}

/// The allocation map of a whole disk of `disk_size` bytes, and what was found in
/// each partition. Only a read error or a damaged GPT is an error; a file system
/// that cannot be read exactly is counted whole (its [`PartUsage::fallback`] says
/// why).
pub fn disk_usage<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
) -> Result<(UsedMap, Vec<PartUsage>), UsageError> {
    let mut set = RangeSet::new();
    let mut report = Vec::new();
    let (parts, reserved) = match table::read(disk, disk_size)? {
        Some(t) => (t.partitions, t.reserved),
        // No table: whatever file system there is fills the disk.
        None => (vec![(0, 0..disk_size)], Vec::new()),
    };
    // Everything outside the partitions holds boot code or tables.
    let mut covered: Vec<Range<u64>> = parts.iter().map(|(_, r)| r.clone()).collect();
    covered.sort_unstable_by_key(|r| r.start);
    let mut at = 0;
    for r in &covered {
        set.push(at..r.start.max(at));
        at = at.max(r.end);
    }
    set.push(at..disk_size);
    for r in reserved {
        set.push(r.start.min(disk_size)..r.end.min(disk_size));
    }
    for (number, r) in parts {
        let mut part = Window::new(disk, r.start, r.end - r.start);
        let found = part_usage(&mut part)?;
        let mut used = 0;
        for u in found.used {
            let u = u.start.min(r.end - r.start)..u.end.min(r.end - r.start);
            used += u.end.saturating_sub(u.start);
            set.push(r.start + u.start..r.start + u.end);
        }
        report.push(PartUsage {
            number,
            start: r.start,
            len: r.end - r.start,
            kind: found.kind,
            used,
            fallback: found.fallback,
        });
    }
    report.sort_by_key(|p| p.number);
    Ok((
        UsedMap {
            ranges: set.finish(),
        },
        report,
    ))
}

/// What one partition was read as.
struct Found {
    kind: &'static str,
    /// Used ranges, relative to the partition's start.
    used: Vec<Range<u64>>,
    /// Why a file system that was recognised was read raw after all.
    fallback: Option<String>,
}

impl Found {
    fn raw(len: u64, fallback: Option<String>) -> Found {
        Found {
            kind: "raw",
            used: std::iter::once(0..len).collect(),
            fallback,
        }
    }
}

/// One partition's used ranges, by what its signature says it holds; raw where
/// that cannot be read exactly.
fn part_usage<D: Read + Seek>(part: &mut Window<D>) -> Result<Found, UsageError> {
    let len = part.len;
    let mut head = Vec::new();
    part.seek(SeekFrom::Start(0))?;
    part.by_ref()
        .take(fstype::HEAD_LEN as u64)
        .read_to_end(&mut head)?;
    let (kind, read) = match fstype::identify(&head) {
        Some("ext2/3/4") => ("ext4", ext4_used(part, len)),
        Some("FAT") => ("FAT", fat_used(part, len)),
        Some("swap") => ("swap", swap_used(&head, len)),
        _ => return Ok(Found::raw(len, None)),
    };
    match read {
        Ok(used) => Ok(Found {
            kind,
            used,
            fallback: None,
        }),
        Err(UsageError::Io(e)) => Err(e.into()),
        Err(e) => Ok(Found::raw(len, Some(format!("{kind}: {e}")))),
    }
}

/// A swap area's header (its first page), checked as the kernel reads it:
/// version 1, and the area within the partition. What it swapped out means
/// nothing after a reboot.
fn swap_used(head: &[u8], len: u64) -> Result<Vec<Range<u64>>, UsageError> {
    let word = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match (word(1024), word(1028)) {
        (Some(1), Some(last_page)) if (u64::from(last_page) + 1) * SWAP_HEADER <= len => {
            Ok(std::iter::once(0..SWAP_HEADER.min(len)).collect())
        }
        _ => Err(UsageError::Swap),
    }
}

/// The used byte ranges of the ext2/3/4 file system in `part` (of `part_len`
/// bytes), relative to its start: sorted and merged.
pub fn ext4_used<D: Read + Seek>(
    part: &mut D,
    part_len: u64,
) -> Result<Vec<Range<u64>>, UsageError> {
    let mut set = RangeSet::new();
    ext4::used(part, part_len, &mut set)?;
    Ok(set.finish())
}

/// The used byte ranges of the FAT12/16/32 file system in `part` (of `part_len`
/// bytes), relative to its start: sorted and merged.
pub fn fat_used<D: Read + Seek>(
    part: &mut D,
    part_len: u64,
) -> Result<Vec<Range<u64>>, UsageError> {
    let mut set = RangeSet::new();
    fat::used(part, part_len, &mut set)?;
    Ok(set.finish())
}

/// A byte range of a disk read as a device of its own: reads stop at its end.
struct Window<'a, D> {
    inner: &'a mut D,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a, D: Read + Seek> Window<'a, D> {
    fn new(inner: &'a mut D, start: u64, len: u64) -> Window<'a, D> {
        Window {
            inner,
            start,
            len,
            pos: 0,
        }
    }
}

impl<D: Read + Seek> Read for Window<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<D: Read + Seek> Seek for Window<'_, D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests;
