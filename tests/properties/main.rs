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

mod boot_loaders;
mod bundle;
mod cmdline;
mod cpio;
mod dhcp;
mod dns;
mod efi;
mod ext4;
mod fat;
mod fstype;
mod glob;
mod gpt;
mod http;
mod kmod;
mod manifest;
mod mbr;
mod netlink;
mod signature;
mod state;
mod statuses;
mod swap;
mod usage;
