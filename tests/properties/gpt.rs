use super::*;
use imprint::format::gpt::*;

/// A table to build: sector size, entry count and size, usable area, and
/// (type, first, last, name) partitions placed in entry slots.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub ss: usize,
    pub count: u32,
    pub entry_size: u32,
    pub first_usable: u64,
    pub last_usable: u64,
    pub parts: Vec<(usize, Guid, Guid, u64, u64, String)>,
}

pub(crate) fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec![512usize, 4096]),
        1u32..=160,
        prop::sample::select(vec![128u32, 256]),
        0u64..4096,
    )
        .prop_flat_map(|(ss, count, entry_size, room)| {
            let entry_sectors = (count as u64 * entry_size as u64).div_ceil(ss as u64);
            let first = 2 + entry_sectors;
            let last = first + room;
            let part = (
                0..count as usize,
                guid().prop_filter("used", |g| !g.is_nil()),
                guid(),
                first..=last,
                first..=last,
                ".{0,36}",
            )
                .prop_map(|(slot, t, u, a, b, name)| (slot, t, u, a.min(b), a.max(b), name));
            (
                Just(ss),
                Just(count),
                Just(entry_size),
                Just(first),
                Just(last),
                vec(part, 0..6),
            )
        })
        .prop_map(
            |(ss, count, entry_size, first_usable, last_usable, mut parts)| {
                // One partition per entry slot.
                parts.sort_by_key(|p| p.0);
                parts.dedup_by_key(|p| p.0);
                Spec {
                    ss,
                    count,
                    entry_size,
                    first_usable,
                    last_usable,
                    parts,
                }
            },
        )
}

/// The primary GPT the spec describes, as the first sectors of a disk:
/// protective MBR, header, entries.
pub(crate) fn image(s: &Spec) -> Vec<u8> {
    let entries_len = s.count as usize * s.entry_size as usize;
    let entry_sectors = entries_len.div_ceil(s.ss);
    let mut img = vec![0u8; (2 + entry_sectors) * s.ss];
    img[446 + 4] = 0xEE;
    img[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    img[510..512].copy_from_slice(&[0x55, 0xAA]);
    for (slot, t, u, first, last, name) in &s.parts {
        let e = &mut img[2 * s.ss + slot * s.entry_size as usize..][..128];
        e[0..16].copy_from_slice(&t.0);
        e[16..32].copy_from_slice(&u.0);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, unit) in name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let h = &mut img[s.ss..2 * s.ss];
    h[..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[32..40].copy_from_slice(&(s.last_usable + entry_sectors as u64 + 1).to_le_bytes());
    h[40..48].copy_from_slice(&s.first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&s.last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&[0xAB; 16]);
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[80..84].copy_from_slice(&s.count.to_le_bytes());
    h[84..88].copy_from_slice(&s.entry_size.to_le_bytes());
    reseal(&mut img, s.ss);
    img
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Both checksums of the header at LBA 1 made right again, for whatever its
/// fields now say, where what they say fits in `img`.
pub(crate) fn reseal(img: &mut [u8], ss: usize) {
    if img.len() < 2 * ss {
        return;
    }
    let h = &img[ss..2 * ss];
    let (lba, count, size) = (le64(h, 72), le32(h, 80), le32(h, 84));
    let range = (lba as usize)
        .checked_mul(ss)
        .and_then(|at| Some(at..at.checked_add(count as usize * size as usize)?));
    if let Some(entries) = range.and_then(|r| img.get(r)) {
        let crc = crc32fast::hash(entries);
        img[ss + 88..ss + 92].copy_from_slice(&crc.to_le_bytes());
    }
    let header_size = le32(&img[ss..], 12) as usize;
    if (92..=ss).contains(&header_size) {
        img[ss + 16..ss + 20].fill(0);
        let crc = crc32fast::hash(&img[ss..ss + header_size]);
        img[ss + 16..ss + 20].copy_from_slice(&crc.to_le_bytes());
    }
}

/// An interesting value written over one header field.
fn header_field() -> impl Strategy<Value = (usize, u8, u64)> {
    (
        prop::sample::select(vec![
            (8usize, 4u8),
            (12, 4),
            (24, 8),
            (32, 8),
            (40, 8),
            (48, 8),
            (72, 8),
            (80, 4),
            (84, 4),
        ]),
        interesting(),
    )
        .prop_map(|((at, width), value)| (at, width, value))
}

/// What the deploy adds (its own state partition): a used type, some bytes.
fn new_partition() -> impl Strategy<Value = NewPartition> {
    (
        guid().prop_filter("used", |g| !g.is_nil()),
        guid(),
        // At most 36 UTF-16 units, no NUL: what an entry's name holds.
        "[^\\x00]{0,18}",
        1u64..=1 << 40,
    )
        .prop_map(|(type_guid, unique_guid, name, size)| NewPartition {
            type_guid,
            unique_guid,
            name,
            size,
        })
}

fn read_bounded(img: &[u8]) -> Result<Option<Layout>, GptError> {
    bounded(img.len(), || read(&mut Cursor::new(img)))
}

/// What relocation must leave: a primary table that reads back with the
/// image's partitions (and the added one) on a disk of `disk_size` bytes, and
/// a backup table whose checksums hold, ending at the disk's end.
fn check_relocated(
    before: &Layout,
    head: &[u8],
    r: &Relocated,
    disk_size: u64,
) -> Result<(), TestCaseError> {
    let after = read(&mut Cursor::new(head)).unwrap().unwrap();
    let ss = after.sector_size as u64;
    // The added partition comes last in what relocation says, in entry
    // order in what is read back.
    let mut said = r.layout.clone();
    said.partitions.sort_by_key(|p| p.number);
    prop_assert_eq!(&after, &said);
    let mut want = before.partitions.clone();
    want.extend(r.added.clone());
    let mut got = after.partitions.clone();
    want.sort_by_key(|p| p.number);
    got.sort_by_key(|p| p.number);
    prop_assert_eq!(got, want);
    prop_assert!(
        after
            .partitions
            .iter()
            .all(|p| p.last_lba <= after.last_usable_lba)
    );
    prop_assert!((after.last_usable_lba + 1) * ss <= r.backup_offset);
    prop_assert_eq!(r.backup_offset + r.backup.len() as u64, disk_size);
    let bh = &r.backup[r.backup.len() - ss as usize..];
    prop_assert_eq!(&bh[..8], b"EFI PART");
    prop_assert_eq!(le64(bh, 24), disk_size / ss - 1);
    prop_assert_eq!(le64(bh, 32), 1);
    let header_size = le32(bh, 12) as usize;
    let mut crc_input = bh[..header_size].to_vec();
    crc_input[16..20].fill(0);
    prop_assert_eq!(crc32fast::hash(&crc_input), le32(bh, 16));
    let entries_len = le32(bh, 80) as usize * le32(bh, 84) as usize;
    prop_assert_eq!(crc32fast::hash(&r.backup[..entries_len]), le32(bh, 88));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tables_read_back(s in spec()) {
        let img = image(&s);
        let layout = read(&mut Cursor::new(&img)).unwrap().unwrap();
        prop_assert_eq!(layout.sector_size as usize, s.ss);
        prop_assert_eq!(layout.first_usable_lba, s.first_usable);
        prop_assert_eq!(layout.last_usable_lba, s.last_usable);
        let want: Vec<_> = s
            .parts
            .iter()
            .map(|(slot, t, u, first, last, name)| {
                let units: Vec<u16> =
                    name.encode_utf16().take(36).take_while(|&u| u != 0).collect();
                Partition {
                    number: *slot as u32 + 1,
                    type_guid: *t,
                    unique_guid: *u,
                    first_lba: *first,
                    last_lba: *last,
                    attributes: 0,
                    name: String::from_utf16_lossy(&units),
                }
            })
            .collect();
        prop_assert_eq!(layout.partitions, want);
    }

    #[test]
    fn relocation_keeps_a_valid_table(
        s in spec(),
        extra in 0u64..1 << 40,
        add in prop::option::of(new_partition()),
        disk_guid in prop::option::of(guid()),
    ) {
        let mut head = image(&s);
        let before = read(&mut Cursor::new(&head)).unwrap().unwrap();
        let disk_size = (s.last_usable + 1) * s.ss as u64 + extra;
        let r = bounded(head.len(), || relocate(&mut head, disk_size, add.as_ref(), disk_guid));
        // Refused only for what the disk or the added partition lacks: the
        // image itself is a valid one.
        let ss = s.ss as u64;
        let entry_sectors = (s.count as u64 * s.entry_size as u64).div_ceil(ss);
        let sectors = disk_size / ss;
        let last_used = before.partitions.iter().map(|p| p.last_lba).max().unwrap_or(0);
        let fits = sectors >= 2 + 2 * entry_sectors + 2
            && sectors - 2 - entry_sectors > last_used
            && sectors - 2 - entry_sectors >= before.first_usable_lba;
        match r {
            Ok(r) => check_relocated(&before, &head, &r, sectors * ss)?,
            Err(RelocateError::DiskTooSmall { .. }) => prop_assert!(!fits),
            Err(RelocateError::NoRoom { .. } | RelocateError::NoFreeEntry) => {
                prop_assert!(add.is_some() && fits)
            }
            Err(e) => prop_assert!(false, "a valid image refused: {e}"),
        }
    }

    /// On a disk at least as large as the one the image was made for,
    /// relocation without a new partition always succeeds.
    #[test]
    fn relocation_to_a_disk_no_smaller_than_the_image_s_succeeds(
        s in spec(),
        extra in 0u64..1 << 40,
        disk_guid in prop::option::of(guid()),
    ) {
        let mut head = image(&s);
        let before = read(&mut Cursor::new(&head)).unwrap().unwrap();
        let ss = s.ss as u64;
        let entry_sectors = (s.count as u64 * s.entry_size as u64).div_ceil(ss);
        let disk_size = (s.last_usable + 1 + entry_sectors + 1) * ss + extra;
        let r = relocate(&mut head, disk_size, None, disk_guid);
        prop_assert!(r.is_ok(), "{:?}", r.err());
        check_relocated(&before, &head, &r.unwrap(), disk_size / ss * ss)?;
    }

    #[test]
    fn mutated_headers_never_panic(
        s in spec(),
        fields in vec(header_field(), 1..4),
        ms in vec(mutation(), 0..3),
        fix_crc in any::<bool>(),
        disk_size in interesting(),
        add in prop::option::of(new_partition()),
    ) {
        let mut img = image(&s);
        let ss = s.ss;
        for (at, width, value) in fields {
            let at = ss + at;
            let width = width as usize;
            img[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        let mut img = mutate(&img, &ms);
        if fix_crc {
            reseal(&mut img, ss);
        }
        if let Ok(Some(before)) = read_bounded(&img) {
            prop_assert!(before.first_usable_lba <= before.last_usable_lba);
            for p in &before.partitions {
                prop_assert!(before.first_usable_lba <= p.first_lba);
                prop_assert!(p.first_lba <= p.last_lba);
                prop_assert!(p.last_lba <= before.last_usable_lba);
            }
            let mut head = img.clone();
            let r = bounded(head.len(), || relocate(&mut head, disk_size, add.as_ref(), None));
            if let Ok(r) = r {
                check_relocated(&before, &head, &r, disk_size / ss as u64 * ss as u64)?;
            }
            let mut head = img.clone();
            let _ = renew_partition_guid(&mut head, disk_size as u32 % 200, Guid([1; 16]));
        }
    }

    #[test]
    fn arbitrary_disks_never_panic(
        bytes in bytes(),
        signature in any::<bool>(),
        fix_crc in any::<bool>(),
    ) {
        let mut img = bytes;
        for ss in [512usize, 4096] {
            if signature && img.len() >= ss + 8 {
                img[ss..ss + 8].copy_from_slice(b"EFI PART");
            }
            if fix_crc {
                reseal(&mut img, ss);
            }
        }
        let _ = read_bounded(&img);
    }
}

#[test]
fn a_declared_entry_array_too_large_is_refused_before_it_is_read() {
    let s = Spec {
        ss: 512,
        count: 4,
        entry_size: 128,
        first_usable: 34,
        last_usable: 1000,
        parts: Vec::new(),
    };
    for (count, size) in [(u32::MAX, 4096u32), (1 << 20, 128), (8193, 128)] {
        let mut img = image(&s);
        img[512 + 80..512 + 84].copy_from_slice(&count.to_le_bytes());
        img[512 + 84..512 + 88].copy_from_slice(&size.to_le_bytes());
        reseal(&mut img, 512);
        let mut result = None;
        let heap = peak_heap(|| result = Some(read(&mut Cursor::new(&img))));
        assert!(
            matches!(result, Some(Err(GptError::BadHeader(_)))),
            "{count} entries of {size} bytes: {result:?}"
        );
        assert!(heap < 64 << 10, "{heap} bytes of heap");
    }
}
