//! The image manifest: what an image is, chunk by chunk.
//!
//! Encoded with postcard. The first field is the format version (a varint), so a
//! reader learns the version before it interprets anything else. Decoding never
//! trusts a field: [`Manifest::decode`] checks every bound, so code that holds a
//! `Manifest` may index and allocate by it. See `docs/repository-format.md`.
//!
//! Version 2 is version 1 followed by an [`Extension`] (the generalized mark and
//! the newer requirements). A manifest whose extension is all defaults is still
//! written as version 1, so deploy environments that read only version 1 keep
//! reading every image that does not need the new fields.

use super::digest::{Digest, check_name};
use super::gpt::Layout;
use serde::{Deserialize, Serialize};

/// The newest manifest format this imprint reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest it reads, and what it writes when nothing newer is needed.
pub const BASE_VERSION: u32 = 1;
/// Bounds of the version 2 requirements.
pub const MAX_DRIVERS: usize = 64;
pub const MAX_REQUIREMENT_TEXT: usize = 128;
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// 1 PiB: larger claims are taken as corruption, not ambition.
pub const MAX_IMAGE_SIZE: u64 = 1 << 50;
/// Manifests larger than this are refused before they are read in full.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    /// Logical size of the image in bytes.
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: Vec<Chunk>,
    pub requirements: Requirements,
    /// The image's own GPT, if it has one.
    pub layout: Option<Layout>,
    /// Where the installed OS's kernel lives, for a kexec hand-off.
    pub boot: Option<BootFacts>,
    /// The image is a copy of one configured machine (a capture, or
    /// `image add --generalize`): a deploy removes what must be unique per
    /// machine (see `generalize`).
    pub generalized: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub length: u32,
    pub kind: ChunkKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkKind {
    /// Stored as `chunks/sha256/<hh>/<hex>`, zstd-compressed to `stored_size` bytes.
    /// `blake3` is a second digest of the same content, three times faster to
    /// compute: the deploy engine uses it to recognise chunks already on the target.
    Data {
        sha256: Digest,
        blake3: [u8; 32],
        stored_size: u32,
    },
    /// All zero bytes: not stored, not fetched.
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    /// The firmware a disk boots with, by what it holds: boot code in its MBR
    /// (`mbr`, its first sector; shorter when it could not be read) or a BIOS
    /// boot partition for BIOS, an EFI system partition for UEFI.
    pub fn of_disk(mbr: &[u8], layout: Option<&Layout>) -> Vec<Firmware> {
        let boot_code =
            mbr.len() >= 512 && mbr[510..512] == [0x55, 0xAA] && mbr[..440].iter().any(|&b| b != 0);
        let has = |t| layout.is_some_and(|l| l.partitions.iter().any(|p| p.type_guid == t));
        let mut firmware = Vec::new();
        if boot_code || has(super::gpt::BIOS_BOOT_TYPE) {
            firmware.push(Firmware::Bios);
        }
        if has(super::gpt::ESP_TYPE) {
            firmware.push(Firmware::Uefi);
        }
        firmware
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Requirements {
    /// `uname -m` style architecture, if the image is tied to one.
    pub arch: Option<String>,
    /// Firmware the image can boot with (empty: unknown).
    pub firmware: Vec<Firmware>,
    pub min_disk_size: u64,
    /// Memory the machine must have, in bytes (0: any). Version 2.
    pub min_memory: u64,
    /// The DMI product name the machine must report. Version 2.
    pub product: Option<String>,
    /// Kernel drivers some device of the machine must be bound to (e.g. a
    /// storage controller the image's initramfs carries). Version 2.
    pub drivers: Vec<String>,
}

/// The version 1 encoding, field for field (borrowed to write, owned to read).
#[derive(Serialize)]
struct BaseOut<'a> {
    version: u32,
    name: &'a str,
    size: u64,
    chunk_size: u32,
    chunks: &'a [Chunk],
    requirements: RequirementsOut<'a>,
    layout: &'a Option<Layout>,
    boot: &'a Option<BootFacts>,
}

#[derive(Serialize)]
struct RequirementsOut<'a> {
    arch: &'a Option<String>,
    firmware: &'a [Firmware],
    min_disk_size: u64,
}

#[derive(Deserialize)]
struct BaseIn {
    version: u32,
    name: String,
    size: u64,
    chunk_size: u32,
    chunks: Vec<Chunk>,
    requirements: RequirementsIn,
    layout: Option<Layout>,
    boot: Option<BootFacts>,
}

#[derive(Deserialize)]
struct RequirementsIn {
    arch: Option<String>,
    firmware: Vec<Firmware>,
    min_disk_size: u64,
}

/// What version 2 appends after the version 1 fields.
#[derive(Serialize, Deserialize, Default, PartialEq)]
struct Extension {
    generalized: bool,
    min_memory: u64,
    product: Option<String>,
    drivers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFacts {
    /// GPT partition number holding the kernel and initrd.
    pub partition: u32,
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid postcard data ({0}); the file is truncated or not a manifest")]
    Malformed(String),
    #[error(
        "manifest format version {0} is not supported (this imprint reads versions {BASE_VERSION} to {FORMAT_VERSION}); upgrade imprint"
    )]
    UnknownVersion(u32),
    #[error("manifest has {0} bytes of trailing garbage")]
    TrailingBytes(usize),
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("manifest image name: {0}")]
    BadName(String),
    #[error("manifest chunk size {0} is not a power of two between 64 KiB and 64 MiB")]
    BadChunkSize(u32),
    #[error("manifest image size {0} is out of range (1 byte to 1 PiB)")]
    BadSize(u64),
    #[error(
        "manifest lists {found} chunks but an image of {size} bytes in {chunk_size}-byte chunks has {expected}"
    )]
    ChunkCount {
        found: usize,
        expected: u64,
        size: u64,
        chunk_size: u32,
    },
    #[error("manifest chunk {index} starts at {offset}, past the image size {size}")]
    OffsetPastEnd {
        index: usize,
        offset: u64,
        size: u64,
    },
    #[error(
        "manifest chunk {index} at offset {offset} overlaps or is out of order (expected offset {expected})"
    )]
    OutOfOrder {
        index: usize,
        offset: u64,
        expected: u64,
    },
    #[error("manifest chunk {index} at offset {offset} leaves a gap (expected offset {expected})")]
    Gap {
        index: usize,
        offset: u64,
        expected: u64,
    },
    #[error("manifest chunk {index} has length {length}, expected {expected}")]
    BadLength {
        index: usize,
        length: u32,
        expected: u64,
    },
    #[error("manifest chunk {index} has an impossible stored size {stored} for {length} bytes")]
    BadStoredSize {
        index: usize,
        stored: u32,
        length: u32,
    },
    #[error(
        "manifest says the image needs a disk of {min} bytes, smaller than the image itself ({size})"
    )]
    BadMinDiskSize { min: u64, size: u64 },
    #[error("manifest partition table is inconsistent: {0}")]
    BadLayout(String),
    #[error("boot facts are invalid: {0}")]
    BadBoot(String),
    #[error("manifest requirements are invalid: {0}")]
    BadRequirements(String),
}

/// The largest a zstd frame of `len` bytes can be (ZSTD_COMPRESSBOUND plus slack).
pub fn max_stored_size(len: u32) -> u64 {
    let len = len as u64;
    len + (len >> 8) + (128 << 10) + 64
}

impl Manifest {
    /// The format version [`Manifest::encode`] writes: the oldest that holds
    /// every field.
    pub fn version(&self) -> u32 {
        if self.extension() == Extension::default() {
            BASE_VERSION
        } else {
            FORMAT_VERSION
        }
    }

    fn extension(&self) -> Extension {
        Extension {
            generalized: self.generalized,
            min_memory: self.requirements.min_memory,
            product: self.requirements.product.clone(),
            drivers: self.requirements.drivers.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let version = self.version();
        let base = BaseOut {
            version,
            name: &self.name,
            size: self.size,
            chunk_size: self.chunk_size,
            chunks: &self.chunks,
            requirements: RequirementsOut {
                arch: &self.requirements.arch,
                firmware: &self.requirements.firmware,
                min_disk_size: self.requirements.min_disk_size,
            },
            layout: &self.layout,
            boot: &self.boot,
        };
        // Serialising in-memory data into a Vec cannot fail.
        let bytes = postcard::to_stdvec(&base).unwrap_or_default();
        if version == BASE_VERSION {
            return bytes;
        }
        postcard::to_extend(&self.extension(), bytes).unwrap_or_default()
    }

    pub fn digest_of(bytes: &[u8]) -> Digest {
        Digest::of(bytes)
    }

    /// Decodes and validates.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let (version, _) = postcard::take_from_bytes::<u32>(bytes)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if !(BASE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ManifestError::UnknownVersion(version));
        }
        let malformed = |e: postcard::Error| ManifestError::Malformed(e.to_string());
        let (base, rest) = postcard::take_from_bytes::<BaseIn>(bytes).map_err(malformed)?;
        let (extension, rest) = if base.version == BASE_VERSION {
            (Extension::default(), rest)
        } else {
            postcard::take_from_bytes::<Extension>(rest).map_err(malformed)?
        };
        let manifest = Manifest {
            name: base.name,
            size: base.size,
            chunk_size: base.chunk_size,
            chunks: base.chunks,
            requirements: Requirements {
                arch: base.requirements.arch,
                firmware: base.requirements.firmware,
                min_disk_size: base.requirements.min_disk_size,
                min_memory: extension.min_memory,
                product: extension.product,
                drivers: extension.drivers,
            },
            layout: base.layout,
            boot: base.boot,
            generalized: extension.generalized,
        };
        if !rest.is_empty() {
            return Err(ManifestError::TrailingBytes(rest.len()));
        }
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        use ManifestError as E;
        check_name("image name", &self.name).map_err(|e| E::BadName(e.to_string()))?;
        let cs = self.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return Err(E::BadChunkSize(cs));
        }
        if self.size == 0 || self.size > MAX_IMAGE_SIZE {
            return Err(E::BadSize(self.size));
        }
        let expected = self.size.div_ceil(cs as u64);
        if self.chunks.len() as u64 != expected {
            return Err(E::ChunkCount {
                found: self.chunks.len(),
                expected,
                size: self.size,
                chunk_size: cs,
            });
        }
        for (index, chunk) in self.chunks.iter().enumerate() {
            let want = index as u64 * cs as u64;
            if chunk.offset >= self.size {
                return Err(E::OffsetPastEnd {
                    index,
                    offset: chunk.offset,
                    size: self.size,
                });
            }
            if chunk.offset < want {
                return Err(E::OutOfOrder {
                    index,
                    offset: chunk.offset,
                    expected: want,
                });
            }
            if chunk.offset > want {
                return Err(E::Gap {
                    index,
                    offset: chunk.offset,
                    expected: want,
                });
            }
            let want_len = (self.size - want).min(cs as u64);
            if chunk.length as u64 != want_len {
                return Err(E::BadLength {
                    index,
                    length: chunk.length,
                    expected: want_len,
                });
            }
            if let ChunkKind::Data { stored_size, .. } = chunk.kind
                && (stored_size == 0 || stored_size as u64 > max_stored_size(chunk.length))
            {
                return Err(E::BadStoredSize {
                    index,
                    stored: stored_size,
                    length: chunk.length,
                });
            }
        }
        if self.requirements.min_disk_size < self.size {
            return Err(E::BadMinDiskSize {
                min: self.requirements.min_disk_size,
                size: self.size,
            });
        }
        check_requirements(&self.requirements).map_err(E::BadRequirements)?;
        if let Some(layout) = &self.layout {
            if !matches!(layout.sector_size, 512 | 4096) {
                return Err(E::BadLayout(format!("sector size {}", layout.sector_size)));
            }
            let sectors = self.size / layout.sector_size as u64;
            if layout.last_usable_lba >= sectors || layout.partitions.len() > 1024 {
                return Err(E::BadLayout(
                    "it describes a larger disk than the image".into(),
                ));
            }
            if let Some(p) = layout
                .partitions
                .iter()
                .find(|p| p.first_lba > p.last_lba || p.last_lba > layout.last_usable_lba)
            {
                return Err(E::BadLayout(format!(
                    "partition {} is out of bounds",
                    p.number
                )));
            }
        }
        if let Some(boot) = &self.boot {
            let exists = self
                .layout
                .as_ref()
                .is_some_and(|l| l.partitions.iter().any(|p| p.number == boot.partition));
            if !exists {
                return Err(E::BadBoot(format!(
                    "partition {} is not in the image's GPT",
                    boot.partition
                )));
            }
            let path_ok =
                |p: &str| p.starts_with('/') && p.len() <= 1024 && !p.split('/').any(|s| s == "..");
            if !path_ok(&boot.kernel) || !boot.initrd.as_deref().is_none_or(path_ok) {
                return Err(E::BadBoot(
                    "kernel and initrd must be absolute paths without ..".into(),
                ));
            }
            if boot.cmdline.len() > 4096 {
                return Err(E::BadBoot("command line longer than 4096 bytes".into()));
            }
        }
        Ok(())
    }

    /// Bytes that must be fetched for a full deploy onto a blank disk.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| match c.kind {
                ChunkKind::Data { stored_size, .. } => stored_size as u64,
                ChunkKind::Zero => 0,
            })
            .sum()
    }
}

/// A driver name as the kernel spells one: what `/sys/bus/*/drivers/` lists.
pub fn valid_driver(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_requirements(r: &Requirements) -> Result<(), String> {
    if let Some(product) = &r.product
        && (product.is_empty()
            || product.len() > MAX_REQUIREMENT_TEXT
            || product.chars().any(char::is_control))
    {
        return Err(format!(
            "a DMI product must be 1 to {MAX_REQUIREMENT_TEXT} printable characters"
        ));
    }
    if r.drivers.len() > MAX_DRIVERS {
        return Err(format!("more than {MAX_DRIVERS} required drivers"));
    }
    if let Some(bad) = r.drivers.iter().find(|d| !valid_driver(d)) {
        return Err(format!(
            "driver name {bad:?} is not 1 to 64 characters of A-Z a-z 0-9 _ - ."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::gpt::{Guid, Partition};

    pub(crate) fn sample() -> Manifest {
        let cs = MIN_CHUNK_SIZE;
        let size = 2 * cs as u64 + 10;
        Manifest {
            name: "demo".into(),
            size,
            chunk_size: cs,
            chunks: vec![
                Chunk {
                    offset: 0,
                    length: cs,
                    kind: ChunkKind::Data {
                        sha256: Digest::of(b"a"),
                        blake3: *blake3::hash(b"a").as_bytes(),
                        stored_size: 100,
                    },
                },
                Chunk {
                    offset: cs as u64,
                    length: cs,
                    kind: ChunkKind::Zero,
                },
                Chunk {
                    offset: 2 * cs as u64,
                    length: 10,
                    kind: ChunkKind::Data {
                        sha256: Digest::of(b"b"),
                        blake3: *blake3::hash(b"b").as_bytes(),
                        stored_size: 19,
                    },
                },
            ],
            requirements: Requirements {
                arch: Some("x86_64".into()),
                firmware: vec![Firmware::Bios, Firmware::Uefi],
                min_disk_size: size,
                ..Default::default()
            },
            layout: Some(Layout {
                sector_size: 512,
                disk_guid: Guid([7; 16]),
                first_usable_lba: 34,
                last_usable_lba: 200,
                partitions: vec![Partition {
                    number: 1,
                    type_guid: Guid([1; 16]),
                    unique_guid: Guid([2; 16]),
                    first_lba: 34,
                    last_lba: 100,
                    attributes: 0,
                    name: "root".into(),
                }],
            }),
            boot: Some(BootFacts {
                partition: 1,
                kernel: "/vmlinuz".into(),
                initrd: None,
                cmdline: "quiet".into(),
            }),
            generalized: false,
        }
    }

    #[test]
    fn version_1_is_written_until_a_newer_field_is_set() {
        let m = sample();
        assert_eq!(m.version(), BASE_VERSION);
        assert_eq!(m.encode()[0], BASE_VERSION as u8);
        let newer: [fn(&mut Manifest); 4] = [
            |m| m.generalized = true,
            |m| m.requirements.min_memory = 1 << 30,
            |m| m.requirements.product = Some("Standard PC (Q35 + ICH9, 2009)".into()),
            |m| m.requirements.drivers = vec!["virtio_blk".into(), "e1000e".into()],
        ];
        for set in newer {
            let mut m = sample();
            set(&mut m);
            let bytes = m.encode();
            assert_eq!(bytes[0], FORMAT_VERSION as u8);
            // Version 2 is version 1's fields with the extension after them.
            let v1 = sample().encode();
            assert_eq!(bytes[1..v1.len()], v1[1..]);
            assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn version_2_requirements_are_bounded() {
        let mut m = sample();
        m.requirements.drivers = vec!["virtio blk".into()];
        assert!(matches!(decode_err(&m), ManifestError::BadRequirements(_)));
        let mut m = sample();
        m.requirements.drivers = vec!["x".into(); MAX_DRIVERS + 1];
        assert!(matches!(decode_err(&m), ManifestError::BadRequirements(_)));
        let mut m = sample();
        m.requirements.product = Some("a\nb".into());
        assert!(matches!(decode_err(&m), ManifestError::BadRequirements(_)));
        // A version 1 manifest with a version 2 tail is trailing garbage, and a
        // version 2 one without its tail is truncated.
        let mut m = sample();
        m.generalized = true;
        let mut bytes = m.encode();
        bytes[0] = BASE_VERSION as u8;
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::TrailingBytes(_))
        ));
        let mut bytes = sample().encode();
        bytes[0] = FORMAT_VERSION as u8;
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Malformed(_))
        ));
    }

    #[test]
    fn round_trip_and_digest_stability() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        // Encoding is canonical: the same manifest always has the same digest.
        assert_eq!(Digest::of(&bytes), Digest::of(&sample().encode()));
        assert_eq!(Manifest::decode(&bytes).unwrap().encode(), bytes);
        // The version is the very first byte, readable before anything else.
        assert_eq!(bytes[0], BASE_VERSION as u8);
    }

    fn decode_err(m: &Manifest) -> ManifestError {
        Manifest::decode(&m.encode()).unwrap_err()
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..len]).is_err(),
                "prefix {len} accepted"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Manifest::decode(&long).unwrap_err(),
            ManifestError::TrailingBytes(1)
        );
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = sample().encode();
        bytes[0] = 7;
        let e = Manifest::decode(&bytes).unwrap_err();
        assert_eq!(e, ManifestError::UnknownVersion(7));
        assert!(e.to_string().contains("version 7"));
    }

    #[test]
    fn chunk_table_errors() {
        let mut m = sample();
        m.chunks[2].offset = m.size + 5;
        assert!(matches!(
            decode_err(&m),
            ManifestError::OffsetPastEnd { index: 2, .. }
        ));

        let mut m = sample();
        m.chunks.swap(0, 1);
        assert!(matches!(
            decode_err(&m),
            ManifestError::Gap { index: 0, .. }
        ));

        let mut m = sample();
        m.chunks[1].offset = 10; // overlaps chunk 0
        assert!(matches!(
            decode_err(&m),
            ManifestError::OutOfOrder { index: 1, .. }
        ));

        let mut m = sample();
        m.chunks[2].length = MIN_CHUNK_SIZE;
        assert!(matches!(
            decode_err(&m),
            ManifestError::BadLength { index: 2, .. }
        ));

        let mut m = sample();
        m.chunks.pop();
        assert!(matches!(
            decode_err(&m),
            ManifestError::ChunkCount { found: 2, .. }
        ));

        let mut m = sample();
        m.chunks[0].kind = ChunkKind::Data {
            sha256: Digest::of(b""),
            blake3: [0; 32],
            stored_size: u32::MAX,
        };
        assert!(matches!(
            decode_err(&m),
            ManifestError::BadStoredSize { index: 0, .. }
        ));
    }

    #[test]
    fn absurd_sizes_are_refused() {
        let mut m = sample();
        m.chunk_size = 3 << 16;
        assert_eq!(decode_err(&m), ManifestError::BadChunkSize(3 << 16));
        let mut m = sample();
        m.chunk_size = 1 << 30;
        assert_eq!(decode_err(&m), ManifestError::BadChunkSize(1 << 30));
        let mut m = sample();
        m.size = u64::MAX;
        assert_eq!(decode_err(&m), ManifestError::BadSize(u64::MAX));
        let mut m = sample();
        m.size = 0;
        m.chunks.clear();
        assert_eq!(decode_err(&m), ManifestError::BadSize(0));
        let mut m = sample();
        m.requirements.min_disk_size = 1;
        assert!(matches!(
            decode_err(&m),
            ManifestError::BadMinDiskSize { .. }
        ));
        let mut m = sample();
        m.name = "../etc".into();
        assert!(matches!(decode_err(&m), ManifestError::BadName(_)));
        let mut m = sample();
        if let Some(l) = m.layout.as_mut() {
            l.partitions[0].last_lba = 10_000;
        }
        assert!(matches!(decode_err(&m), ManifestError::BadLayout(_)));
    }

    #[test]
    fn absurd_counts_do_not_allocate() {
        // A header claiming 2^60 chunks must fail fast, not try to allocate them.
        let mut bytes = Vec::new();
        bytes.push(BASE_VERSION as u8);
        bytes.extend_from_slice(&[4, b'd', b'e', b'm', b'o']); // name
        bytes.extend_from_slice(&[0x80, 0x80, 0x10]); // size
        bytes.extend_from_slice(&[0x80, 0x80, 0x40]); // chunk_size
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]); // count
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Malformed(_))
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        let base = sample().encode();
        let mut state = 0x2545F4914F6CDD1Du64;
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % b.len() as u64) as usize;
                b[at] = (state >> 32) as u8;
            }
            let _ = Manifest::decode(&b);
        }
    }
}
