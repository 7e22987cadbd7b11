//! Capturing configuration into a state partition and restoring it into another
//! root: on real directories and a file standing in for the state partition, with
//! a write fault injected mid-bundle.

use imprint::format::bundle::{Bundle, EntryKind};
use imprint::format::digest::Digest;
use imprint::format::state::{self, Mode, Record};
use imprint::migrate;
use imprint::statepart;
use imprint::sys::Root;
use std::fs;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const PART_LEN: u64 = 8 << 20;

fn record() -> Record {
    Record {
        deployed_mode: Mode::Deploy,
        ..Record::new(Mode::Committed, "os", Digest::of(b"v1"))
    }
}

fn partition() -> Cursor<Vec<u8>> {
    let mut part = Cursor::new(vec![0u8; PART_LEN as usize]);
    state::write(&mut part, &record()).unwrap();
    part
}

/// What the OS rooted at `root` captures by its own list, with room to spare.
fn capture(root: &Path, now: u64) -> Bundle {
    let root = Root::open(root).unwrap();
    let list = migrate::read_list_in(&root).unwrap();
    migrate::capture(&root, &list, now, 64 << 20).unwrap()
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn old_os() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "etc/hostname", b"old-host\n", 0o644);
    write(r, "etc/machine-id", b"0123456789abcdef\n", 0o444);
    write(r, "etc/ssh/ssh_host_ed25519_key", b"SECRET", 0o600);
    write(r, "etc/ssh/ssh_host_ed25519_key.pub", b"PUBLIC", 0o644);
    write(r, "etc/ssh/sshd_config", b"not listed", 0o644);
    write(r, "etc/imprint/host.d/net.conf", b"addr=10.1.2.3\n", 0o640);
    write(r, "etc/passwd", b"root:x:0:0\n", 0o644);
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", r.join("etc/imprint/host.d/tz")).unwrap();
    write(
        r,
        "etc/imprint/migrate.list",
        b"/etc/hostname\n/etc/machine-id\n/etc/ssh/ssh_host_*\n/etc/imprint/host.d/\n",
        0o644,
    );
    dir
}

#[test]
fn captured_configuration_is_restored_as_the_new_list_allows() {
    let old = old_os();
    let bundle = capture(old.path(), 5);
    let paths: Vec<&str> = bundle.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/etc/hostname",
            "/etc/machine-id",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/etc/imprint/host.d",
            "/etc/imprint/host.d/net.conf",
            "/etc/imprint/host.d/tz",
        ]
    );
    let mut part = partition();
    let (rec, reference) = statepart::store_bundle(&mut part, PART_LEN, &bundle).unwrap();
    assert_eq!(rec.bundle, Some(reference.clone()));
    assert_eq!(
        state::read(&mut part).unwrap().0.bundle,
        Some(reference.clone())
    );

    // The new OS accepts host name, machine id and host.d, but not the ssh keys.
    let new = tempfile::tempdir().unwrap();
    write(new.path(), "etc/hostname", b"default\n", 0o644);
    let accept =
        migrate::parse_list("/etc/hostname\n/etc/machine-id\n/etc/imprint/host.d/\n").unwrap();
    let loaded = statepart::load_bundle(&mut part, PART_LEN, &reference).unwrap();
    assert_eq!(loaded, bundle);
    let restored = migrate::restore(new.path(), &loaded, &accept).unwrap();
    assert_eq!(restored.len(), 5);
    let n = new.path();
    assert_eq!(fs::read(n.join("etc/hostname")).unwrap(), b"old-host\n");
    let mid = fs::metadata(n.join("etc/machine-id")).unwrap();
    assert_eq!(mid.mode() & 0o7777, 0o444);
    let old_mid = fs::metadata(old.path().join("etc/machine-id")).unwrap();
    assert_eq!(mid.mtime(), old_mid.mtime(), "modification time kept");
    assert_eq!(
        fs::metadata(n.join("etc/imprint/host.d/net.conf"))
            .unwrap()
            .mode()
            & 0o7777,
        0o640
    );
    assert_eq!(
        fs::read_link(n.join("etc/imprint/host.d/tz"))
            .unwrap()
            .to_str(),
        Some("/usr/share/zoneinfo/UTC")
    );
    assert!(
        !n.join("etc/ssh").exists(),
        "the new list does not accept ssh keys"
    );
    assert!(!n.join("etc/passwd").exists());

    // Restoring again (an interrupted first boot run twice) ends the same.
    let again = migrate::restore(new.path(), &loaded, &accept).unwrap();
    assert_eq!(again, restored);
    assert_eq!(fs::read(n.join("etc/hostname")).unwrap(), b"old-host\n");
}

/// A partition whose writes fail after `budget` bytes, like a power cut.
struct Failing {
    inner: Cursor<Vec<u8>>,
    budget: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("power cut"));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Failing {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn the_previous_bundle_stays_valid_until_the_new_one_is_whole() {
    let old = old_os();
    let first = capture(old.path(), 1);
    let mut part = partition();
    let (_, first_ref) = statepart::store_bundle(&mut part, PART_LEN, &first).unwrap();

    write(old.path(), "etc/hostname", b"renamed\n", 0o644);
    let second = capture(old.path(), 2);
    for budget in [0, 10, 200, 354, 5000, 70_000] {
        let mut failing = Failing {
            inner: Cursor::new(part.get_ref().clone()),
            budget,
        };
        let stored = statepart::store_bundle(&mut failing, PART_LEN, &second);
        // Whatever the record says after the cut, it names a whole bundle: the
        // old one, or (if the cut came after the record's last byte) the new one.
        let (rec, _) = state::read(&mut failing.inner).unwrap();
        let named = rec.bundle.expect("a bundle is named");
        let loaded = statepart::load_bundle(&mut failing.inner, PART_LEN, &named).unwrap();
        if stored.is_err() && named == first_ref {
            assert_eq!(loaded, first, "budget {budget}");
        } else {
            assert_eq!(loaded, second, "budget {budget}");
        }
        // The old bundle itself is never overwritten by the attempt.
        assert_eq!(
            statepart::load_bundle(&mut failing.inner, PART_LEN, &first_ref).unwrap(),
            first
        );
    }
    let (_, second_ref) = statepart::store_bundle(&mut part, PART_LEN, &second).unwrap();
    assert_ne!(second_ref.slot, first_ref.slot);
}

#[test]
fn a_bundle_too_large_is_refused_and_nothing_changes() {
    let old = old_os();
    write(
        old.path(),
        "etc/imprint/host.d/huge.bin",
        &vec![7u8; 5 << 20],
        0o644,
    );
    let bundle = capture(old.path(), 1);
    let mut part = partition();
    let before = part.get_ref().clone();
    let err = statepart::store_bundle(&mut part, PART_LEN, &bundle).unwrap_err();
    assert!(err.to_string().contains("migrate.list"), "{err}");
    assert_eq!(part.get_ref(), &before);
}

#[test]
fn a_damaged_bundle_is_detected_not_restored() {
    let old = old_os();
    let bundle = capture(old.path(), 1);
    let mut part = partition();
    let (_, reference) = statepart::store_bundle(&mut part, PART_LEN, &bundle).unwrap();
    let (offset, _) = statepart::bundle_slot(PART_LEN, reference.slot);
    part.get_mut()[offset as usize + 20] ^= 0xff;
    let err = statepart::load_bundle(&mut part, PART_LEN, &reference).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}

/// A previous OS's root is hostile: its links resolve inside it, never out to
/// the deploy environment's files; FIFOs and devices are not read.
#[test]
fn a_capture_never_leaves_the_root_it_reads() {
    let old = old_os();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "ssh_host_rsa_key", b"OUTSIDE", 0o600);
    let r = old.path();
    fs::remove_dir_all(r.join("etc/ssh")).unwrap();
    // /etc/ssh names a directory outside the root by absolute path and by `..`.
    std::os::unix::fs::symlink(outside.path(), r.join("etc/ssh")).unwrap();
    let up = format!("../../..{}", outside.path().display());
    std::os::unix::fs::symlink(&up, r.join("etc/imprint/host.d/up")).unwrap();
    fs::remove_file(r.join("etc/hostname")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("etc/hostname"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let bundle = capture(r, 1);
    for e in &bundle.entries {
        if let EntryKind::File(data) = &e.kind {
            assert_ne!(data.as_slice(), b"OUTSIDE", "{}", e.path);
        }
        assert_ne!(e.path, "/etc/hostname", "a FIFO was captured");
    }
    // The links themselves are configuration, kept as links.
    let up_entry = bundle
        .entries
        .iter()
        .find(|e| e.path == "/etc/imprint/host.d/up")
        .expect("the link is captured");
    assert_eq!(up_entry.kind, EntryKind::Symlink(up));
    assert!(
        bundle
            .entries
            .iter()
            .any(|e| e.path == "/etc/imprint/host.d/net.conf")
    );
}

#[test]
fn a_capture_stops_at_the_room_the_state_partition_has() {
    let old = old_os();
    write(
        old.path(),
        "etc/imprint/host.d/huge.bin",
        &vec![7u8; 3 << 20],
        0o644,
    );
    let root = Root::open(old.path()).unwrap();
    let list = migrate::read_list_in(&root).unwrap();
    let err = migrate::capture(&root, &list, 1, 1 << 20).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/etc/imprint/host.d/huge.bin"), "{text}");
    assert!(text.contains("migrate.list"), "{text}");
}

/// A state partition whose slot 0 holds `slot` (a record's header and payload).
fn partition_holding(slot: &[u8]) -> Cursor<Vec<u8>> {
    let mut part = vec![0u8; PART_LEN as usize];
    part[..slot.len()].copy_from_slice(slot);
    Cursor::new(part)
}

#[test]
fn a_bundle_is_stored_under_a_record_an_earlier_build_wrote() {
    // Format 1 as it began (no bundle field), as its build wrote it at generation 3.
    let fixture =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state/v1-base.bin"))
            .unwrap();
    let mut part = partition_holding(&fixture);
    let (old, generation) = state::read(&mut part).unwrap();
    assert_eq!((old.image_name.as_str(), generation), ("fleet-os", 3));
    assert_eq!(old.bundle, None);

    let bundle = capture(old_os().path(), 1);
    let (rec, reference) = statepart::store_bundle(&mut part, PART_LEN, &bundle).unwrap();
    let (back, generation) = state::read(&mut part).unwrap();
    assert_eq!(generation, 4);
    assert_eq!(back, rec);
    assert_eq!(back.version, state::RECORD_VERSION);
    assert_eq!(
        Record {
            bundle: None,
            ..back.clone()
        },
        old
    );
    assert_eq!(
        statepart::load_bundle(&mut part, PART_LEN, &reference).unwrap(),
        bundle
    );
    // The old record is still there, in the other slot.
    assert_eq!(&part.get_ref()[..fixture.len()], &fixture[..]);
}

#[test]
fn a_record_from_a_newer_imprint_is_not_written_over() {
    let mut part = partition();
    // Generation 2 in slot 1, of format 3: what a newer imprint might write.
    let payload = [3u8, 0xde, 0xad, 0xbe, 0xef];
    let slot = state::SLOT_SIZE as usize;
    let bytes = part.get_mut();
    bytes[slot..slot + 8].copy_from_slice(state::MAGIC);
    bytes[slot + 8..slot + 16].copy_from_slice(&2u64.to_le_bytes());
    bytes[slot + 16..slot + 20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes[slot + 20..slot + 24].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes[slot + 24..slot + 24 + payload.len()].copy_from_slice(&payload);
    let before = part.get_ref().clone();

    let err = state::read(&mut part).unwrap_err().to_string();
    assert!(err.contains("newer imprint"), "{err}");
    let bundle = capture(old_os().path(), 1);
    let err = statepart::store_bundle(&mut part, PART_LEN, &bundle)
        .unwrap_err()
        .to_string();
    assert!(err.contains("upgrade imprint"), "{err}");
    let err = state::write(&mut part, &record()).unwrap_err().to_string();
    assert!(err.contains("newer imprint"), "{err}");
    assert!(*part.get_ref() == before, "the partition changed");
}
