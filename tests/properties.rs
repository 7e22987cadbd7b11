//! Property tests for every parser of untrusted bytes: arbitrary input, and
//! mutations of valid encodings (flipped bytes, truncations, extensions, splices,
//! interesting integers written over fields), must come back as a value or an
//! error: never a panic, never a parse that takes seconds or holds heap out of
//! proportion to its input. Where a module has an encoder, what it encodes decodes
//! to the same value.
//!
//! Each property runs [`DEFAULT_CASES`] cases; the `PROPTEST_CASES` environment
//! variable overrides that (`scripts/fuzz` soaks with many more).

use proptest::collection::vec;
use proptest::prelude::*;
use std::io::Cursor;
use std::time::{Duration, Instant};

/// Cases per property when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 256;
/// Largest arbitrary input.
const MAX_INPUT: usize = 64 << 10;
/// Heap one parse may hold at its peak, beyond [`HEAP_PER_INPUT_BYTE`] per byte of
/// input: fixed buffers (a GPT entry array, two state slots) and serde's
/// preallocation for a sequence. Postcard hints no length longer than the bytes
/// left, and serde caps what it preallocates at 1 MiB.
const HEAP_BASE: u64 = 4 << 20;
const HEAP_PER_INPUT_BYTE: u64 = 32;
/// Far above what any parse here needs, even unoptimised on a busy machine.
const TIME_LIMIT: Duration = Duration::from_secs(5);

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

/// Runs one parse of `input_len` bytes and checks its cost: time, and the peak
/// heap it held (counted on this thread only).
fn bounded<T>(input_len: usize, parse: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let mut out = None;
    let heap = allocation_counter::measure(|| out = Some(parse()));
    let elapsed = start.elapsed();
    assert!(
        elapsed < TIME_LIMIT,
        "a parse of {input_len} bytes took {elapsed:?}"
    );
    let limit = HEAP_BASE + HEAP_PER_INPUT_BYTE * input_len as u64;
    assert!(
        heap.bytes_max <= limit,
        "a parse of {input_len} bytes held {} bytes of heap (limit {limit})",
        heap.bytes_max
    );
    out.expect("the parse ran")
}

/// Peak heap of `f`, for the tests that declare absurd lengths.
fn peak_heap(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).bytes_max
}

/// A postcard (LEB128) varint.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// One change to a valid encoding.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    /// An interesting integer written over the bytes at `at`: little-endian of
    /// `width` bytes, or as a varint when `width` is 0.
    Int {
        at: usize,
        value: u64,
        width: u8,
    },
    Truncate(usize),
    Extend(Vec<u8>),
    Splice {
        at: usize,
        remove: usize,
        insert: Vec<u8>,
    },
    /// Bytes of the input copied over another place of it.
    Copy {
        from: usize,
        to: usize,
        len: usize,
    },
}

/// Integers that sit on the edges parsers get wrong.
fn interesting() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0u64,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x100,
            0x7fff,
            0xffff,
            0x1_0000,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            1 << 32,
            1 << 50,
            1 << 60,
            i64::MAX as u64,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ]),
        0u64..70_000,
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (
            any::<usize>(),
            interesting(),
            prop::sample::select(vec![0u8, 1, 2, 4, 8])
        )
            .prop_map(|(at, value, width)| Mutation::Int { at, value, width }),
        any::<usize>().prop_map(Mutation::Truncate),
        vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (any::<usize>(), 0usize..16, vec(any::<u8>(), 0..16))
            .prop_map(|(at, remove, insert)| Mutation::Splice { at, remove, insert }),
        (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(from, to, len)| Mutation::Copy {
            from,
            to,
            len
        }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..6)
}

fn mutate(base: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    let at = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
    for m in mutations {
        match m {
            Mutation::Flip { at: i, bit } if !b.is_empty() => {
                let i = at(*i, b.len());
                b[i] ^= 1 << bit;
            }
            Mutation::Set { at: i, byte } if !b.is_empty() => {
                let i = at(*i, b.len());
                b[i] = *byte;
            }
            Mutation::Int {
                at: i,
                value,
                width,
            } => {
                let bytes = match width {
                    0 => varint(*value),
                    w => value.to_le_bytes()[..*w as usize].to_vec(),
                };
                let i = at(*i, b.len() + 1);
                let end = (i + bytes.len()).min(b.len());
                b.splice(i..end, bytes);
            }
            Mutation::Truncate(n) => {
                let n = at(*n, b.len() + 1);
                b.truncate(n);
            }
            Mutation::Extend(more) => b.extend_from_slice(more),
            Mutation::Splice {
                at: i,
                remove,
                insert,
            } => {
                let i = at(*i, b.len() + 1);
                let end = (i + remove).min(b.len());
                b.splice(i..end, insert.iter().copied());
            }
            Mutation::Copy { from, to, len } if !b.is_empty() => {
                let from = at(*from, b.len());
                let to = at(*to, b.len());
                let len = (*len).min(b.len() - from).min(b.len() - to);
                let piece = b[from..from + len].to_vec();
                b[to..to + len].copy_from_slice(&piece);
            }
            _ => {}
        }
    }
    b
}

/// Arbitrary bytes, up to [`MAX_INPUT`], mostly short.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..512),
        1 => vec(any::<u8>(), 0..MAX_INPUT),
    ]
}

fn guid() -> impl Strategy<Value = imprint::format::gpt::Guid> {
    any::<[u8; 16]>().prop_map(imprint::format::gpt::Guid)
}

fn digest() -> impl Strategy<Value = imprint::format::digest::Digest> {
    any::<[u8; 32]>().prop_map(imprint::format::digest::Digest)
}

/// A name [`imprint::format::digest::check_name`] accepts.
const NAME: &str = "[A-Za-z0-9_-][A-Za-z0-9._-]{0,30}";

mod manifest {
    use super::*;
    use imprint::format::gpt::{Layout, Partition};
    use imprint::format::manifest::*;

    fn kind(length: u32) -> BoxedStrategy<ChunkKind> {
        let max = max_stored_size(length).min(u32::MAX as u64) as u32;
        prop_oneof![
            1 => Just(ChunkKind::Zero),
            3 => (digest(), any::<[u8; 32]>(), 1..=max).prop_map(|(sha256, blake3, stored_size)| {
                ChunkKind::Data {
                    sha256,
                    blake3,
                    stored_size,
                }
            }),
        ]
        .boxed()
    }

    fn partition(last_usable: u64) -> impl Strategy<Value = Partition> {
        (
            any::<u32>(),
            guid(),
            guid(),
            0..=last_usable,
            0..=last_usable,
            any::<u64>(),
            ".{0,36}",
        )
            .prop_map(|(number, type_guid, unique_guid, a, b, attributes, name)| {
                Partition {
                    number,
                    type_guid,
                    unique_guid,
                    first_lba: a.min(b),
                    last_lba: a.max(b),
                    attributes,
                    name,
                }
            })
    }

    fn path() -> impl Strategy<Value = String> {
        "(/[a-z0-9._-]{1,12}){1,4}".prop_filter("no ..", |p| !p.split('/').any(|s| s == ".."))
    }

    fn boot(numbers: Vec<u32>) -> impl Strategy<Value = BootFacts> {
        (
            prop::sample::select(numbers),
            path(),
            prop::option::of(path()),
            ".{0,200}",
        )
            .prop_map(|(partition, kernel, initrd, cmdline)| BootFacts {
                partition,
                kernel,
                initrd,
                cmdline,
            })
    }

    fn layout_and_boot(size: u64) -> BoxedStrategy<(Option<Layout>, Option<BootFacts>)> {
        let layout = prop::sample::select(vec![512u32, 4096]).prop_flat_map(move |ss| {
            let sectors = size / ss as u64;
            if sectors == 0 {
                return Just(None).boxed();
            }
            (0..sectors)
                .prop_flat_map(|last| {
                    (
                        Just(last),
                        0..=last,
                        guid(),
                        vec(partition(last), 0..4),
                        any::<bool>(),
                    )
                })
                .prop_map(move |(last, first, disk_guid, partitions, some)| {
                    some.then_some(Layout {
                        sector_size: ss,
                        disk_guid,
                        first_usable_lba: first,
                        last_usable_lba: last,
                        partitions,
                    })
                })
                .boxed()
        });
        layout
            .prop_flat_map(|layout| {
                let numbers: Vec<u32> = layout
                    .iter()
                    .flat_map(|l| l.partitions.iter().map(|p| p.number))
                    .collect();
                let boot = if numbers.is_empty() {
                    Just(None).boxed()
                } else {
                    prop::option::of(boot(numbers)).boxed()
                };
                (Just(layout), boot)
            })
            .boxed()
    }

    pub(crate) fn valid() -> impl Strategy<Value = Manifest> {
        (16u32..=26, 1u64..=24, any::<u32>())
            .prop_flat_map(|(log, count, last)| {
                let cs = 1u32 << log;
                let size = (count - 1) * cs as u64 + (last % cs) as u64 + 1;
                let kinds: Vec<_> = (0..count)
                    .map(|i| kind((size - i * cs as u64).min(cs as u64) as u32))
                    .collect();
                let requirements = (
                    prop::option::of(".{0,16}"),
                    vec(
                        prop::sample::select(vec![Firmware::Bios, Firmware::Uefi]),
                        0..3,
                    ),
                    size..=u64::MAX,
                )
                    .prop_map(|(arch, firmware, min_disk_size)| Requirements {
                        arch,
                        firmware,
                        min_disk_size,
                    });
                (
                    Just(cs),
                    Just(size),
                    kinds,
                    NAME,
                    requirements,
                    layout_and_boot(size),
                )
            })
            .prop_map(
                |(cs, size, kinds, name, requirements, (layout, boot))| Manifest {
                    version: FORMAT_VERSION,
                    name,
                    size,
                    chunk_size: cs,
                    chunks: kinds
                        .into_iter()
                        .enumerate()
                        .map(|(i, kind)| {
                            let offset = i as u64 * cs as u64;
                            Chunk {
                                offset,
                                length: (size - offset).min(cs as u64) as u32,
                                kind,
                            }
                        })
                        .collect(),
                    requirements,
                    layout,
                    boot,
                },
            )
    }

    /// One field of a valid manifest set to something else, maybe still valid.
    #[derive(Clone, Debug)]
    enum Damage {
        Version(u32),
        Name(String),
        ChunkSize(u32),
        Size(u64),
        DropChunk(usize),
        RepeatChunk(usize),
        Offset(usize, u64),
        Length(usize, u32),
        Stored(usize, u32),
        MinDisk(u64),
        SectorSize(u32),
        LastUsable(u64),
        PartitionBounds(usize, u64, u64),
        BootPartition(u32),
        Kernel(String),
        Cmdline(usize),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        let small = || any::<usize>();
        prop_oneof![
            any::<u32>().prop_map(Damage::Version),
            ".{0,140}".prop_map(Damage::Name),
            interesting().prop_map(|v| Damage::ChunkSize(v as u32)),
            interesting().prop_map(Damage::Size),
            small().prop_map(Damage::DropChunk),
            small().prop_map(Damage::RepeatChunk),
            (small(), interesting()).prop_map(|(i, v)| Damage::Offset(i, v)),
            (small(), interesting()).prop_map(|(i, v)| Damage::Length(i, v as u32)),
            (small(), interesting()).prop_map(|(i, v)| Damage::Stored(i, v as u32)),
            interesting().prop_map(Damage::MinDisk),
            interesting().prop_map(|v| Damage::SectorSize(v as u32)),
            interesting().prop_map(Damage::LastUsable),
            (small(), interesting(), interesting())
                .prop_map(|(i, a, b)| Damage::PartitionBounds(i, a, b)),
            any::<u32>().prop_map(Damage::BootPartition),
            ".{0,40}".prop_map(Damage::Kernel),
            (0usize..5000).prop_map(Damage::Cmdline),
        ]
    }

    fn apply(m: &mut Manifest, d: &Damage) {
        let n = m.chunks.len();
        let chunk_damage = matches!(
            d,
            Damage::DropChunk(_)
                | Damage::RepeatChunk(_)
                | Damage::Offset(..)
                | Damage::Length(..)
                | Damage::Stored(..)
        );
        if n == 0 && chunk_damage {
            return;
        }
        match d.clone() {
            Damage::Version(v) => m.version = v,
            Damage::Name(s) => m.name = s,
            Damage::ChunkSize(v) => m.chunk_size = v,
            Damage::Size(v) => m.size = v,
            Damage::DropChunk(i) => {
                m.chunks.remove(i % n);
            }
            Damage::RepeatChunk(i) => {
                let c = m.chunks[i % n].clone();
                m.chunks.insert(i % n, c);
            }
            Damage::Offset(i, v) => m.chunks[i % n].offset = v,
            Damage::Length(i, v) => m.chunks[i % n].length = v,
            Damage::Stored(i, v) => {
                m.chunks[i % n].kind = ChunkKind::Data {
                    sha256: imprint::format::digest::Digest([0; 32]),
                    blake3: [0; 32],
                    stored_size: v,
                }
            }
            Damage::MinDisk(v) => m.requirements.min_disk_size = v,
            Damage::SectorSize(v) => {
                if let Some(l) = m.layout.as_mut() {
                    l.sector_size = v
                }
            }
            Damage::LastUsable(v) => {
                if let Some(l) = m.layout.as_mut() {
                    l.last_usable_lba = v
                }
            }
            Damage::PartitionBounds(i, a, b) => {
                if let Some(l) = m.layout.as_mut()
                    && !l.partitions.is_empty()
                {
                    let k = i % l.partitions.len();
                    l.partitions[k].first_lba = a;
                    l.partitions[k].last_lba = b;
                }
            }
            Damage::BootPartition(v) => {
                if let Some(b) = m.boot.as_mut() {
                    b.partition = v
                }
            }
            Damage::Kernel(s) => {
                if let Some(b) = m.boot.as_mut() {
                    b.kernel = s
                }
            }
            Damage::Cmdline(len) => {
                if let Some(b) = m.boot.as_mut() {
                    b.cmdline = "x".repeat(len)
                }
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        bounded(bytes.len(), || Manifest::decode(bytes))
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn valid_manifests_round_trip(m in valid()) {
            let bytes = m.encode();
            prop_assert_eq!(decode(&bytes), Ok(m.clone()));
            prop_assert_eq!(Manifest::decode(&bytes).map(|m| m.encode()), Ok(bytes));
        }

        #[test]
        fn decode_accepts_exactly_what_validate_accepts(
            mut m in valid(),
            damages in vec(damage(), 1..3),
        ) {
            for d in &damages {
                apply(&mut m, d);
            }
            let want = m.validate().map(|()| m.clone());
            prop_assert_eq!(decode(&m.encode()), want);
        }

        #[test]
        fn every_truncation_is_refused(m in valid()) {
            let bytes = m.encode();
            for len in 0..bytes.len() {
                prop_assert!(decode(&bytes[..len]).is_err(), "prefix {} accepted", len);
            }
        }

        #[test]
        fn mutated_manifests_never_panic(m in valid(), ms in mutations()) {
            let bytes = mutate(&m.encode(), &ms);
            if let Ok(back) = decode(&bytes) {
                // What decodes is valid and encodes to itself. (Not always to
                // the same bytes: postcard reads an overlong varint, 0xF1 0x00
                // for 113, as the number; such a manifest simply has another
                // digest.)
                prop_assert_eq!(back.validate(), Ok(()));
                prop_assert_eq!(Manifest::decode(&back.encode()), Ok(back));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in bytes()) {
            let _ = decode(&bytes);
        }
    }

    /// The fixed fields of a manifest up to its chunk list: version, name, size,
    /// chunk size.
    fn head() -> Vec<u8> {
        let mut b = vec![FORMAT_VERSION as u8, 4, b'd', b'e', b'm', b'o'];
        b.extend(varint(2 << 20));
        b.extend(varint(1 << 20));
        b
    }

    #[test]
    fn declared_lengths_do_not_allocate() {
        // 2^60 chunks, a 2^60-byte name, 2^60 firmware entries, a 2^64-byte
        // architecture: each declared in a few bytes, each refused with nothing
        // allocated for it (postcard gives serde no length hint longer than the
        // bytes left, and a string is checked against them before it is copied).
        let mut chunks = head();
        chunks.extend(varint(1 << 60));
        let mut name = vec![FORMAT_VERSION as u8];
        name.extend(varint(1 << 60));
        name.extend_from_slice(b"demo");
        let mut firmware = head();
        firmware.extend(varint(0)); // no chunks
        firmware.push(0); // no arch
        firmware.extend(varint(1 << 60));
        let mut arch = head();
        arch.extend(varint(0));
        arch.push(1);
        arch.extend(varint(u64::MAX));
        for bytes in [chunks, name, firmware, arch] {
            let mut result = None;
            let heap = peak_heap(|| result = Some(Manifest::decode(&bytes)));
            assert!(
                matches!(result, Some(Err(ManifestError::Malformed(_)))),
                "{result:?}"
            );
            assert!(heap <= 4 << 10, "{heap} bytes of heap for {bytes:?}");
        }
        // A count the bytes at hand could hold: what serde preallocates for it
        // is capped at 1 MiB, however large each element is in memory.
        let mut within = head();
        within.extend(varint(64 << 10));
        within.resize(within.len() + (64 << 10), 0);
        let mut result = None;
        let heap = peak_heap(|| result = Some(Manifest::decode(&within)));
        assert!(
            matches!(result, Some(Err(ManifestError::Malformed(_)))),
            "{result:?}"
        );
        assert!(heap <= (1 << 20) + (64 << 10), "{heap} bytes of heap");
    }
}

mod signature {
    use super::*;
    use ed25519_dalek::SigningKey;
    use imprint::format::signature::*;

    fn release() -> impl Strategy<Value = Release> {
        (
            NAME,
            NAME,
            digest(),
            any::<u64>(),
            any::<u64>(),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(name, tag, digest, size, issued, expires)| Release {
                name,
                tag,
                digest,
                size,
                issued,
                expires,
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn signed_lines_verify_as_their_release(seed in any::<[u8; 32]>(), r in release()) {
            let key = SigningKey::from_bytes(&seed);
            let line = sign_line(&key, &r);
            let wanted = Wanted::Tag { name: &r.name, tag: &r.tag };
            prop_assert_eq!(verify(&line, &r.digest, &key.verifying_key(), wanted), Ok(r.clone()));
            let any = verify(&line, &r.digest, &key.verifying_key(), Wanted::Any);
            prop_assert_eq!(any, Ok(r.clone()));
            prop_assert_eq!(without(&line, &key.verifying_key(), &r.tag), "");
            let public = parse_public_key(&public_key_text(&key.verifying_key()));
            prop_assert_eq!(public, Ok(key.verifying_key()));
            let secret = parse_secret_key(&secret_key_text(&key)).map(|k| k.to_bytes());
            prop_assert_eq!(secret, Ok(seed));
        }

        #[test]
        fn a_mutated_line_never_verifies_as_another_release(
            seed in any::<[u8; 32]>(),
            r in release(),
            ms in mutations(),
        ) {
            let key = SigningKey::from_bytes(&seed);
            let line = mutate(sign_line(&key, &r).as_bytes(), &ms);
            let text = String::from_utf8_lossy(&line);
            let key = key.verifying_key();
            let got = bounded(line.len(), || verify(&text, &r.digest, &key, Wanted::Any));
            if let Ok(got) = got {
                prop_assert_eq!(got, r);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(
            seed in any::<[u8; 32]>(),
            text in ".{0,400}",
            bytes in bytes(),
        ) {
            let key = SigningKey::from_bytes(&seed).verifying_key();
            let d = imprint::format::digest::Digest([0; 32]);
            let lossy = String::from_utf8_lossy(&bytes);
            for text in [text.as_str(), &lossy] {
                let _ = bounded(text.len(), || verify(text, &d, &key, Wanted::Any));
                let _ = without(text, &key, "v1");
                let _ = parse_public_key(text);
                let _ = parse_secret_key(text);
            }
        }

        #[test]
        fn lines_of_the_right_shape_never_panic(
            seed in any::<[u8; 32]>(),
            fields in vec("[A-Za-z0-9+/=]{0,90}|[0-9]{1,22}|ed25519(-v2)?", 0..9),
        ) {
            let key = SigningKey::from_bytes(&seed).verifying_key();
            let text = format!("ed25519-v2 {}\n{}\n", fields.join(" "), fields.join(" "));
            let d = imprint::format::digest::Digest([0; 32]);
            let _ = verify(&text, &d, &key, Wanted::Tag { name: "a", tag: "b" });
        }
    }
}

mod state {
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
        let bundle = (any::<u8>(), any::<u64>(), digest())
            .prop_map(|(slot, len, sha256)| BundleRef { slot, len, sha256 });
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
                    (".{0,40}", any::<u64>())
                        .prop_map(|(tag, issued)| ReleaseStamp { tag, issued }),
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
}

mod bundle {
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
}

mod gpt {
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
}

mod mbr {
    use super::*;
    use imprint::format::mbr::*;

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn chain_sectors_name_their_target(
            original in vec(any::<u8>(), 512),
            target in guid(),
            lba in any::<u64>(),
            ms in mutations(),
        ) {
            let original: [u8; 512] = original.try_into().unwrap();
            let sector = chain_sector(&original, target, lba);
            prop_assert_eq!(chain_target(&sector), Some(target));
            prop_assert_eq!(&sector[CODE_AREA..], &original[CODE_AREA..]);
            let mut mutated = mutate(&sector, &ms);
            mutated.resize(512, 0);
            let mutated: [u8; 512] = mutated.try_into().unwrap();
            let got = chain_target(&mutated);
            let stub_intact = mutated[..CHAIN_STUB.len()] == CHAIN_STUB;
            prop_assert_eq!(got.is_some(), stub_intact);
        }

        #[test]
        fn arbitrary_sectors_never_panic(sector in vec(any::<u8>(), 512)) {
            let sector: [u8; 512] = sector.try_into().unwrap();
            let _ = chain_target(&sector);
        }
    }
}

mod efi {
    use super::*;
    use imprint::format::efi::*;
    use imprint::format::gpt::Partition;

    fn partition() -> impl Strategy<Value = Partition> {
        (any::<u32>(), guid(), any::<u64>(), any::<u64>()).prop_map(
            |(number, unique_guid, a, b)| {
                // The size field is last - first + 1.
                let (first_lba, last_lba) = (a.min(b), a.max(b).min(u64::MAX - 1));
                Partition {
                    number,
                    type_guid: imprint::format::gpt::ESP_TYPE,
                    unique_guid,
                    first_lba: first_lba.min(last_lba),
                    last_lba,
                    attributes: 0,
                    name: String::new(),
                }
            },
        )
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn load_options_name_their_partition(
            // A description or loader with a NUL in it would end early: the
            // firmware reads both as NUL-terminated strings.
            description in "[^\\x00]{0,40}",
            loader in "[^\\x00]{0,100}",
            part in partition(),
            ms in mutations(),
        ) {
            let option = load_option(&description, &part, &loader);
            prop_assert_eq!(option_partition(&option), Some(part.unique_guid));
            let mutated = mutate(&option, &ms);
            let _ = bounded(mutated.len(), || option_partition(&mutated));
        }

        #[test]
        fn orders_round_trip(order in vec(any::<u16>(), 0..64), first in any::<u16>()) {
            prop_assert_eq!(parse_order(&encode_order(&order)), order.clone());
            let promoted = promote(&order, first);
            prop_assert_eq!(promoted[0], first);
            prop_assert!(order.iter().all(|n| promoted.contains(n)));
            prop_assert_eq!(promoted.iter().filter(|&&n| n == first).count(), 1);
            if let Some(n) = free_number(&order) {
                prop_assert!(!order.contains(&n));
            }
        }

        #[test]
        fn arbitrary_variables_never_panic(bytes in bytes()) {
            let _ = bounded(bytes.len(), || option_partition(&bytes));
            prop_assert_eq!(parse_order(&bytes).len(), bytes.len() / 2);
        }
    }
}

mod cpio {
    use super::*;
    use imprint::format::cpio::*;

    #[derive(Clone, Debug)]
    enum Op {
        Dir(String, u32),
        File(String, u32, Vec<u8>),
        Symlink(String, String),
        Char(String, u32, u32, u32),
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-c]{1,2}(/[a-c.]{1,2}){0,3}",
            1 => ".{0,20}",
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (path(), any::<u32>()).prop_map(|(p, m)| Op::Dir(p, m)),
            (path(), any::<u32>(), vec(any::<u8>(), 0..40)).prop_map(|(p, m, d)| Op::File(p, m, d)),
            (path(), ".{0,30}").prop_map(|(p, t)| Op::Symlink(p, t)),
            (path(), any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(p, m, a, b)| Op::Char(p, m, a, b)),
        ]
    }

    /// One entry as a newc reader sees it.
    #[derive(Debug)]
    struct Read {
        name: String,
        mode: u32,
        data: Vec<u8>,
    }

    /// A strict newc reader: every field hex, names NUL-terminated with no NUL
    /// inside, padding zero, the trailer last and nothing after it.
    fn read(bytes: &[u8]) -> Result<Vec<Read>, String> {
        let mut out = Vec::new();
        let mut at = 0;
        let padded = |n: usize| n.div_ceil(4) * 4;
        loop {
            let h = bytes.get(at..at + 110).ok_or("truncated header")?;
            if &h[..6] != b"070701" {
                return Err("bad magic".into());
            }
            let field = |i: usize| -> Result<u32, String> {
                let text =
                    std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
                u32::from_str_radix(text, 16).map_err(|e| e.to_string())
            };
            let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
            let name = bytes
                .get(at + 110..at + 110 + namesize)
                .ok_or("truncated name")?;
            let (last, name) = name.split_last().ok_or("empty name")?;
            if *last != 0 || name.contains(&0) {
                return Err(format!("name {name:?} is not one NUL-terminated string"));
            }
            let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
            let end = at + padded(110 + namesize);
            if bytes
                .get(at + 110 + namesize..end)
                .is_none_or(|p| p.iter().any(|&b| b != 0))
            {
                return Err("bad name padding".into());
            }
            at = end;
            let data = bytes.get(at..at + size).ok_or("truncated data")?.to_vec();
            at += padded(size);
            if name == "TRAILER!!!" {
                return if at == bytes.len() {
                    Ok(out)
                } else {
                    Err("bytes after the trailer".into())
                };
            }
            out.push(Read { name, mode, data });
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn archives_are_well_formed_and_hold_what_was_added(ops in vec(op(), 0..16)) {
            let mut archive = Archive::new();
            let mut added = Vec::new();
            for op in &ops {
                let (path, result) = match op {
                    Op::Dir(p, m) => (p, archive.add_dir(p, *m)),
                    Op::File(p, m, d) => (p, archive.add_file(p, *m, d.clone())),
                    Op::Symlink(p, t) => (p, archive.add_symlink(p, t)),
                    Op::Char(p, m, a, b) => (p, archive.add_char_device(p, *m, *a, *b)),
                };
                if result.is_ok() {
                    added.push(path.clone());
                    prop_assert!(archive.contains(path));
                }
            }
            let mut bytes = Vec::new();
            let written = archive.write(&mut bytes).unwrap();
            prop_assert_eq!(written as usize, bytes.len());
            let entries = read(&bytes).map_err(TestCaseError::fail)?;
            prop_assert_eq!(entries.len(), archive.len());
            let mut seen = std::collections::BTreeSet::new();
            for e in &entries {
                // Parents first, each once, every path relative and clean.
                prop_assert!(seen.insert(e.name.clone()), "{} twice", e.name);
                if let Some((parent, _)) = e.name.rsplit_once('/') {
                    prop_assert!(seen.contains(parent), "{} before its parent", e.name);
                }
                prop_assert!(!e.name.starts_with('/'));
                prop_assert!(e.name.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                prop_assert!(e.mode & 0o170000 != 0);
                if e.mode & 0o170000 == 0o040000 {
                    prop_assert!(e.data.is_empty());
                }
            }
            prop_assert!(added.iter().all(|p| seen.contains(p)));
        }
    }
}

mod kmod {
    use super::*;
    use imprint::format::glob::glob_match;
    use imprint::format::kmod::*;
    use std::collections::BTreeSet;

    /// `modules.dep` for modules m0..mN, each depending on the given others.
    fn dep_text(deps: &[Vec<usize>]) -> String {
        deps.iter()
            .enumerate()
            .map(|(i, ds)| {
                let ds: Vec<String> = ds.iter().map(|d| format!("kernel/m{d}.ko")).collect();
                format!("kernel/m{i}.ko: {}\n", ds.join(" "))
            })
            .collect()
    }

    /// A dependency graph of up to 30 modules: acyclic (each depends only on
    /// modules before it) or not.
    fn graph(acyclic: bool) -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..30).prop_flat_map(move |n| {
            vec(vec(any::<usize>(), 0..4), n).prop_map(move |ds| {
                ds.into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let bound = if acyclic { i } else { n };
                        d.into_iter()
                            .filter(|_| bound > 0)
                            .map(|x| x % bound.max(1))
                            .collect()
                    })
                    .collect()
            })
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn dependencies_load_first_and_once(
            deps in graph(true),
            wanted in vec(any::<usize>(), 0..8),
        ) {
            let index = ModuleIndex::parse(&dep_text(&deps), "");
            // Some names past the last module: missing.
            let names: Vec<String> =
                wanted.iter().map(|w| format!("m{}", w % (deps.len() + 2))).collect();
            let (order, missing) = index.load_order(names.iter().map(String::as_str));
            let position = |n: &str| order.iter().position(|o| o == n);
            for (i, ds) in deps.iter().enumerate() {
                if let Some(at) = position(&format!("m{i}")) {
                    for d in ds {
                        let dep = position(&format!("m{d}"));
                        prop_assert!(dep.is_some_and(|p| p < at), "m{} before m{}", d, i);
                    }
                }
            }
            let unique: BTreeSet<&String> = order.iter().collect();
            prop_assert_eq!(unique.len(), order.len());
            for n in &names {
                prop_assert!(order.contains(n) != missing.contains(n));
            }
            // The subset an initramfs carries reads back the same.
            let keep: BTreeSet<String> = order.iter().cloned().collect();
            let again = ModuleIndex::parse(&index.deps_for(&keep), "");
            prop_assert_eq!(again.load_order(names.iter().map(String::as_str)).0, order);
        }

        #[test]
        fn cycles_end(deps in graph(false), wanted in vec(any::<usize>(), 0..8)) {
            let index = ModuleIndex::parse(&dep_text(&deps), "");
            let names: Vec<String> =
                wanted.iter().map(|w| format!("m{}", w % deps.len())).collect();
            let (order, _) = bounded(0, || index.load_order(names.iter().map(String::as_str)));
            let unique: BTreeSet<&String> = order.iter().collect();
            prop_assert_eq!(unique.len(), order.len());
        }

        #[test]
        fn aliases_match_by_glob(
            aliases in vec(("[a-z0-9:*?\\[\\]!-]{0,16}", "[a-z_-]{1,8}"), 0..16),
            modalias in "[a-z0-9:]{0,24}",
        ) {
            let text: String = aliases.iter().map(|(p, n)| format!("alias {p} {n}\n")).collect();
            let index = ModuleIndex::parse("", &text);
            let found = index.lookup(&modalias);
            let mut want: Vec<String> = Vec::new();
            for (p, n) in &aliases {
                let n = n.replace('-', "_");
                let matches = !p.is_empty() && glob_match(p.as_bytes(), modalias.as_bytes());
                if matches && !want.contains(&n) {
                    want.push(n);
                }
            }
            prop_assert_eq!(&found, &want);
            let keep: BTreeSet<String> = found.iter().cloned().collect();
            let again = ModuleIndex::parse("", &index.aliases_for(&keep));
            prop_assert_eq!(again.lookup(&modalias), found);
        }

        #[test]
        fn arbitrary_indexes_never_panic(
            dep in ".{0,2000}",
            alias in ".{0,2000}",
            bytes in bytes(),
            query in ".{0,64}",
        ) {
            let lossy = String::from_utf8_lossy(&bytes);
            for (dep, alias) in [(dep.as_str(), alias.as_str()), (&lossy, &lossy)] {
                let index = bounded(dep.len() + alias.len(), || ModuleIndex::parse(dep, alias));
                let _ = index.lookup(&query);
                let names: Vec<String> = dep.split_whitespace().take(50).map(module_name).collect();
                let _ = index.load_order(names.iter().map(String::as_str));
                let _ = index.contains(&query);
                let _ = index.path_of(&query);
            }
        }
    }
}

mod glob {
    use super::*;
    use imprint::format::glob::*;

    /// A plainly recursive matcher for the same syntax, to compare against.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        enum Token {
            Star,
            Any,
            Byte(u8),
            Class(Vec<(u8, u8)>, bool),
            /// An unclosed `[`: matches nothing.
            Never,
        }
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                b'*' => tokens.push(Token::Star),
                b'?' => tokens.push(Token::Any),
                b'[' => {
                    let mut j = i + 1;
                    let negate = matches!(p.get(j), Some(b'!' | b'^'));
                    if negate {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut closed = None;
                    let mut first = true;
                    while j < p.len() {
                        if p[j] == b']' && !first {
                            closed = Some(j);
                            break;
                        }
                        first = false;
                        if j + 2 < p.len() && p[j + 1] == b'-' && p[j + 2] != b']' {
                            ranges.push((p[j], p[j + 2]));
                            j += 3;
                        } else {
                            ranges.push((p[j], p[j]));
                            j += 1;
                        }
                    }
                    match closed {
                        Some(end) => {
                            tokens.push(Token::Class(ranges, negate));
                            i = end;
                        }
                        None => {
                            tokens.push(Token::Never);
                            break;
                        }
                    }
                }
                c => tokens.push(Token::Byte(c)),
            }
            i += 1;
        }
        fn go(
            tokens: &[Token],
            t: &[u8],
            memo: &mut Vec<Vec<Option<bool>>>,
            i: usize,
            j: usize,
        ) -> bool {
            if let Some(known) = memo[i][j] {
                return known;
            }
            let one = |ok: bool| ok && j < t.len();
            let result = match tokens.get(i) {
                None => j == t.len(),
                Some(Token::Star) => {
                    go(tokens, t, memo, i + 1, j) || (j < t.len() && go(tokens, t, memo, i, j + 1))
                }
                Some(Token::Any) => one(true) && go(tokens, t, memo, i + 1, j + 1),
                Some(Token::Byte(c)) => {
                    one(t.get(j) == Some(c)) && go(tokens, t, memo, i + 1, j + 1)
                }
                Some(Token::Class(ranges, negate)) => {
                    one(t.get(j).is_some_and(|c| {
                        ranges.iter().any(|(a, b)| (a..=b).contains(&c)) != *negate
                    })) && go(tokens, t, memo, i + 1, j + 1)
                }
                Some(Token::Never) => false,
            };
            memo[i][j] = Some(result);
            result
        }
        let mut memo = vec![vec![None; t.len() + 1]; tokens.len() + 1];
        go(&tokens, t, &mut memo, 0, 0)
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn matches_like_the_reference(
            pattern in "[ab*?\\[\\]!^-]{0,14}",
            text in "[ab\\]!-]{0,14}",
        ) {
            let (p, t) = (pattern.as_bytes(), text.as_bytes());
            prop_assert_eq!(glob_match(p, t), reference(p, t));
        }

        #[test]
        fn arbitrary_patterns_never_panic(
            pattern in vec(any::<u8>(), 0..300),
            text in vec(any::<u8>(), 0..300),
        ) {
            let _ = bounded(0, || glob_match(&pattern, &text));
            let (p, t) = (String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&text));
            let _ = glob_match_path(&p, &t);
        }

        #[test]
        fn path_globs_never_cross_a_slash(
            pattern in "(/[a-z*?]{1,4}){1,4}",
            path in "(/[a-z]{0,4}){1,5}",
        ) {
            if glob_match_path(&pattern, &path) {
                prop_assert_eq!(pattern.matches('/').count(), path.matches('/').count());
            }
        }

        #[test]
        fn migration_lists_never_panic(text in ".{0,400}", path in ".{0,40}") {
            if let Ok(list) = imprint::migrate::parse_list(&text) {
                let _ = imprint::migrate::accepts(&list, &path);
            }
        }
    }
}

mod cmdline {
    use super::*;
    use imprint::format::cmdline::*;
    use imprint::format::digest::ImageRef;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn url() -> impl Strategy<Value = String> {
        (
            "[a-z0-9.-]{1,20}",
            prop::option::of(any::<u16>()),
            "(/[a-z0-9._-]{1,8}){0,3}",
        )
            .prop_map(|(host, port, path)| match port {
                Some(p) => format!("http://{host}:{p}{path}"),
                None => format!("http://{host}{path}"),
            })
    }

    fn hostname() -> impl Strategy<Value = String> {
        vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4).prop_map(|labels| labels.join("."))
    }

    fn repo_path() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,10}(/[A-Za-z0-9._-]{1,10}){0,3}".prop_filter("plain names", |p| {
            p.split('/').all(|s| s != "." && s != "..")
        })
    }

    fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    /// A disk selector and how it is written.
    fn disk() -> impl Strategy<Value = (String, DiskSelector)> {
        let value = "[A-Za-z0-9_.-]{1,12}";
        let size = (
            0u64..1 << 20,
            prop::sample::select(vec![
                ("", 0u32),
                ("K", 10),
                ("M", 20),
                ("g", 30),
                ("TiB", 40),
                ("kb", 10),
            ]),
        );
        prop_oneof![
            "/dev/[a-z0-9/_-]{1,16}".prop_map(|p| (p.clone(), DiskSelector::Path(p))),
            (
                prop::option::of(value),
                prop::option::of(value),
                prop::option::of(size),
                prop::option::of("[a-z0-9:.-]{1,20}"),
            )
                .prop_filter("at least one hint", |h| h.0.is_some()
                    || h.1.is_some()
                    || h.2.is_some()
                    || h.3.is_some())
                .prop_map(|(serial, model, size, by_path)| {
                    let mut parts = Vec::new();
                    if let Some(s) = &serial {
                        parts.push(format!("serial:{s}"));
                    }
                    if let Some(m) = &model {
                        parts.push(format!("model:{m}"));
                    }
                    if let Some((n, (unit, _))) = &size {
                        parts.push(format!("size:{n}{unit}"));
                    }
                    if let Some(b) = &by_path {
                        parts.push(format!("by-path:{b}"));
                    }
                    let hints = DiskHints {
                        serial,
                        model,
                        size: size.map(|(n, (_, shift))| n << shift),
                        by_path,
                    };
                    (parts.join(","), DiskSelector::Hints(hints))
                }),
        ]
    }

    /// An `ip=` value and what it means.
    fn ip() -> impl Strategy<Value = (String, IpConfig)> {
        let text = |a: &Option<Ipv4Addr>| a.map(|a| a.to_string()).unwrap_or_default();
        prop_oneof![
            prop::sample::select(vec!["dhcp", "on", "any", "both"])
                .prop_map(|w| (w.to_string(), IpConfig::Dhcp)),
            prop::sample::select(vec!["off", "none"]).prop_map(|w| (w.to_string(), IpConfig::Off)),
            (
                ipv4(),
                prop::option::of(ipv4()),
                prop::option::of(0u8..=32),
                prop::option::of(hostname()),
                prop::option::of("[a-z0-9]{1,8}"),
                prop::sample::select(vec!["", "off", "none", "static"]),
                prop::option::of(ipv4()),
                prop::option::of(ipv4()),
            )
                .prop_map(
                    move |(address, gateway, prefix, host, device, autoconf, dns0, dns1)| {
                        let mask = prefix.map(|p| {
                            Ipv4Addr::from(u32::MAX.checked_shl(32 - p as u32).unwrap_or(0))
                        });
                        let value = format!(
                            "{address}::{}:{}:{}:{}:{autoconf}:{}:{}",
                            text(&gateway),
                            text(&mask),
                            host.clone().unwrap_or_default(),
                            device.clone().unwrap_or_default(),
                            text(&dns0),
                            text(&dns1),
                        );
                        let config = IpConfig::Static(StaticIp {
                            address,
                            prefix: prefix.unwrap_or(24),
                            gateway,
                            hostname: host,
                            device,
                            dns: [dns0, dns1].into_iter().flatten().collect(),
                        });
                        (value, config)
                    }
                ),
        ]
    }

    /// A command line and the configuration it says.
    fn command_line() -> impl Strategy<Value = (Vec<String>, Config)> {
        let modes = prop::sample::select(vec![
            ("deploy", Mode::Deploy),
            ("upgrade", Mode::Upgrade),
            ("rollback", Mode::Rollback),
        ]);
        let handoffs = prop::sample::select(vec![
            ("reboot", Handoff::Reboot),
            ("poweroff", Handoff::Poweroff),
            ("kexec", Handoff::Kexec),
        ]);
        let policies = prop::sample::select(vec![
            ("reboot", ErrorPolicy::Reboot),
            ("poweroff", ErrorPolicy::Poweroff),
            ("retry", ErrorPolicy::Retry),
        ]);
        (
            (
                url(),
                NAME,
                NAME,
                prop::option::of(disk()),
                modes,
                prop::option::of(disk()),
            ),
            (
                handoffs,
                prop::option::of(any::<[u8; 32]>()),
                prop::option::of(url()),
                policies,
                prop::option::of(hostname()),
            ),
            (
                prop::option::of("[!#-~]{1,128}"),
                prop::option::of(repo_path()),
                prop::option::of(repo_path()),
                prop::option::of(1usize..=64),
                prop::option::of(1u64..=3600),
            ),
            (
                prop::option::of(ip()),
                prop::option::of((any::<[u8; 6]>(), any::<bool>(), any::<bool>())),
                vec("[a-z_]{1,10}(=[a-z0-9,./:]{0,10})?", 0..6),
            ),
        )
            .prop_map(
                |(
                    (repo, name, tag, disk, (mode_word, mode), previous),
                    ((handoff_word, handoff), key, status, (policy_word, on_error), hostname),
                    (target, user_data, network_config, jobs, timeout),
                    (ip, bootif, noise),
                )| {
                    let mut words = vec![
                        format!("imprint.repo={repo}"),
                        format!("imprint.image={name}:{tag}"),
                    ];
                    let pubkey = key.map(|seed| {
                        imprint::format::signature::public_key_text(
                            &ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key(),
                        )
                    });
                    let optional = [
                        ("imprint.disk", disk.as_ref().map(|d| d.0.clone())),
                        ("imprint.mode", Some(mode_word.to_string())),
                        ("imprint.previous", previous.as_ref().map(|d| d.0.clone())),
                        ("imprint.handoff", Some(handoff_word.to_string())),
                        ("imprint.pubkey", pubkey.clone()),
                        ("imprint.status", status.clone()),
                        ("imprint.on-error", Some(policy_word.to_string())),
                        ("imprint.hostname", hostname.clone()),
                        ("imprint.target", target.clone()),
                        ("imprint.user-data", user_data.clone()),
                        ("imprint.network-config", network_config.clone()),
                        ("imprint.jobs", jobs.map(|j| j.to_string())),
                        ("imprint.dhcp-timeout", timeout.map(|t| t.to_string())),
                        ("ip", ip.as_ref().map(|i| i.0.clone())),
                        (
                            "BOOTIF",
                            bootif.map(|(mac, prefixed, upper)| {
                                let hex: Vec<String> = mac
                                    .iter()
                                    .map(|b| {
                                        if upper {
                                            format!("{b:02X}")
                                        } else {
                                            format!("{b:02x}")
                                        }
                                    })
                                    .collect();
                                if prefixed {
                                    format!("01-{}", hex.join("-"))
                                } else {
                                    hex.join(":")
                                }
                            }),
                        ),
                    ];
                    for (key, value) in optional {
                        if let Some(v) = value {
                            words.push(format!("{key}={v}"));
                        }
                    }
                    words.extend(
                        noise
                            .into_iter()
                            .filter(|w| w.split('=').next() != Some("ip")),
                    );
                    let config = Config {
                        repo: vec![imprint::format::cmdline::RepoSource::Url(repo)],
                        image: Some(ImageRef::Tag { name, tag }),
                        disk: disk.map(|d| d.1),
                        mode,
                        previous: previous.map(|d| d.1),
                        handoff,
                        pubkey,
                        status,
                        credential: None,
                        proxy: None,
                        on_error,
                        hostname,
                        target,
                        user_data,
                        network_config,
                        allow_downgrade: false,
                        min_issued: None,
                        redeploy: false,
                        jobs: jobs.unwrap_or(imprint::format::cmdline::DEFAULT_JOBS),
                        dhcp_timeout: Duration::from_secs(timeout.unwrap_or(60)),
                        ip: ip.map_or(IpConfig::Dhcp, |i| i.1),
                        bootif: bootif.map(|b| b.0),
                    };
                    (words, config)
                },
            )
    }

    /// `words` joined by runs of whitespace, some of them in quotes.
    fn join(words: &[String], seps: &[(u8, bool)]) -> String {
        let mut out = String::new();
        for (i, w) in words.iter().enumerate() {
            let (sep, quote) = seps.get(i).copied().unwrap_or((0, false));
            out.push_str([" ", "  ", "\t", "\n", " \t "][sep as usize % 5]);
            if quote {
                out.push('"');
                out.push_str(w);
                out.push('"');
            } else {
                out.push_str(w);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn command_lines_say_what_they_were_made_from(
            (words, config) in command_line()
                .prop_flat_map(|(words, config)| (Just(words).prop_shuffle(), Just(config))),
            seps in vec((any::<u8>(), any::<bool>()), 0..32),
        ) {
            let line = join(&words, &seps);
            prop_assert_eq!(parse(&line), Ok(config.clone()));
            prop_assert_eq!(error_policy(&line), config.on_error);
            // Nothing after a lone -- is the kernel's or ours.
            let after = format!("{line} -- imprint.colour=blue imprint.jobs=999");
            prop_assert_eq!(parse(&after), Ok(config));
        }

        #[test]
        fn split_round_trips(
            words in vec("[!#-~]{1,12}".prop_filter("not --", |w| w != "--"), 0..12),
            spaced in vec("[a-z =\t]{1,12}", 0..4),
            seps in vec((any::<u8>(), any::<bool>()), 0..16),
        ) {
            prop_assert_eq!(split(&join(&words, &seps)), words.clone());
            // Quoted, whitespace stays inside a word.
            let quoted: Vec<String> = spaced.iter().map(|w| format!("\"{w}\"")).collect();
            prop_assert_eq!(split(&quoted.join(" ")), spaced);
        }

        #[test]
        fn mutated_command_lines_never_panic((words, _) in command_line(), ms in mutations()) {
            let line = mutate(words.join(" ").as_bytes(), &ms);
            let line = String::from_utf8_lossy(&line);
            let _ = bounded(line.len(), || parse(&line));
            let _ = error_policy(&line);
        }

        #[test]
        fn arbitrary_command_lines_never_panic(
            text in ".{0,1000}",
            bytes in bytes(),
            value in ".{0,40}",
        ) {
            let lossy = String::from_utf8_lossy(&bytes);
            for text in [text.as_str(), &lossy] {
                let _ = bounded(text.len(), || parse(text));
                let _ = split(text);
                let _ = error_policy(text);
            }
            let keys = [
                "imprint.disk",
                "imprint.previous",
                "ip",
                "BOOTIF",
                "imprint.repo",
                "imprint.image",
                "imprint.pubkey",
                "imprint.jobs",
                "imprint.user-data",
            ];
            for key in keys {
                let line = format!("imprint.repo=http://h imprint.image=a:b \"{key}={value}\"");
                let _ = parse(&line);
            }
            let _ = parse_size(&value);
            let _ = value.parse::<ImageRef>();
        }

        #[test]
        fn sizes_round_trip(
            n in 0u64..1 << 23,
            unit in 0usize..5,
            suffix in 0usize..3,
            upper in any::<bool>(),
        ) {
            let (letter, shift) = [("", 0), ("k", 10), ("m", 20), ("g", 30), ("t", 40)][unit];
            let suffixes = if letter.is_empty() { ["", "b", ""] } else { ["", "b", "ib"] };
            let suffix = suffixes[suffix];
            let mut text = format!("{n}{letter}{suffix}");
            if upper {
                text = text.to_uppercase();
            }
            prop_assert_eq!(parse_size(&text), Some(n << shift));
        }

        #[test]
        fn image_refs_round_trip(name in NAME, tag in NAME, d in digest()) {
            for r in [ImageRef::Tag { name: name.clone(), tag: tag.clone() }, ImageRef::Digest(d)] {
                prop_assert_eq!(r.to_string().parse::<ImageRef>(), Ok(r));
            }
            prop_assert_eq!(d.to_string().parse(), Ok(d));
        }
    }
}

mod dns {
    use super::*;
    use imprint::format::dns::*;
    use std::net::Ipv4Addr;

    /// An answer to `query(id, name)`: CNAMEs and A records and others, names
    /// compressed or written out.
    fn answer(id: u16, name: &str, records: &[(u16, u16, Vec<u8>, bool)]) -> Vec<u8> {
        let mut m = query(id, name).unwrap();
        let qname = m[12..m.len() - 4].to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (kind, class, data, compressed) in records {
            if *compressed {
                m.extend_from_slice(&[0xC0, 12]);
            } else {
                m.extend_from_slice(&qname);
            }
            m.extend_from_slice(&kind.to_be_bytes());
            m.extend_from_slice(&class.to_be_bytes());
            m.extend_from_slice(&60u32.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}\\.?"
    }

    fn record() -> impl Strategy<Value = (u16, u16, Vec<u8>, bool)> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<bool>()).prop_map(|(ip, c)| (1, 1, ip.to_vec(), c)),
            (
                prop::sample::select(vec![1u16, 5, 28]),
                prop::sample::select(vec![1u16, 3]),
                vec(any::<u8>(), 0..20),
                any::<bool>()
            ),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn answers_give_their_a_records(
            id in any::<u16>(),
            name in name(),
            records in vec(record(), 0..8),
        ) {
            let m = answer(id, &name, &records);
            let want: Vec<Ipv4Addr> = records
                .iter()
                .filter(|(k, c, d, _)| *k == 1 && *c == 1 && d.len() == 4)
                .map(|(_, _, d, _)| Ipv4Addr::new(d[0], d[1], d[2], d[3]))
                .collect();
            prop_assert_eq!(parse_answer(&m, id, &name), Ok(want));
            prop_assert_eq!(parse_answer(&m, id.wrapping_add(1), &name), Err(DnsError::WrongId));
            for cut in 0..m.len() {
                let _ = parse_answer(&m[..cut], id, &name);
            }
        }

        #[test]
        fn mutated_answers_never_panic(
            id in any::<u16>(),
            name in name(),
            records in vec(record(), 0..8),
            ms in mutations(),
        ) {
            let m = mutate(&answer(id, &name, &records), &ms);
            let _ = bounded(m.len(), || parse_answer(&m, id, &name));
        }

        #[test]
        fn arbitrary_answers_never_panic(bytes in bytes(), id in any::<u16>(), name in ".{0,300}") {
            let _ = bounded(bytes.len(), || parse_answer(&bytes, id, &name));
            if let Ok(q) = query(id, &name) {
                prop_assert!(q.len() <= 12 + 255 + 4);
            }
        }
    }
}

mod dhcp {
    //! The DHCP client is smoltcp's; its packet parser still reads bytes anyone
    //! on the segment can send, so it is held to the same properties.
    use super::*;
    use smoltcp::wire::{DhcpPacket, DhcpRepr};
    use std::net::Ipv4Addr;

    /// What an ACK gives: address, router, name servers, lease time.
    #[derive(Clone, Debug, PartialEq)]
    struct Lease {
        address: Ipv4Addr,
        router: Option<Ipv4Addr>,
        dns: Vec<Ipv4Addr>,
        seconds: Option<u32>,
    }

    fn lease(dns: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Lease> {
        (ipv4(), ipv4(), vec(ipv4(), dns), any::<u32>()).prop_map(
            |(address, router, dns, seconds)| Lease {
                address,
                router: Some(router),
                dns,
                seconds: Some(seconds),
            },
        )
    }

    /// A server's ACK for `xid`: BOOTP header, magic cookie, options.
    fn ack(xid: u32, mac: [u8; 6], lease: &Lease, prefix: u8, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 2; // reply
        p[1] = 1; // Ethernet
        p[2] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&lease.address.octets());
        p[28..34].copy_from_slice(&mac);
        p.extend_from_slice(&[99, 130, 83, 99]);
        let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
        let router = lease.router.unwrap_or(Ipv4Addr::UNSPECIFIED).octets();
        let mut option = |code: u8, data: &[u8]| {
            p.push(code);
            p.push(data.len() as u8);
            p.extend_from_slice(data);
        };
        option(53, &[5]);
        option(54, &router);
        option(51, &lease.seconds.unwrap_or(0).to_be_bytes());
        option(1, &mask.to_be_bytes());
        option(3, &router);
        let servers: Vec<u8> = lease.dns.iter().flat_map(|a| a.octets()).collect();
        option(6, &servers);
        for (code, data) in extra {
            option(*code, data);
        }
        p.push(255);
        p
    }

    fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    fn parse(bytes: &[u8]) -> Option<Lease> {
        let packet = DhcpPacket::new_checked(bytes).ok()?;
        let repr = DhcpRepr::parse(&packet).ok()?;
        Some(Lease {
            address: repr.your_ip,
            router: repr.router,
            dns: repr
                .dns_servers
                .map(|d| d.iter().copied().collect())
                .unwrap_or_default(),
            seconds: repr.lease_duration,
        })
    }

    /// Options the ACK's own do not depend on. (A client identifier of a
    /// hardware type other than Ethernet makes smoltcp refuse the packet.)
    fn extra() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        vec((1u8..=254, vec(any::<u8>(), 0..12)), 0..4).prop_map(|v| {
            v.into_iter()
                .filter(|(c, _)| ![1, 3, 6, 51, 53, 54, 61].contains(c))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn acks_give_their_lease(
            xid in any::<u32>(),
            mac in any::<[u8; 6]>(),
            lease in lease(1..=3),
            prefix in 0u8..=32,
            extra in extra(),
        ) {
            let p = ack(xid, mac, &lease, prefix, &extra);
            prop_assert_eq!(parse(&p), Some(lease));
        }

        #[test]
        fn mutated_acks_never_panic(
            xid in any::<u32>(),
            lease in lease(0..=3),
            extra in extra(),
            ms in mutations(),
        ) {
            let p = mutate(&ack(xid, [2; 6], &lease, 24, &extra), &ms);
            let _ = bounded(p.len(), || parse(&p));
        }

        #[test]
        fn arbitrary_packets_never_panic(bytes in bytes()) {
            let _ = bounded(bytes.len(), || parse(&bytes));
        }
    }
}

mod netlink {
    use super::*;
    use imprint::format::netlink::*;

    /// A reply of netlink messages: (type, sequence, payload).
    fn reply(messages: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, seq, payload) in messages {
            let len = 16 + payload.len();
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(payload);
            out.resize(out.len().div_ceil(4) * 4, 0);
        }
        out
    }

    fn message() -> impl Strategy<Value = (u16, u32, Vec<u8>)> {
        prop_oneof![
            (any::<u16>(), 0u32..4, vec(any::<u8>(), 0..40)),
            (
                Just(NLMSG_ERROR),
                0u32..4,
                prop_oneof![Just(i32::MIN), Just(0), -200i32..200, any::<i32>()],
                vec(any::<u8>(), 0..16),
            )
                .prop_map(|(k, s, code, rest)| {
                    let mut payload = code.to_le_bytes().to_vec();
                    payload.extend(rest);
                    (k, s, payload)
                }),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn acks_are_found(messages in vec(message(), 0..6), seq in 0u32..4) {
            let r = reply(&messages);
            let want = messages
                .iter()
                .find(|(k, s, _)| *k == NLMSG_ERROR && *s == seq)
                .map(|(_, _, p)| {
                    let code = i32::from_le_bytes(p[..4].try_into().unwrap());
                    code.checked_neg().ok_or(())
                });
            match (parse_ack(&r, seq), want) {
                (Ok(code), Some(Ok(want))) => prop_assert_eq!(code, want),
                (Err(_), Some(Err(()))) | (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{:?} for {:?}", got, want),
            }
            // Each message on its own, with whatever follows cut off.
            for cut in 0..r.len() {
                let _ = parse_ack(&r[..cut], seq);
            }
        }

        #[test]
        fn mutated_replies_never_panic(
            messages in vec(message(), 0..6),
            seq in 0u32..4,
            ms in mutations(),
        ) {
            let r = mutate(&reply(&messages), &ms);
            let _ = bounded(r.len(), || parse_ack(&r, seq));
        }

        #[test]
        fn arbitrary_replies_never_panic(bytes in bytes(), seq in any::<u32>()) {
            let _ = bounded(bytes.len(), || parse_ack(&bytes, seq));
        }
    }
}

mod http {
    use super::*;
    use imprint::format::http::*;

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}".prop_filter("not a length or coding", |n| {
            !["content-length", "transfer-encoding"].contains(&n.to_ascii_lowercase().as_str())
        })
    }

    /// A request head, and what it parses to.
    fn head() -> impl Strategy<Value = (Vec<u8>, RequestHead)> {
        (
            prop_oneof!["GET|HEAD|POST".prop_map(String::from), "[A-Z]{1,10}"],
            "/[!-~]{0,60}",
            0u8..=1,
            vec(
                (token(), "[ \t]{0,2}[!-~]([ -~\t]{0,30}[!-~])?[ \t]{0,2}"),
                0..MAX_HEADERS,
            ),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(method, target, minor, headers, length)| {
                let mut text = format!("{method} {target} HTTP/1.{minor}\r\n");
                for (name, value) in &headers {
                    text.push_str(&format!("{name}:{value}\r\n"));
                }
                let mut parsed: Vec<(String, String)> = headers
                    .iter()
                    .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                if let Some(n) = length {
                    text.push_str(&format!("Content-Length: {n}\r\n"));
                    if parsed.len() == MAX_HEADERS {
                        parsed.pop();
                    }
                    parsed.push(("content-length".into(), n.to_string()));
                }
                text.push_str("\r\n");
                let head = RequestHead {
                    method: match method.as_str() {
                        "GET" => Method::Get,
                        "HEAD" => Method::Head,
                        "POST" => Method::Post,
                        _ => Method::Other,
                    },
                    target,
                    minor,
                    headers: parsed,
                    content_length: length.unwrap_or(0),
                };
                (text.into_bytes(), head)
            })
            .prop_filter("fits the header limit", |(_, h)| {
                h.headers.len() <= MAX_HEADERS
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn heads_parse_to_what_they_say((text, head) in head(), rest in vec(any::<u8>(), 0..32)) {
            let mut buf = text.clone();
            buf.extend_from_slice(&rest);
            prop_assert_eq!(head_end(&buf), Some(text.len()));
            if text.len() <= MAX_HEAD && head.headers.len() <= MAX_HEADERS {
                let got = parse_head(&text);
                // A Content-Length line past the limit counts as one too many.
                let has_length = text.windows(16).any(|w| w == b"Content-Length: ");
                if head.headers.len() == MAX_HEADERS && has_length {
                    prop_assert!(got == Ok(head.clone()) || got == Err(HttpError::TooManyHeaders));
                } else {
                    prop_assert_eq!(got, Ok(head));
                }
            }
        }

        #[test]
        fn mutated_heads_never_panic((text, _) in head(), ms in mutations()) {
            let text = mutate(&text, &ms);
            if let Ok(h) = bounded(text.len(), || parse_head(&text)) {
                prop_assert!(h.headers.len() <= MAX_HEADERS);
                prop_assert!(h.target.bytes().all(|b| b.is_ascii_graphic()));
                let _ = (h.keep_alive(), h.path(), h.query("x"));
            }
        }

        #[test]
        fn arbitrary_heads_never_panic(bytes in bytes()) {
            let _ = head_end(&bytes);
            let _ = bounded(bytes.len(), || parse_head(&bytes));
            let _ = bounded(bytes.len(), || parse_response_head(&bytes, Method::Get));
            let _ = parse_chunk_size(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn mutated_response_heads_keep_their_bounds(
            status in 100u16..600,
            length in any::<u64>(),
            chunked in any::<bool>(),
            ms in mutations(),
        ) {
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {length}")
            };
            let text = format!("HTTP/1.1 {status} Reason\r\n{framing}\r\nX-Cache: MISS\r\n\r\n");
            let good = parse_response_head(text.as_bytes(), Method::Get).unwrap();
            prop_assert_eq!(good.status, status);
            let text = mutate(text.as_bytes(), &ms);
            if let Ok(h) = bounded(text.len(), || parse_response_head(&text, Method::Get)) {
                prop_assert!(h.headers.len() <= MAX_HEADERS);
                prop_assert!((100..600).contains(&h.status));
                let _ = h.keep_alive();
            }
        }

        #[test]
        fn ranges_stay_in_the_file(
            value in ".{0,40}",
            size in interesting(),
            start in interesting(),
            end in interesting(),
        ) {
            let values = [
                value,
                format!("bytes={start}-{end}"),
                format!("bytes=-{end}"),
                format!("bytes={start}-"),
                format!(" bytes= {start} - {end} "),
            ];
            for value in values {
                if let RangeRequest::Range { start, len } = parse_range(&value, size) {
                    prop_assert!(len >= 1);
                    let end = start.checked_add(len);
                    prop_assert!(end.is_some_and(|e| e <= size), "{} {} {}", value, start, len);
                }
            }
        }

        #[test]
        fn ranges_round_trip(size in 1u64..u64::MAX, a in any::<u64>(), b in any::<u64>()) {
            let (first, last) = (a.min(b) % size, a.max(b));
            prop_assert_eq!(
                parse_range(&format!("bytes={first}-{last}"), size),
                RangeRequest::Range { start: first, len: last.min(size - 1) - first + 1 }
            );
        }

        #[test]
        fn http_dates_round_trip_and_garbage_is_no_date(
            secs in 0u64..253_402_300_800,
            text in ".{0,40}",
            mutate in any::<(usize, u8)>(),
        ) {
            let date = http_date(secs);
            prop_assert_eq!(parse_http_date(&date), Some(secs));
            let _ = parse_http_date(&text);
            let mut bytes = date.into_bytes();
            let at = mutate.0 % bytes.len();
            bytes[at] = mutate.1;
            if let Some(t) = parse_http_date(&String::from_utf8_lossy(&bytes)) {
                prop_assert!(t < 253_402_300_800);
            }
        }

        #[test]
        fn printable_text_is_one_plain_line(text in ".{0,80}") {
            let p = printable(&text);
            prop_assert!(p.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        }
    }
}

mod statuses {
    use super::*;
    use imprint::host::statuses::*;
    use serde_json::Value;
    use std::net::{IpAddr, Ipv4Addr};

    fn event() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof!["[!-~]{1,20}", ".{0,10}", Just("m1".to_string())];
        (
            prop::option::of(name),
            "[a-z-]{1,12}",
            prop::option::of(any::<u64>()),
            ".{0,200}",
        )
            .prop_map(|(target, phase, done, pad)| {
                let mut map = serde_json::Map::new();
                if let Some(t) = target {
                    map.insert("target".into(), t.into());
                }
                map.insert("phase".into(), phase.into());
                if let Some(d) = done {
                    map.insert("done".into(), d.into());
                }
                map.insert("pad".into(), pad.into());
                Value::Object(map).to_string().into_bytes()
            })
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => event(),
            2 => (event(), mutations()).prop_map(|(e, ms)| mutate(&e, &ms)),
            1 => bytes(),
            1 => (1usize..200).prop_map(|depth| {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
            }),
        ]
    }

    /// Bytes the table says it holds, counted again from what it shows.
    fn held(t: &StatusTable) -> usize {
        let Value::Object(latest) = t.latest() else {
            return 0;
        };
        let mut total = 0;
        for name in latest.keys() {
            let Some(Value::Array(events)) = t.history(name) else {
                continue;
            };
            total += events
                .iter()
                .map(|e| e.to_string().len() + name.len())
                .sum::<usize>();
        }
        total
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn the_table_keeps_its_bounds_and_its_count(
            posts in vec((body(), 0u8..3, 0u64..2000, any::<bool>()), 1..40),
            max_machines in 1usize..6,
            max_bytes in 0usize..8000,
        ) {
            let mut t = StatusTable::new(max_machines, max_bytes);
            let mut now = 1_000_000;
            for (body, from, step, trusted) in posts {
                now += step;
                let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, from));
                let result = bounded(body.len(), || {
                    t.post(imprint::host::statuses::parse(&body, from)?, from, now, trusted)
                });
                if let Ok(name) = result {
                    prop_assert!(valid_name(&name));
                    let latest = t.latest();
                    prop_assert_eq!(&latest[&name]["received"], &Value::from(now));
                    prop_assert_eq!(&latest[&name]["from"], &Value::from(from.to_string()));
                    let history = t.history(&name).and_then(|h| h.as_array().map(Vec::len));
                    prop_assert!(history.is_some_and(|n| (1..=HISTORY).contains(&n)));
                }
                prop_assert!(t.len() <= max_machines);
                prop_assert_eq!(t.bytes(), held(&t));
            }
        }
    }
}

mod ext4 {
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
        let ro =
            if s.sparse == 1 { SPARSE_SUPER } else { 0 } | if s.csum { METADATA_CSUM } else { 0 };
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
}

mod fat {
    use super::*;
    use imprint::format::fat::*;

    /// A FAT16 or FAT32 boot sector (with its backup at `backup` for FAT32).
    fn image(fat32: bool, bytes_per_sector: u16, backup: u16, id: u32) -> Vec<u8> {
        let mut img = vec![0u8; 8 * 4096];
        img[0x0B..0x0D].copy_from_slice(&bytes_per_sector.to_le_bytes());
        let at = if fat32 {
            img[0x32..0x34].copy_from_slice(&backup.to_le_bytes());
            img[0x42] = 0x29;
            0x43
        } else {
            img[0x16] = 8;
            img[0x26] = 0x29;
            0x27
        };
        img[at..at + 4].copy_from_slice(&id.to_le_bytes());
        img[510] = 0x55;
        img[511] = 0xAA;
        let copy = img[..512].to_vec();
        let offset = backup as usize * bytes_per_sector as usize;
        if fat32 && offset > 0 && offset + 512 <= img.len() {
            img[offset..offset + 512].copy_from_slice(&copy);
        }
        img
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn volume_ids_round_trip(
            fat32 in any::<bool>(),
            bps in prop::sample::select(vec![512u16, 1024, 2048, 4096]),
            backup in 0u16..8,
            id in any::<u32>(),
            new in any::<u32>(),
        ) {
            let mut part = Cursor::new(image(fat32, bps, backup, id));
            prop_assert_eq!(volume_id(&mut part).unwrap(), id);
            prop_assert_eq!(set_volume_id(&mut part, new).unwrap(), id);
            prop_assert_eq!(volume_id(&mut part).unwrap(), new);
            let offset = backup as usize * bps as usize;
            let img = part.into_inner();
            if fat32 && offset > 0 && offset + 512 <= img.len() {
                prop_assert_eq!(&img[offset + 0x43..offset + 0x47], &new.to_le_bytes());
            }
            let text = volume_id_text(new);
            prop_assert_eq!(u32::from_str_radix(&text.replace('-', ""), 16), Ok(new));
        }

        #[test]
        fn mutated_sectors_never_panic(
            fat32 in any::<bool>(),
            backup in any::<u16>(),
            ms in mutations(),
            new in any::<u32>(),
        ) {
            let img = mutate(&image(fat32, 512, backup, 7), &ms);
            let mut part = Cursor::new(img);
            let _ = volume_id(&mut part);
            let _ = set_volume_id(&mut part, new);
        }
    }
}

mod swap {
    use super::*;
    use imprint::format::swap::*;

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn uuids_round_trip(mut page in vec(any::<u8>(), 4096..8192), new in any::<[u8; 16]>()) {
            page[4096 - 10..4096].copy_from_slice(b"SWAPSPACE2");
            let old: [u8; 16] = page[1036..1052].try_into().unwrap();
            let mut part = Cursor::new(page);
            prop_assert_eq!(uuid(&mut part).unwrap(), old);
            prop_assert_eq!(set_uuid(&mut part, new).unwrap(), old);
            prop_assert_eq!(uuid(&mut part).unwrap(), new);
        }

        #[test]
        fn arbitrary_areas_never_panic(bytes in bytes(), new in any::<[u8; 16]>()) {
            let before = bytes.clone();
            let mut part = Cursor::new(bytes);
            if set_uuid(&mut part, new).is_err() {
                prop_assert!(part.get_ref() == &before);
            }
        }
    }
}

mod fstype {
    use super::*;
    use imprint::format::fstype::*;

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_heads_never_panic(bytes in bytes()) {
            let _ = identify(&bytes);
        }

        #[test]
        fn signatures_are_found(which in 0usize..5, mut noise in vec(any::<u8>(), HEAD_LEN)) {
            let (offset, magic, name): (usize, &[u8], &str) = [
                (0x10040, &b"_BHRfS_M"[..], "btrfs"),
                (0, b"LUKS\xba\xbe", "LUKS encrypted volume"),
                (0x8001, b"CD001", "ISO 9660"),
                (0x218, b"LVM2 001", "LVM physical volume"),
                (0, b"XFSB", "XFS"),
            ][which];
            let mut head = vec![0u8; HEAD_LEN];
            head[offset..offset + magic.len()].copy_from_slice(magic);
            prop_assert_eq!(identify(&head), Some(name));
            // Among other bytes, a signature listed earlier may win; never none.
            noise[offset..offset + magic.len()].copy_from_slice(magic);
            prop_assert!(identify(&noise).is_some());
        }
    }
}

/// What the deploy environment reads to start an installed OS by kexec: PE
/// section tables (UKIs, systemd-boot), systemd-boot's entries and
/// `loader.conf`, and the root it names by partition type.
mod boot_loaders {
    use super::*;
    use imprint::format::gpt::{Layout, Partition};
    use imprint::format::{dps, pe, sdboot};
    use std::cmp::Ordering;

    const UKI: &[u8] = include_bytes!("fixtures/uki/uki.efi");

    /// Text made of what entries and os-release files hold, and some noise.
    fn text() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            "(title|version|sort-key|machine-id|linux|initrd|uki|efi|options|architecture|default) [ -~]{0,40}",
            "(ID|IMAGE_ID|NAME|PRETTY_NAME|VERSION|VERSION_ID|BUILD_ID)=[\"']?[ -~]{0,30}[\"']?",
            ".{0,60}",
        ];
        vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn mutated_pe_headers_never_panic_and_sections_stay_in_the_file(
            ms in mutations(),
            len in prop::option::of(0u64..1 << 20),
        ) {
            let head = mutate(&UKI[..4096.min(UKI.len())], &ms);
            let len = len.unwrap_or(UKI.len() as u64);
            if let Ok(sections) = pe::sections(&head, len) {
                for s in &sections {
                    prop_assert!(s.offset.checked_add(s.size).is_some_and(|end| end <= len));
                }
                let _ = pe::Uki::from_sections(&sections);
            }
        }

        #[test]
        fn arbitrary_bytes_are_no_pe_section_table_to_follow(b in bytes(), len in any::<u64>()) {
            if let Ok(sections) = pe::sections(&b, len) {
                prop_assert!(sections.iter().all(|s| s.offset.saturating_add(s.size) <= len));
            }
            let _ = pe::cmdline_text(&b);
            let _ = pe::is_systemd_boot_magic(&b);
            let _ = sdboot::efi_string(&b);
        }

        #[test]
        fn entries_parse_to_safe_paths_or_nothing(name in "[ -~]{0,40}", t in text(), cmdline in prop::option::of(".{0,80}")) {
            for entry in [sdboot::type1(&name, 1, &t), sdboot::type2(&name, 1, &t, cmdline.as_deref())].into_iter().flatten() {
                let paths = match &entry.kind {
                    sdboot::Kind::Linux { linux, initrds } => {
                        let mut p = initrds.clone();
                        p.push(linux.clone());
                        p
                    }
                    sdboot::Kind::Uki { path } | sdboot::Kind::Efi { path } => vec![path.clone()],
                };
                for p in paths {
                    prop_assert!(p.starts_with('/') && !p.split('/').any(|s| s == ".."), "{}", p);
                }
                prop_assert!(entry.options.len() <= 2048);
            }
            let _ = sdboot::loader_conf_default(&t);
        }

        #[test]
        fn versions_compare_as_an_order(a in "[0-9a-z.~^-]{0,12}", b in "[0-9a-z.~^-]{0,12}", c in ".{0,12}") {
            prop_assert_eq!(sdboot::version_cmp(&a, &b), sdboot::version_cmp(&b, &a).reverse());
            prop_assert_eq!(sdboot::version_cmp(&a, &a), Ordering::Equal);
            let _ = sdboot::version_cmp(&a, &c);
        }

        #[test]
        fn the_root_named_for_a_kexec_is_one_of_the_disk(
            cmdline in "[ -~]{0,120}",
            parts in vec((any::<bool>(), guid(), any::<u64>(), ".{0,12}"), 0..6),
        ) {
            let partitions: Vec<Partition> = parts
                .iter()
                .enumerate()
                .map(|(i, (root, unique_guid, attributes, name))| Partition {
                    number: i as u32 + 1,
                    type_guid: if *root { dps::ROOT_X86_64 } else { dps::LINUX_DATA },
                    unique_guid: *unique_guid,
                    first_lba: 2048 * (i as u64 + 1),
                    last_lba: 2048 * (i as u64 + 1) + 2047,
                    attributes: *attributes,
                    name: name.clone(),
                })
                .collect();
            let layout = Layout {
                sector_size: 512,
                disk_guid: imprint::format::gpt::Guid([1; 16]),
                first_usable_lba: 34,
                last_usable_lba: 1 << 30,
                partitions: partitions.clone(),
            };
            match dps::root_for_kexec(&cmdline, &layout) {
                dps::Root::Added { cmdline: line, partuuid } => {
                    prop_assert!(partitions.iter().any(|p| p.unique_guid == partuuid && p.type_guid == dps::ROOT_X86_64));
                    let named = format!("root=PARTUUID={}", partuuid.to_string().to_ascii_lowercase());
                    prop_assert!(line.split_ascii_whitespace().any(|w| w == named), "{}", line);
                }
                dps::Root::Named => prop_assert!(cmdline.split_ascii_whitespace().any(|w| w.starts_with("root="))),
                dps::Root::Unknown(_) => {}
            }
        }
    }
}
