use super::*;
use crate::engine::{WriteImageError, write_image};
use crate::format::digest::Digest;
use crate::format::manifest::{Chunk, ChunkKind, Requirements};
use crate::format::repository::chunk_path;
use crate::format::state::Mode;
use crate::source::{FetchError, RetryPolicy};
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const CHUNK: usize = 64 << 10;
const SECTORS: u64 = 8192; // a 4 MiB image
const LINUX_TYPE: Guid = Guid::from_fields(
    0x0FC63DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

/// A repository in memory that can be told to fail after `budget` chunks, or
/// on one file.
struct MemorySource {
    files: HashMap<String, Vec<u8>>,
    budget: AtomicUsize,
    refuse: Mutex<Option<String>>,
    /// A file held back until this many others were served (or 10 s passed).
    held: Mutex<Option<(String, usize)>>,
    /// Every file served, and when.
    served: Mutex<Vec<(String, std::time::Instant)>>,
}

impl Source for MemorySource {
    fn fetch(&self, path: &str, _limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        let refused = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_err();
        if self.refuse.lock().unwrap().as_deref() == Some(path) {
            // Slow to fail, as a network is: other chunks go on meanwhile.
            std::thread::sleep(Duration::from_millis(300));
            return Err(FetchError::NotFound {
                location: path.to_string(),
            });
        }
        let held = self.held.lock().unwrap().clone();
        if let Some((held, others)) = held
            && held == path
        {
            let start = std::time::Instant::now();
            while self.served.lock().unwrap().len() < others
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        match self.files.get(path) {
            Some(bytes) if !refused => {
                buf.clear();
                buf.extend_from_slice(bytes);
                let now = std::time::Instant::now();
                self.served.lock().unwrap().push((path.to_string(), now));
                Ok(())
            }
            _ => Err(FetchError::NotFound {
                location: path.to_string(),
            }),
        }
    }

    fn location(&self, path: &str) -> String {
        path.to_string()
    }
}

/// A GPT image with boot code and a protective MBR, an ESP and a root
/// partition filled from `seed`, and some all-zero chunks.
fn image(seed: u8) -> Vec<u8> {
    let mut img = gpt::tests::image_with(
        SECTORS,
        &[
            (gpt::ESP_TYPE, 2048, 4095, "EFI system"),
            (LINUX_TYPE, 4096, SECTORS - 2048, "root"),
        ],
    );
    img[..8].copy_from_slice(&[0xEB, 0x63, 0x90, seed, 1, 2, 3, 4]);
    img[446 + 4] = 0xEE;
    img[510..512].copy_from_slice(&[0x55, 0xAA]);
    let mut x = seed as u64 + 1;
    for (i, b) in img[1 << 20..3 << 20].iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Every fourth chunk stays zero.
        if (i / CHUNK) % 4 != 3 {
            *b = x as u8;
        }
    }
    img
}

fn manifest_and_source(img: &[u8], name: &str) -> (Manifest, MemorySource) {
    let mut files = HashMap::new();
    let chunks = img
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, content)| {
            let kind = if crate::format::is_zero(content) {
                ChunkKind::Zero
            } else {
                let sha256 = Digest::of(content);
                let stored = zstd::bulk::compress(content, 1).unwrap();
                let stored_size = stored.len() as u32;
                files.insert(chunk_path(&sha256), stored);
                ChunkKind::Data {
                    sha256,
                    blake3: *blake3::hash(content).as_bytes(),
                    stored_size,
                }
            };
            Chunk {
                offset: (i * CHUNK) as u64,
                length: content.len() as u32,
                kind,
            }
        })
        .collect();
    let manifest = Manifest {
        name: name.into(),
        size: img.len() as u64,
        chunk_size: CHUNK as u32,
        chunks,
        requirements: Requirements {
            arch: None,
            firmware: vec![],
            min_disk_size: img.len() as u64,
            ..Default::default()
        },
        layout: gpt::read(&mut Cursor::new(img)).unwrap(),
        boot: None,
        generalized: false,
    };
    let source = MemorySource {
        files,
        budget: AtomicUsize::new(usize::MAX),
        refuse: Mutex::new(None),
        held: Mutex::new(None),
        served: Mutex::new(Vec::new()),
    };
    (manifest, source)
}

fn record(name: &str) -> Record {
    Record::new(Mode::Deploy, name, Digest::of(name.as_bytes()))
}

fn plan(record: &Record) -> Plan<'_> {
    Plan {
        disk_guid: Guid([0x11; 16]),
        state_guid: Guid([0x22; 16]),
        previous: None,
        fresh_guids: &[Guid([0x33; 16])],
        record,
        seed: None,
        before_head: None,
        opts: DeployOptions {
            jobs: 3,
            retry: RetryPolicy {
                attempts: 1,
                ..RetryPolicy::default()
            },
            progress_interval: Duration::from_secs(60),
        },
    }
}

/// Runs the install onto the disk file at `path`, stopping after `stop`.
fn run(
    path: &std::path::Path,
    manifest: &Manifest,
    source: &MemorySource,
    record: &Record,
    stop: Option<Step>,
) -> Result<Installed, InstallError> {
    let needed = required_size(manifest).unwrap();
    let disk = DiskTarget::open_for_write(path, needed).unwrap();
    install(
        source,
        manifest,
        &disk,
        &plan(record),
        &|_| {},
        &mut |step| Some(step) != stop,
    )
}

/// Whether any firmware could take the disk for a bootable GPT disk: a boot
/// signature, or a primary or backup GPT header.
fn looks_bootable(disk: &[u8]) -> bool {
    disk[510..512] == [0x55, 0xAA]
        || &disk[512..520] == b"EFI PART"
        || &disk[disk.len() - 512..disk.len() - 504] == b"EFI PART"
}

fn region(disk: &[u8], start: usize, len: usize) -> &[u8] {
    &disk[start..start + len]
}

/// The safety invariant: a disk that looks bootable holds every data chunk of
/// the new image, its state record, and the new backup GPT, and its head is
/// either cleared or the new one (never the old boot code over new data).
/// The record in `disk`'s state partition, where `layout_from`'s GPT puts it.
fn read_record(disk: &[u8], layout_from: &[u8]) -> Option<Record> {
    let layout = gpt::read(&mut Cursor::new(layout_from)).unwrap().unwrap();
    let (start, len) = statepart::byte_range(&layout, statepart::find(&layout).unwrap());
    let part = &disk[start as usize..(start + len) as usize];
    state::read(&mut Cursor::new(part)).ok().map(|(r, _)| r)
}

/// The disk equals `reference` but for the state record's slots (which hold
/// other generations after a rerun), and holds the same record.
fn assert_same_install(disk: &[u8], reference: &[u8], when: &str) {
    let layout = gpt::read(&mut Cursor::new(reference)).unwrap().unwrap();
    let (start, _) = statepart::byte_range(&layout, statepart::find(&layout).unwrap());
    let slots = (start as usize)..(start + 2 * state::SLOT_SIZE) as usize;
    assert!(
        disk[..slots.start] == reference[..slots.start]
            && disk[slots.end..] == reference[slots.end..],
        "{when}: the disk differs from an uninterrupted install"
    );
    assert_eq!(
        read_record(disk, reference),
        read_record(reference, reference),
        "{when}"
    );
}

fn assert_never_half_bootable(disk: &[u8], reference: &[u8], img: &[u8], when: &str) {
    if !looks_bootable(disk) {
        return;
    }
    let span = BOOT_RECORD_SPAN as usize;
    assert_eq!(
        region(disk, CHUNK, img.len() - CHUNK),
        region(img, CHUNK, img.len() - CHUNK),
        "{when}: the disk looks bootable but the image's data is not all there"
    );
    assert_eq!(
        read_record(disk, reference),
        Some(read_record(reference, reference).unwrap()),
        "{when}: the disk looks bootable but has no state record"
    );
    let end = disk.len() - span;
    assert_eq!(
        region(disk, end, span),
        region(reference, end, span),
        "{when}: the disk looks bootable but its backup GPT is not the new one"
    );
    let head = region(disk, 0, CHUNK);
    assert!(
        crate::format::is_zero(&head[..span]) || head == region(reference, 0, CHUNK),
        "{when}: the disk looks bootable with an old or partial head"
    );
}

#[test]
fn an_install_stopped_anywhere_never_boots_half_written_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (old_img, new_img) = (image(1), image(2));
    let (old_manifest, old_source) = manifest_and_source(&old_img, "old");
    let (manifest, source) = manifest_and_source(&new_img, "new");
    let new_record = record("new");

    // The disk as it is before: a complete, bootable install of another image.
    let old_path = dir.path().join("old.img");
    run(&old_path, &old_manifest, &old_source, &record("old"), None).unwrap();
    let old_disk = std::fs::read(&old_path).unwrap();
    assert!(looks_bootable(&old_disk));

    // What a whole, uninterrupted install leaves.
    let ref_path = dir.path().join("reference.img");
    std::fs::write(&ref_path, &old_disk).unwrap();
    let full = run(&ref_path, &manifest, &source, &new_record, None).unwrap();
    let reference = std::fs::read(&ref_path).unwrap();
    assert_eq!(full.layout.disk_guid, Guid([0x11; 16]));
    assert!(full.added_state.is_some());
    assert_eq!(
        region(&reference, CHUNK, new_img.len() - CHUNK),
        region(&new_img, CHUNK, new_img.len() - CHUNK)
    );
    assert_eq!(
        read_record(&reference, &reference),
        Some(new_record.clone())
    );

    // Stopped after each step, then rerun.
    let path = dir.path().join("disk.img");
    for stop in Step::ORDER {
        std::fs::write(&path, &old_disk).unwrap();
        let stopped = run(&path, &manifest, &source, &new_record, Some(stop));
        assert!(matches!(stopped, Err(InstallError::Stopped(s)) if s == stop));
        let disk = std::fs::read(&path).unwrap();
        assert_never_half_bootable(&disk, &reference, &new_img, &format!("after {stop:?}"));
        let rerun = run(&path, &manifest, &source, &new_record, None).unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert_same_install(&disk, &reference, &format!("rerun after {stop:?}"));
        if stop != Step::InvalidateBootRecords {
            assert_eq!(rerun.progress.chunks_fetched, 0, "after {stop:?}");
        }
    }

    // Failed part-way through the data: the source gives out after some chunks.
    for budget in [0, 1, 5, 17] {
        std::fs::write(&path, &old_disk).unwrap();
        source.budget.store(budget, Ordering::SeqCst);
        let failed = run(&path, &manifest, &source, &new_record, None);
        assert!(matches!(failed, Err(InstallError::Deploy(_))), "{failed:?}");
        let disk = std::fs::read(&path).unwrap();
        assert!(!looks_bootable(&disk), "failed after {budget} chunks");
        source.budget.store(usize::MAX, Ordering::SeqCst);
        run(&path, &manifest, &source, &new_record, None).unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert_same_install(&disk, &reference, &format!("rerun after {budget} chunks"));
    }
}

/// A partition that begins inside the first chunk: its bytes are on the disk
/// when `before_head` runs, while the disk does not look bootable yet, and
/// what the hook changes there is kept (the head no longer covers it).
#[test]
fn what_runs_before_the_head_finds_the_partitions_and_is_kept() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let mut img = gpt::tests::image_with(
        SECTORS,
        &[
            (gpt::ESP_TYPE, 64, 2047, "EFI system"),
            (LINUX_TYPE, 2048, SECTORS - 2048, "root"),
        ],
    );
    img[446 + 4] = 0xEE;
    img[510..512].copy_from_slice(&[0x55, 0xAA]);
    let esp_start = 64 * 512;
    assert!(esp_start < CHUNK);
    img[esp_start..esp_start + 8].copy_from_slice(b"OLD-FS-1");
    let (manifest, source) = manifest_and_source(&img, "early");
    let path = dir.path().join("disk.img");
    let seen = Mutex::new(None);
    let hook = |layout: &Layout| {
        let disk = std::fs::read(&path).unwrap();
        let esp = layout
            .partitions
            .iter()
            .find(|p| p.type_guid == gpt::ESP_TYPE)
            .unwrap();
        let start = esp.first_lba * layout.sector_size as u64;
        let at = start as usize;
        // The backup GPT is there by now; without a protective MBR nothing
        // reads it.
        let head = disk[510..512] == [0x55, 0xAA] || &disk[512..520] == b"EFI PART";
        *seen.lock().unwrap() = Some((head, disk[at..at + 8].to_vec()));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"NEW-FS-2", start).unwrap();
    };
    let r = record("early");
    let mut p = plan(&r);
    p.before_head = Some(&hook);
    let disk = DiskTarget::open_for_write(&path, required_size(&manifest).unwrap()).unwrap();
    install(&source, &manifest, &disk, &p, &|_| {}, &mut |_| true).unwrap();
    assert_eq!(
        seen.into_inner().unwrap(),
        Some((false, b"OLD-FS-1".to_vec()))
    );
    let disk = std::fs::read(&path).unwrap();
    assert!(looks_bootable(&disk));
    assert_eq!(&disk[esp_start..esp_start + 8], b"NEW-FS-2");
}

#[test]
fn a_record_left_by_a_newer_imprint_gives_way_to_the_deploys_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let (manifest, source) = manifest_and_source(&image(5), "new");
    run(&path, &manifest, &source, &record("old"), None).unwrap();
    // A newer imprint updated the record since: generation 2, of the format
    // after this build's.
    let mut disk = std::fs::read(&path).unwrap();
    let layout = gpt::read(&mut Cursor::new(&disk)).unwrap().unwrap();
    let (start, _) = statepart::byte_range(&layout, statepart::find(&layout).unwrap());
    let payload = [state::RECORD_VERSION as u8 + 1, 1, 2, 3];
    let slot = &mut disk[(start + state::SLOT_SIZE) as usize..];
    slot[..8].copy_from_slice(state::MAGIC);
    slot[8..16].copy_from_slice(&2u64.to_le_bytes());
    slot[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    slot[20..24].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    slot[24..28].copy_from_slice(&payload);
    std::fs::write(&path, &disk).unwrap();
    assert!(read_record(&disk, &disk).is_none());

    let r = record("new");
    run(&path, &manifest, &source, &r, None).unwrap();
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(read_record(&disk, &disk), Some(r));
}

#[test]
fn every_step_has_its_own_name() {
    let mut names: Vec<&str> = Step::ORDER.iter().map(|s| s.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Step::ORDER.len());
    assert!(
        names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
    );
}

#[test]
fn on_a_disk_no_larger_than_the_image_the_tail_goes_last() {
    // The image carries its own state partition, so the disk can be exactly
    // the image's size and the image's own backup GPT lands at the disk's end.
    let mut img = gpt::tests::image_with(
        SECTORS,
        &[
            (gpt::ESP_TYPE, 2048, 4095, "EFI system"),
            (statepart::TYPE_GUID, 4096, SECTORS - 40, statepart::NAME),
        ],
    );
    img[446 + 4] = 0xEE;
    img[510..512].copy_from_slice(&[0x55, 0xAA]);
    for (i, b) in img[1 << 20..2 << 20].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    // The image's own backup GPT header at its last sector.
    let backup = img[512..1024].to_vec();
    let len = img.len();
    img[len - 512..].copy_from_slice(&backup);
    let (manifest, source) = manifest_and_source(&img, "exact");
    assert_eq!(required_size(&manifest).unwrap(), img.len() as u64);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let r = record("exact");
    // The last chunk holds the image's backup GPT, now at the disk's end. A
    // chunk before it that cannot be fetched must keep it off the disk.
    let data: Vec<_> = manifest
        .chunks
        .iter()
        .filter_map(|c| match c.kind {
            ChunkKind::Data { sha256, .. } => Some(chunk_path(&sha256)),
            ChunkKind::Zero => None,
        })
        .collect();
    assert!(data.len() > 3);
    for missing in &data[data.len() - 3..data.len() - 1] {
        std::fs::write(&path, vec![0u8; img.len()]).unwrap();
        *source.refuse.lock().unwrap() = Some(missing.clone());
        assert!(run(&path, &manifest, &source, &r, None).is_err());
        let disk = std::fs::read(&path).unwrap();
        assert!(!looks_bootable(&disk), "without {missing}");
    }
    *source.refuse.lock().unwrap() = None;
    run(&path, &manifest, &source, &r, None).unwrap();
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(read_record(&disk, &disk), Some(r));
}

/// The host's deploy of `manifest` onto the file at `path`, with `jobs` workers.
fn write_image_to(
    path: &std::path::Path,
    manifest: &Manifest,
    source: &MemorySource,
    jobs: usize,
) -> Result<Progress, WriteImageError> {
    let disk = DiskTarget::open_for_write(path, manifest.size).unwrap();
    let opts = DeployOptions {
        jobs,
        ..plan(&record("x")).opts
    };
    write_image(source, manifest, &disk, &opts, &|_| {})
}

/// `image(seed)` cut to end half-way through a chunk, with a backup GPT header
/// in its last sector: two chunks then reach into the disk's last 64 KiB.
fn uneven_image(seed: u8) -> Vec<u8> {
    let mut img = image(seed);
    img.truncate(img.len() - CHUNK / 2);
    let header = img[512..1024].to_vec();
    let len = img.len();
    img[len - 512..].copy_from_slice(&header);
    img
}

#[test]
fn the_host_deploy_fetches_data_while_the_head_is_still_coming() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let new = image(5);
    let (manifest, source) = manifest_and_source(&new, "new");
    // A disk of other bytes: its zero chunks must be zeroed, and no write
    // can happen before the new head is in hand.
    let mut x = 99u64;
    let other: Vec<u8> = (0..new.len())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &other).unwrap();
    let ChunkKind::Data { sha256: head, .. } = manifest.chunks[0].kind else {
        panic!("the head is data");
    };
    let head = chunk_path(&head);
    let jobs = 3;
    *source.held.lock().unwrap() = Some((head.clone(), jobs));
    let p = write_image_to(&path, &manifest, &source, jobs).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), new);
    assert!(p.zeroed_bytes > 0, "{p:?}");
    // Every fetcher got a chunk while the head was fetched: the zero
    // chunks before the first data (the scan meets them first) wait for
    // the head, the scan does not.
    let served = source.served.lock().unwrap();
    let head_at = served.iter().find(|(p, _)| *p == head).unwrap().1;
    let before = served
        .iter()
        .filter(|(p, at)| *p != head && *at < head_at)
        .count();
    assert!(before >= jobs, "{before} chunks fetched before the head");
}

#[test]
fn the_host_deploy_takes_the_head_down_first_and_puts_it_back_last() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let (old, new) = (uneven_image(1), uneven_image(2));
    let (old_manifest, old_source) = manifest_and_source(&old, "old");
    let (manifest, source) = manifest_and_source(&new, "new");
    assert_eq!(
        tail_index(&manifest, new.len() as u64),
        manifest.chunks.len() - 2
    );
    write_image_to(&path, &old_manifest, &old_source, 3).unwrap();
    let old_disk = std::fs::read(&path).unwrap();
    assert_eq!(old_disk, old);
    assert!(looks_bootable(&old_disk) && looks_bootable(&new));

    // Failed part-way: the source gives out after some chunks, up to the last
    // one a whole deploy over the old image fetches.
    let whole = write_image_to(&path, &manifest, &source, 3).unwrap();
    let fetches = whole.chunks_fetched as usize;
    assert!(fetches > 20, "{whole:?}");
    for budget in [0, 1, 5, 17, fetches - 2, fetches - 1] {
        std::fs::write(&path, &old_disk).unwrap();
        source.budget.store(budget, Ordering::SeqCst);
        let failed =
            write_image_to(&path, &manifest, &source, 3).expect_err(&format!("budget {budget}"));
        // Untouched (the head could not be fetched: nothing was written) or
        // not bootable, and the error says which.
        let disk = std::fs::read(&path).unwrap();
        assert!(
            disk == old_disk || !looks_bootable(&disk),
            "failed after {budget} chunks"
        );
        assert_eq!(
            failed.disk_changed,
            disk != old_disk,
            "budget {budget}: {failed}"
        );
        if budget == 0 {
            assert!(disk == old_disk, "nothing fetched, nothing written");
        }
        source.budget.store(usize::MAX, Ordering::SeqCst);
        write_image_to(&path, &manifest, &source, 3).unwrap();
        assert!(std::fs::read(&path).unwrap() == new, "rerun after {budget}");
    }

    // Deployed again: only read.
    let again = write_image_to(&path, &manifest, &source, 3).unwrap();
    assert_eq!(again.written_bytes + again.zeroed_bytes, 0, "{again:?}");
    assert_eq!(again.chunks_fetched, 0);
    assert_eq!(again.skipped_bytes, new.len() as u64);
    assert_eq!(again.total_bytes, new.len() as u64);

    // Changes in one place each: only that chunk is fetched, the head and the
    // tail chunks in place are put back from what was read. One worker, so the
    // first tail chunk is found in place before the second one takes the
    // regions down under it.
    let last = new.len() - 1;
    let mut changed = new.clone();
    for at in [last - 600, 2 * CHUNK + 9, 100] {
        changed[at] ^= 0x5A;
        let (manifest, source) = manifest_and_source(&changed, "changed");
        let p = write_image_to(&path, &manifest, &source, 1).unwrap();
        assert!(std::fs::read(&path).unwrap() == changed, "change at {at}");
        assert_eq!(p.chunks_fetched, 1, "change at {at}: {p:?}");
        assert!(p.fetched_bytes > 0);
    }
}

/// An upgrade from an image of the same family: every partition the new
/// disk shares a GUID with on the previous disk gets a fresh one, so that
/// `root=PARTUUID=` and firmware entries find only the new disk's.
#[test]
fn an_upgrade_gives_partitions_shared_with_the_previous_disk_fresh_guids() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(5);
    let (manifest, source) = manifest_and_source(&img, "new");
    let previous = manifest.layout.clone().unwrap();
    let shared = previous.partitions.len();
    assert!(shared >= 2, "{previous:?}");
    let fresh: Vec<Guid> = (0..shared as u8).map(|i| Guid([0x40 + i; 16])).collect();
    let path = dir.path().join("disk.img");
    let disk = DiskTarget::open_for_write(&path, required_size(&manifest).unwrap()).unwrap();
    let r = record("new");
    let mut p = plan(&r);
    p.previous = Some(&previous);
    p.fresh_guids = &fresh;
    let installed = install(&source, &manifest, &disk, &p, &|_| {}, &mut |_| true).unwrap();
    assert!(installed.shared_guids.is_empty(), "{installed:?}");
    assert_eq!(installed.renewed.len(), shared);
    let written = gpt::read(&mut Cursor::new(std::fs::read(&path).unwrap()))
        .unwrap()
        .unwrap();
    for (old, guid) in &installed.renewed {
        let now = written
            .partitions
            .iter()
            .find(|q| q.number == old.number)
            .unwrap();
        assert_eq!(now.unique_guid, *guid);
        assert_eq!(now.type_guid, old.type_guid);
        assert!(!previous.partitions.iter().any(|q| q.unique_guid == *guid));
    }
    // Fewer fresh GUIDs than shared partitions: the rest are said to share.
    let mut p = plan(&r);
    p.previous = Some(&previous);
    p.fresh_guids = &fresh[..1];
    let installed = install(&source, &manifest, &disk, &p, &|_| {}, &mut |_| true).unwrap();
    assert_eq!(installed.renewed.len(), 1);
    assert_eq!(installed.shared_guids.len(), shared - 1);
}

#[test]
fn an_image_without_a_partition_table_is_refused_before_any_write() {
    let (mut manifest, source) = manifest_and_source(&image(3), "raw");
    manifest.layout = None;
    assert!(matches!(
        required_size(&manifest),
        Err(InstallError::NoPartitionTable(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, image(4)).unwrap();
    let disk = DiskTarget::open_for_write(&path, 1).unwrap();
    let r = record("raw");
    let result = install(&source, &manifest, &disk, &plan(&r), &|_| {}, &mut |_| true);
    assert!(matches!(result, Err(InstallError::NoPartitionTable(_))));
    assert_eq!(std::fs::read(&path).unwrap(), image(4));
}
