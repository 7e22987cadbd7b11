//! `imprint image add`: chunk, hash and compress a raw image into the repository.
//!
//! The image is read once, sequentially, by one thread into a small pool of chunk
//! buffers; worker threads hash and compress in parallel. Memory stays bounded by
//! the pool (about 2 × jobs chunks) whatever the image size.

use super::{LocalRepo, RepoError, chunk_path, io_err, manifest_path, ref_path, ref_text};
use crate::format::digest::{Digest, check_name};
use crate::format::gpt::{self, Layout};
use crate::format::is_zero;
use crate::format::manifest::{BootFacts, Chunk, ChunkKind, Firmware, Manifest, Requirements};
use crate::sys;
use ed25519_dalek::SigningKey;
use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

pub struct AddOptions {
    pub chunk_size: u32,
    pub level: i32,
    pub jobs: usize,
    pub sign_key: Option<SigningKey>,
    pub arch: Option<String>,
    /// The firmware the image boots with, when the operator says (else what
    /// its partitions show).
    pub firmware: Option<Vec<Firmware>>,
    /// The smallest disk it may go to, when larger than the image.
    pub min_disk: Option<u64>,
    /// Memory a machine needs, in bytes (0: any).
    pub min_memory: u64,
    /// The DMI product a machine must report.
    pub product: Option<String>,
    /// Drivers some device of the machine must be bound to.
    pub drivers: Vec<String>,
    /// Mark the image generalized: deploys give each machine a fresh identity.
    pub generalize: bool,
    /// Where the image's kernel lives, for a kexec hand-off.
    pub boot: Option<BootFacts>,
    /// When the signed release is issued (Unix seconds).
    pub issued: u64,
    /// When it expires (Unix seconds), if it does.
    pub expires: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddReport {
    pub digest: Digest,
    pub size: u64,
    pub chunks: usize,
    pub zero_chunks: usize,
    /// Chunks this run stored; the rest were already in the repository.
    pub new_chunks: usize,
    /// Compressed bytes this run wrote.
    pub bytes_stored: u64,
    /// Compressed bytes of all the image's chunks.
    pub image_stored_bytes: u64,
}

enum Outcome {
    Zero,
    Data {
        sha256: Digest,
        blake3: [u8; 32],
        stored_size: u32,
        new: bool,
    },
}

pub fn add_image(
    repo: &LocalRepo,
    name: &str,
    tag: &str,
    image: &Path,
    opts: &AddOptions,
) -> Result<AddReport, RepoError> {
    check_name("image name", name)?;
    check_name("tag", tag)?;
    let cs = opts.chunk_size;
    let mut file = File::open(image).map_err(io_err(image))?;
    let size = sys::size_of(&file).map_err(io_err(image))?;
    if size == 0 {
        return Err(RepoError::EmptyImage(image.to_path_buf()));
    }
    let layout = gpt::read(&mut file)?;
    let firmware = match &opts.firmware {
        Some(firmware) => firmware.clone(),
        None => detect_firmware(&mut file, layout.as_ref()).map_err(io_err(image))?,
    };
    file.seek(SeekFrom::Start(0)).map_err(io_err(image))?;

    let count = size.div_ceil(cs as u64) as usize;
    let jobs = opts.jobs.max(1);
    let mut outcomes: Vec<Option<Outcome>> = (0..count).map(|_| None).collect();
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<RepoError>> = Mutex::new(None);
    let claimed: Mutex<HashSet<Digest>> = Mutex::new(HashSet::new());

    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..jobs * 2 {
        let _ = pool_tx.send(Vec::with_capacity(cs as usize));
    }
    let (work_tx, work_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(jobs);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = mpsc::channel::<(usize, Outcome)>();

    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let (pool_tx, done_tx) = (pool_tx.clone(), done_tx.clone());
            let (work_rx, failed, first_error, claimed) =
                (&work_rx, &failed, &first_error, &claimed);
            scope.spawn(move || {
                loop {
                    let next = work_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((index, buf))) = next else { break };
                    match store_chunk(repo, &buf, opts.level, claimed) {
                        Ok(outcome) => {
                            let _ = done_tx.send((index, outcome));
                        }
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                        }
                    }
                    let _ = pool_tx.send(buf);
                }
            });
        }
        drop(done_tx);
        for index in 0..count {
            if failed.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut buf) = pool_rx.recv() else { break };
            let len = (size - index as u64 * cs as u64).min(cs as u64) as usize;
            buf.resize(len, 0);
            if let Err(e) = file.read_exact(&mut buf) {
                failed.store(true, Ordering::SeqCst);
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(io_err(image)(e));
                }
                break;
            }
            if work_tx.send((index, buf)).is_err() {
                break;
            }
        }
        drop(work_tx);
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    for (index, outcome) in done_rx {
        outcomes[index] = Some(outcome);
    }

    let mut report = AddReport {
        digest: Digest([0; 32]),
        size,
        chunks: count,
        zero_chunks: 0,
        new_chunks: 0,
        bytes_stored: 0,
        image_stored_bytes: 0,
    };
    let mut chunks = Vec::with_capacity(count);
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let offset = index as u64 * cs as u64;
        let length = (size - offset).min(cs as u64) as u32;
        let kind = match outcome {
            Some(Outcome::Zero) => {
                report.zero_chunks += 1;
                ChunkKind::Zero
            }
            Some(Outcome::Data {
                sha256,
                blake3,
                stored_size,
                new,
            }) => {
                report.image_stored_bytes += stored_size as u64;
                if new {
                    report.new_chunks += 1;
                    report.bytes_stored += stored_size as u64;
                }
                ChunkKind::Data {
                    sha256,
                    blake3,
                    stored_size,
                }
            }
            None => {
                let e = std::io::Error::other(format!("chunk {index} was never processed"));
                return Err(io_err(image)(e));
            }
        };
        chunks.push(Chunk {
            offset,
            length,
            kind,
        });
    }

    let manifest = Manifest {
        name: name.to_string(),
        size,
        chunk_size: cs,
        chunks,
        requirements: Requirements {
            arch: opts.arch.clone(),
            firmware,
            min_disk_size: opts.min_disk.unwrap_or(0).max(size),
            min_memory: opts.min_memory,
            product: opts.product.clone(),
            drivers: opts.drivers.clone(),
        },
        layout,
        boot: opts.boot.clone(),
        generalized: opts.generalize,
    };
    manifest.validate().map_err(|source| RepoError::Manifest {
        digest: Digest([0; 32]),
        source,
    })?;
    let bytes = manifest.encode();
    let signing = opts.sign_key.as_ref().map(|key| Signing {
        key,
        issued: opts.issued,
        expires: opts.expires,
    });
    report.digest = publish(repo, name, tag, &manifest, &bytes, signing.as_ref(), jobs)?;
    Ok(report)
}

/// What a release is signed with, and its times (Unix seconds).
pub struct Signing<'a> {
    pub key: &'a SigningKey,
    pub issued: u64,
    pub expires: Option<u64>,
}

/// Publishes `manifest` (encoded as `bytes`) as `name:tag`, its chunks all
/// stored: each directory they are in made durable, then the manifest and its
/// signature, then the ref, so that a ref is never seen, even after a power
/// cut, before what it names. Returns the manifest's digest.
pub(super) fn publish(
    repo: &LocalRepo,
    name: &str,
    tag: &str,
    manifest: &Manifest,
    bytes: &[u8],
    signing: Option<&Signing>,
    jobs: usize,
) -> Result<Digest, RepoError> {
    let digest = Digest::of(bytes);
    make_chunks_durable(repo, name, manifest, jobs)?;
    repo.write_atomic(&manifest_path(&digest), bytes)?;
    if let Some(s) = signing {
        repo.sign(s.key, name, tag, &digest, s.issued, s.expires)?;
    }
    repo.sync_dir("manifests/sha256")?;
    repo.write_atomic(&ref_path(name, tag), ref_text(&digest).as_bytes())?;
    repo.sync_dir(&format!("refs/{name}"))?;
    Ok(digest)
}

/// Syncs every directory the manifest about to be written depends on, each once
/// and in parallel: the shard directory of each of its chunks, and every directory
/// on the way to the chunks, the manifest and the ref.
///
/// Why the order matters: a chunk's content is synced before its rename, but the
/// rename itself (its directory entry) is durable only once the directory is. A
/// power cut could otherwise keep the later ref and manifest (synced on their own)
/// and lose chunk entries they name: a ref to an image that cannot be deployed. So:
/// chunks and their directories, then the manifest and its directory, then the
/// ref (renamed over the old one in one step) and its directory. The chunks found
/// already stored count too: the run that stored them may have been cut short
/// before it synced their directory.
fn make_chunks_durable(
    repo: &LocalRepo,
    name: &str,
    manifest: &Manifest,
    jobs: usize,
) -> Result<(), RepoError> {
    let refs = format!("refs/{name}");
    for dir in ["chunks/sha256", "manifests/sha256", &refs] {
        repo.create_dir(dir)?;
    }
    let mut dirs: BTreeSet<String> = manifest
        .chunks
        .iter()
        .filter_map(|c| match c.kind {
            ChunkKind::Data { sha256, .. } => Some(parent(&chunk_path(&sha256)).to_string()),
            ChunkKind::Zero => None,
        })
        .collect();
    // The manifest's and the ref's own directories come later, after their files.
    dirs.extend(["chunks/sha256", "chunks", "manifests", "refs", ""].map(String::from));
    let dirs: Vec<String> = dirs.into_iter().collect();
    crate::parallel::for_each_index(0..dirs.len(), jobs, || (), |_, i| repo.sync_dir(&dirs[i]))
}

/// The directory part of a repository path.
fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn store_chunk(
    repo: &LocalRepo,
    buf: &[u8],
    level: i32,
    claimed: &Mutex<HashSet<Digest>>,
) -> Result<Outcome, RepoError> {
    if is_zero(buf) {
        return Ok(Outcome::Zero);
    }
    let sha256 = Digest::of(buf);
    let blake3 = *blake3::hash(buf).as_bytes();
    let rel = chunk_path(&sha256);
    let path = repo.path(&rel);
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.is_file()
        && meta.len() > 0
    {
        return Ok(Outcome::Data {
            sha256,
            blake3,
            stored_size: meta.len() as u32,
            new: false,
        });
    }
    let compressed = zstd::bulk::compress(buf, level).map_err(io_err(&path))?;
    // The same content twice in one image: compress both (the size is needed and
    // deterministic) but store and count it once.
    let first = claimed.lock().map(|mut c| c.insert(sha256)).unwrap_or(true);
    if first {
        repo.write_atomic(&rel, &compressed)?;
    }
    Ok(Outcome::Data {
        sha256,
        blake3,
        stored_size: compressed.len() as u32,
        new: first,
    })
}

/// Which firmware the image can boot with: an ESP means UEFI; a BIOS boot partition
/// or boot code in the MBR means BIOS.
fn detect_firmware(file: &mut File, layout: Option<&Layout>) -> std::io::Result<Vec<Firmware>> {
    let mut mbr = Vec::with_capacity(512);
    file.seek(SeekFrom::Start(0))?;
    file.by_ref().take(512).read_to_end(&mut mbr)?;
    Ok(Firmware::of_disk(&mbr, layout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{MIN_CHUNK_SIZE, max_stored_size};
    use crate::host::repo::Durable;

    fn options() -> AddOptions {
        AddOptions {
            chunk_size: MIN_CHUNK_SIZE,
            level: 3,
            jobs: 3,
            sign_key: None,
            arch: None,
            firmware: None,
            min_disk: None,
            min_memory: 0,
            product: None,
            drivers: Vec::new(),
            generalize: false,
            boot: None,
            issued: 0,
            expires: None,
        }
    }

    fn add(bytes: &[u8]) -> (tempfile::TempDir, Result<AddReport, RepoError>) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.raw");
        std::fs::write(&image, bytes).unwrap();
        std::fs::create_dir(dir.path().join("repo")).unwrap();
        let repo = LocalRepo::open(&dir.path().join("repo")).unwrap();
        let report = add_image(&repo, "demo", "v1", &image, &options());
        (dir, report)
    }

    /// Reassembles the image from the repository and checks it byte for byte.
    fn reassemble(root: &Path, digest: &Digest) -> Vec<u8> {
        let repo = LocalRepo::open(root).unwrap();
        let m = repo.load_manifest(digest).unwrap();
        let mut out = Vec::new();
        for c in &m.chunks {
            match c.kind {
                ChunkKind::Zero => out.resize(out.len() + c.length as usize, 0),
                ChunkKind::Data {
                    sha256,
                    stored_size,
                    ..
                } => {
                    let stored = repo.read(&chunk_path(&sha256)).unwrap();
                    assert_eq!(stored.len() as u32, stored_size);
                    assert!(stored.len() as u64 <= max_stored_size(c.length));
                    out.extend(zstd::bulk::decompress(&stored, c.length as usize).unwrap());
                }
            }
        }
        out
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn size_not_a_multiple_of_the_chunk_size() {
        let cs = MIN_CHUNK_SIZE as usize;
        let mut img = pattern(3 * cs + 123);
        img[cs..2 * cs].fill(0);
        let (dir, report) = add(&img);
        let report = report.unwrap();
        assert_eq!(
            (report.size, report.chunks, report.zero_chunks),
            (img.len() as u64, 4, 1)
        );
        assert_eq!(report.new_chunks, 3);
        assert_eq!(reassemble(&dir.path().join("repo"), &report.digest), img);
    }

    #[test]
    fn one_byte_image() {
        let (dir, report) = add(&[42]);
        let report = report.unwrap();
        assert_eq!((report.size, report.chunks, report.zero_chunks), (1, 1, 0));
        assert_eq!(
            reassemble(&dir.path().join("repo"), &report.digest),
            vec![42]
        );
    }

    #[test]
    fn empty_image_is_refused() {
        let (_dir, report) = add(&[]);
        let err = report.unwrap_err();
        assert!(matches!(err, RepoError::EmptyImage(_)), "{err}");
    }

    #[test]
    fn repeated_content_is_stored_once_and_re_adding_stores_nothing() {
        let cs = MIN_CHUNK_SIZE as usize;
        let block = pattern(cs);
        let img: Vec<u8> = block.iter().chain(&block).chain(&block).copied().collect();
        let (dir, report) = add(&img);
        let report = report.unwrap();
        assert_eq!(report.new_chunks, 1);
        let repo = LocalRepo::open(&dir.path().join("repo")).unwrap();
        let image = dir.path().join("image.raw");
        let again = add_image(&repo, "demo", "v2", &image, &options()).unwrap();
        assert_eq!((again.new_chunks, again.bytes_stored), (0, 0));
        assert_eq!(again.digest, report.digest);
        assert_eq!(repo.resolve_ref("demo", "v2").unwrap(), report.digest);
    }

    #[test]
    fn what_a_ref_names_is_durable_before_the_ref() {
        let cs = MIN_CHUNK_SIZE as usize;
        // Many distinct chunks (so several shard directories), a repeat, a zero.
        let mut img = pattern(40 * cs);
        for (i, c) in img.chunks_mut(cs).enumerate() {
            c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        img[3 * cs..4 * cs].fill(0);
        img.copy_within(..cs, 10 * cs);
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.raw");
        std::fs::write(&image, &img).unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).unwrap();

        for (tag, stores) in [("v1", true), ("v2", false)] {
            let repo = LocalRepo::open_watched(&root).unwrap();
            let report = add_image(&repo, "demo", tag, &image, &options()).unwrap();
            assert_eq!(report.new_chunks > 0, stores);
            let journal = repo.journal();
            let at = |step: &Durable| {
                let found: Vec<usize> = (0..journal.len())
                    .filter(|&i| journal[i] == *step)
                    .collect();
                assert_eq!(found.len(), 1, "{step:?} once in {journal:#?}");
                found[0]
            };
            let manifest = repo.load_manifest(&report.digest).unwrap();
            let manifest_rel = manifest_path(&report.digest);
            let ref_rel = ref_path("demo", tag);
            let written = at(&Durable::Rename(manifest_rel.clone()));
            assert!(at(&Durable::File(manifest_rel)) < written);
            let mut shards = BTreeSet::new();
            for c in &manifest.chunks {
                let ChunkKind::Data { sha256, .. } = c.kind else {
                    continue;
                };
                let rel = chunk_path(&sha256);
                let shard = at(&Durable::Dir(parent(&rel).to_string()));
                shards.insert(shard);
                // Each chunk stored now: content synced, renamed, its directory
                // synced, and all of it before the manifest.
                if let Some(renamed) = journal
                    .iter()
                    .position(|s| *s == Durable::Rename(rel.clone()))
                {
                    assert!(at(&Durable::File(rel.clone())) < renamed);
                    assert!(renamed < shard, "{rel} renamed after its directory's sync");
                }
                assert!(
                    shard < written,
                    "{rel}'s directory synced after the manifest"
                );
            }
            assert!(shards.len() > 10, "{} shard directories", shards.len());
            for dir in ["chunks/sha256", "chunks", "manifests", "refs", ""] {
                assert!(at(&Durable::Dir(dir.into())) < written, "{dir}");
            }
            let manifest_dir = at(&Durable::Dir("manifests/sha256".into()));
            let referred = at(&Durable::Rename(ref_rel.clone()));
            assert!(written < manifest_dir && manifest_dir < referred);
            assert!(at(&Durable::File(ref_rel)) < referred);
            assert!(referred < at(&Durable::Dir("refs/demo".into())));
            let checked = crate::host::repo::check(&repo, 2).unwrap();
            assert!(checked.problems.is_empty(), "{:?}", checked.problems);
            assert_eq!(checked.manifests, 1);
        }
    }

    #[test]
    fn gpt_layout_and_firmware_are_recorded() {
        let img = gpt::tests::image_with(4096, &[(gpt::ESP_TYPE, 2048, 4000, "esp")]);
        let (dir, report) = add(&img);
        let report = report.unwrap();
        let repo = LocalRepo::open(&dir.path().join("repo")).unwrap();
        let m = repo.load_manifest(&report.digest).unwrap();
        assert_eq!(m.layout.unwrap().partitions[0].name, "esp");
        assert_eq!(m.requirements.firmware, vec![Firmware::Uefi]);
    }
}
