use super::*;
use imprint::format::ext4::*;

const SB: usize = 1024;
const SPARSE_SUPER: u32 = 0x1;
const METADATA_CSUM: u32 = 0x400;
const SPARSE_SUPER2: u32 = 0x200;
const CSUM_SEED: u32 = 0x2000;

/// A file system to build: block size, blocks per group, groups, features.
#[derive(Clone, Debug)]
struct Spec {
    log: u32,
    per_group: u32,
    groups: u32,
    sparse: u8,
    backup_bgs: [u32; 2],
    csum: bool,
    seed: bool,
    uuid: [u8; 16],
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u32..=2,
        prop::sample::select(vec![8u32, 16, 32]),
        1u32..=12,
        0u8..3,
        any::<[u32; 2]>(),
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 16]>(),
    )
        .prop_map(
            |(log, per_group, groups, sparse, bgs, csum, seed, uuid)| Spec {
                log,
                per_group,
                groups,
                sparse,
                backup_bgs: [bgs[0] % (groups + 1), bgs[1] % (groups + 1)],
                csum,
                seed,
                uuid,
            },
        )
}

fn put(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn crc(data: &[u8]) -> u32 {
    !crc32c::crc32c(data)
}

/// The file system, with a superblock copy at the start of every group
/// (more than the features ask for: the ones where none should be are
/// checked to stay untouched).
fn image(s: &Spec) -> Vec<u8> {
    let bs = 1024usize << s.log;
    let first_data_block = u32::from(s.log == 0);
    let blocks = s.groups * s.per_group + first_data_block;
    let mut img = vec![0u8; blocks as usize * bs];
    let mut sb = vec![0u8; SB];
    put(&mut sb, 0x04, blocks);
    put(&mut sb, 0x14, first_data_block);
    put(&mut sb, 0x18, s.log);
    put(&mut sb, 0x20, s.per_group);
    sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
    let compat = if s.sparse == 2 { SPARSE_SUPER2 } else { 0 };
    put(&mut sb, 0x5C, compat);
    put(&mut sb, 0x60, if s.seed { CSUM_SEED } else { 0 });
    let ro = if s.sparse == 1 { SPARSE_SUPER } else { 0 } | if s.csum { METADATA_CSUM } else { 0 };
    put(&mut sb, 0x64, ro);
    sb[0x68..0x78].copy_from_slice(&s.uuid);
    put(&mut sb, 0x24C, s.backup_bgs[0]);
    put(&mut sb, 0x250, s.backup_bgs[1]);
    if s.seed {
        put(&mut sb, 0x270, 0x5EED);
    }
    for g in 0..s.groups {
        let offset = if g == 0 {
            1024
        } else {
            ((g * s.per_group + first_data_block) as usize) * bs
        };
        let mut copy = sb.clone();
        copy[0x5A..0x5C].copy_from_slice(&(g as u16).to_le_bytes());
        if s.csum {
            let sum = crc(&copy[..0x3FC]);
            put(&mut copy, 0x3FC, sum);
        }
        img[offset..offset + SB].copy_from_slice(&copy);
    }
    img
}

/// Whether group `g` carries a backup, by the features.
fn has_backup(s: &Spec, g: u32) -> bool {
    let power = |base: u32| {
        let mut n = 1;
        while n < g {
            n *= base;
        }
        n == g
    };
    match s.sparse {
        _ if g == 0 => true,
        2 => s.backup_bgs.contains(&g),
        1 => g == 1 || power(3) || power(5) || power(7),
        _ => true,
    }
}

/// Superblock fields worth setting to edge values.
fn field() -> impl Strategy<Value = (usize, u64)> {
    (
        prop::sample::select(vec![
            0x04usize, 0x14, 0x18, 0x20, 0x5C, 0x60, 0x64, 0x150, 0x24C,
        ]),
        interesting(),
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_copy_gets_the_new_uuid(s in spec(), new in any::<[u8; 16]>()) {
        let mut part = Cursor::new(image(&s));
        let sb = read(&mut part).unwrap();
        prop_assert_eq!(sb.uuid, s.uuid);
        prop_assert_eq!(sb.block_size, 1024 << s.log);
        prop_assert_eq!(set_uuid(&mut part, new).unwrap(), s.uuid);
        let img = part.into_inner();
        let bs = 1024usize << s.log;
        let first_data_block = usize::from(s.log == 0);
        for g in 0..s.groups {
            let block = g as usize * s.per_group as usize + first_data_block;
            let offset = if g == 0 { 1024 } else { block * bs };
            let copy = &img[offset..offset + SB];
            let want = if has_backup(&s, g) { new } else { s.uuid };
            prop_assert_eq!(&copy[0x68..0x78], &want[..], "group {}", g);
            if s.csum {
                let sum = u32::from_le_bytes(copy[0x3FC..0x400].try_into().unwrap());
                prop_assert_eq!(sum, crc(&copy[..0x3FC]));
            }
            if has_backup(&s, g) && s.csum {
                let seed = u32::from_le_bytes(copy[0x270..0x274].try_into().unwrap());
                prop_assert_eq!(seed, if s.seed { 0x5EED } else { crc(&s.uuid) });
            }
        }
        prop_assert_eq!(read(&mut Cursor::new(&img)).unwrap().uuid, new);
    }

    #[test]
    fn mutated_superblocks_never_panic(
        s in spec(),
        fields in vec(field(), 1..4),
        ms in vec(mutation(), 0..3),
        new in any::<[u8; 16]>(),
    ) {
        let mut img = image(&s);
        for (at, value) in fields {
            put(&mut img, SB + at, value as u32);
        }
        let head = mutate(&img[..4 * SB], &ms);
        let n = head.len().min(4 * SB);
        img[..n].copy_from_slice(&head[..n]);
        let before = img.clone();
        let mut part = Cursor::new(img);
        let _ = bounded(before.len(), || read(&mut part));
        let result = bounded(before.len(), || set_uuid(&mut part, new));
        if result.is_err() {
            prop_assert!(part.get_ref() == &before, "a refusal changed the file system");
        }
    }

    #[test]
    fn arbitrary_partitions_never_panic(
        mut bytes in bytes(),
        magic in any::<bool>(),
        new in any::<[u8; 16]>(),
    ) {
        if magic && bytes.len() >= 1024 + 0x3A {
            bytes[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        }
        let len = bytes.len();
        let mut part = Cursor::new(bytes);
        let _ = bounded(len, || read(&mut part));
        let _ = bounded(len, || set_uuid(&mut part, new));
    }

    #[test]
    fn uuid_text_is_canonical(u in any::<[u8; 16]>()) {
        let text = uuid_text(&u);
        prop_assert_eq!(text.len(), 36);
        let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(text.replace('-', ""), hex);
    }
}
