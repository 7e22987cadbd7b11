//! Capturing configuration into a state partition and restoring it into another
//! root: on real directories and a file standing in for the state partition, with
//! a write fault injected mid-bundle.

use imprint::format::bundle::{BUNDLE_VERSION, Bundle, Entry, EntryKind};
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

fn entry(path: &str, mode: u32, kind: EntryKind) -> Entry {
    Entry {
        path: path.to_string(),
        mode,
        uid: 0,
        gid: 0,
        mtime: (1_700_000_000, 0),
        kind,
    }
}

fn bundle_of(entries: Vec<Entry>) -> Bundle {
    Bundle {
        version: BUNDLE_VERSION,
        created_at: 1,
        entries,
    }
}

/// Everything under `dir` (itself included): each path with its mode and its
/// content or link target, links not followed.
fn tree(dir: &Path) -> Vec<(String, String, String)> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, String, String)>) {
        let at = dir.join(rel);
        let meta = fs::symlink_metadata(&at).unwrap();
        let content = if meta.file_type().is_symlink() {
            fs::read_link(&at).unwrap().display().to_string()
        } else if meta.is_file() {
            String::from_utf8_lossy(&fs::read(&at).unwrap()).into_owned()
        } else {
            String::new()
        };
        out.push((rel.to_string(), format!("{:o}", meta.mode()), content));
        if meta.is_dir() {
            let mut names: Vec<String> = fs::read_dir(&at)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                walk(dir, &format!("{rel}/{name}"), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, ".", &mut out);
    out
}

/// A directory outside the root a restore writes into, with something to lose.
fn victim() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    write(dir.path(), "etc/shadow", b"root:*:19000::::::\n", 0o640);
    write(dir.path(), "net.conf/keep", b"kept\n", 0o644);
    dir
}

const HOST_LIST: &str = "/etc/hostname\n/etc/imprint/host.d/\n";

/// A link the bundle itself restores is data: a later entry beneath it would be
/// written wherever it points, so the bundle is refused before anything is written.
#[test]
fn an_entry_beneath_a_link_the_bundle_restores_is_refused() {
    let outside = victim();
    let before = tree(outside.path());
    let up = format!("{}{}", "../".repeat(16), outside.path().display());
    for target in [outside.path().display().to_string(), up] {
        let new = tempfile::tempdir().unwrap();
        let bundle = bundle_of(vec![
            entry("/etc/hostname", 0o644, EntryKind::File(b"node\n".to_vec())),
            entry("/etc/imprint/host.d", 0o755, EntryKind::Dir),
            entry("/etc/imprint/host.d/x", 0o777, EntryKind::Symlink(target)),
            entry(
                "/etc/imprint/host.d/x/etc/shadow",
                0o640,
                EntryKind::File(b"root::0::::::\n".to_vec()),
            ),
        ]);
        let accept = migrate::parse_list(HOST_LIST).unwrap();
        let result = migrate::restore(new.path(), &bundle, &accept);
        assert_eq!(tree(outside.path()), before, "nothing changed outside");
        assert!(
            !new.path().join("etc").exists(),
            "nothing is restored from a refused bundle"
        );
        let text = result
            .expect_err("an entry beneath a restored link is refused")
            .to_string();
        assert!(text.contains("/etc/imprint/host.d/x/etc/shadow"), "{text}");
        assert!(text.contains("/etc/imprint/host.d/x,"), "{text}");
    }
}

/// A link the target root already has on an entry's way (absolute, or relative
/// with enough `..` to reach `/`) is never followed: the restore is refused, and
/// neither the directory it points at nor the link changes.
#[test]
fn links_in_the_target_root_are_not_followed() {
    let outside = victim();
    let before = tree(outside.path());
    let up = format!("{}{}", "../".repeat(16), outside.path().display());
    for target in [outside.path().display().to_string(), up] {
        let new = tempfile::tempdir().unwrap();
        fs::create_dir_all(new.path().join("etc/imprint")).unwrap();
        std::os::unix::fs::symlink(&target, new.path().join("etc/imprint/host.d")).unwrap();
        let bundle = bundle_of(vec![entry(
            "/etc/imprint/host.d/net.conf",
            0o600,
            EntryKind::File(b"addr=10.9.9.9\n".to_vec()),
        )]);
        let accept = migrate::parse_list(HOST_LIST).unwrap();
        let result = migrate::restore(new.path(), &bundle, &accept);
        assert_eq!(
            tree(outside.path()),
            before,
            "{target}: nothing changed outside"
        );
        assert_eq!(
            fs::read_link(new.path().join("etc/imprint/host.d")).unwrap(),
            Path::new(&target)
        );
        let text = result
            .expect_err("an entry beneath a link is refused")
            .to_string();
        assert!(text.contains("/etc/imprint/host.d/net.conf"), "{text}");
        assert!(text.contains("link"), "{text}");
    }
}

/// A directory entry where the target root has a link to a directory: neither
/// the mode, the owner nor the contents of the directory behind it change.
#[test]
fn a_directory_entry_over_a_link_leaves_the_directory_behind_it_alone() {
    let outside = victim();
    let before = tree(outside.path());
    let new = tempfile::tempdir().unwrap();
    fs::create_dir_all(new.path().join("etc/imprint")).unwrap();
    std::os::unix::fs::symlink(outside.path(), new.path().join("etc/imprint/host.d")).unwrap();
    let bundle = bundle_of(vec![
        Entry {
            uid: 4321,
            ..entry("/etc/imprint/host.d", 0o700, EntryKind::Dir)
        },
        entry("/etc/imprint/host.d/net.conf", 0o600, EntryKind::Dir),
    ]);
    let accept = migrate::parse_list(HOST_LIST).unwrap();
    let result = migrate::restore(new.path(), &bundle, &accept);
    assert_eq!(tree(outside.path()), before);
    assert_eq!(fs::metadata(outside.path()).unwrap().uid(), 0);
    assert!(new.path().join("etc/imprint/host.d").is_symlink());
    let err = result.expect_err("refused");
    assert!(err.to_string().contains("/etc/imprint/host.d"), "{err}");
}

/// A file never takes the place of a directory that has contents; an empty one
/// makes room.
#[test]
fn a_file_does_not_replace_a_directory_with_contents() {
    let new = tempfile::tempdir().unwrap();
    write(new.path(), "etc/hostname/keep", b"kept\n", 0o644);
    fs::create_dir_all(new.path().join("etc/hosts")).unwrap();
    let before = tree(&new.path().join("etc/hostname"));
    let accept = migrate::parse_list("/etc/hostname\n/etc/hosts\n").unwrap();
    let file = |path: &str| entry(path, 0o644, EntryKind::File(b"x\n".to_vec()));

    let result = migrate::restore(new.path(), &bundle_of(vec![file("/etc/hostname")]), &accept);
    assert!(new.path().join("etc/hostname/keep").is_file());
    assert_eq!(tree(&new.path().join("etc/hostname")), before);
    let err = result.expect_err("a directory with contents stays");
    assert!(err.to_string().contains("/etc/hostname"), "{err}");

    migrate::restore(new.path(), &bundle_of(vec![file("/etc/hosts")]), &accept).unwrap();
    assert_eq!(fs::read(new.path().join("etc/hosts")).unwrap(), b"x\n");
}

/// A bundle built by hand (not decoded) may carry any path: one with `..` is
/// refused whatever the list says.
#[test]
fn an_entry_path_with_dot_dot_is_refused() {
    let outside = victim();
    let before = tree(outside.path());
    let new = tempfile::tempdir().unwrap();
    let path = format!(
        "/etc/imprint/host.d/{}{}/planted",
        "../".repeat(16),
        outside.path().display().to_string().trim_start_matches('/')
    );
    let bundle = bundle_of(vec![entry(&path, 0o644, EntryKind::File(b"x".to_vec()))]);
    let accept = migrate::parse_list(HOST_LIST).unwrap();
    let result = migrate::restore(new.path(), &bundle, &accept);
    assert_eq!(tree(outside.path()), before);
    let err = result.expect_err("refused");
    assert!(err.to_string().contains("planted"), "{err}");
}

#[test]
fn a_pattern_names_files_in_its_own_directory_only() {
    let list = migrate::parse_list("/etc/ssh/ssh_host_*\n/etc/ssh/ssh_host_?\n").unwrap();
    assert!(migrate::accepts(&list, "/etc/ssh/ssh_host_ed25519_key"));
    assert!(!migrate::accepts(&list, "/etc/ssh/ssh_host_a/b"));
    assert!(!migrate::accepts(&list, "/etc/ssh/ssh_host_x/../../shadow"));
    assert!(!migrate::accepts(&list, "/etc/ssh/ssh_host_/"));
    let dirs = migrate::parse_list("/etc/imprint/host.d/\n").unwrap();
    assert!(!migrate::accepts(&dirs, "/etc/imprint/host.d/../../shadow"));
}

/// Unmounts on drop, so a failed test leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Mounts `fstype` (or binds `source`) at `target`; `None` where this process
/// may not mount (the tests that need it then have nothing to check).
fn mount(source: &Path, target: &Path, fstype: &str, data: &std::ffi::CStr) -> Option<Mounted> {
    use rustix::mount::MountFlags;
    let flags = if fstype.is_empty() {
        MountFlags::BIND
    } else {
        MountFlags::empty()
    };
    match rustix::mount::mount(source, target, fstype, flags, data) {
        Ok(()) => Some(Mounted(target.to_path_buf())),
        Err(rustix::io::Errno::PERM) => {
            eprintln!("mounting is not permitted here; skipped");
            None
        }
        Err(e) => panic!("mounting {}: {e}", target.display()),
    }
}

/// A private key is never readable by others, not even while it is written: the
/// file is created with its final mode before any content goes in. A file system
/// too small for the key stops the write half way, and what is left shows the
/// mode the file had while it was written.
#[test]
fn a_private_key_is_never_readable_by_others() {
    let new = tempfile::tempdir().unwrap();
    let ssh = new.path().join("etc/ssh");
    fs::create_dir_all(&ssh).unwrap();
    let Some(_small) = mount(Path::new("tmpfs"), &ssh, "tmpfs", c"size=64k,mode=755") else {
        return;
    };
    let accept = migrate::parse_list("/etc/ssh/ssh_host_*\n").unwrap();
    let key = |data: Vec<u8>| {
        bundle_of(vec![Entry {
            uid: 1234,
            gid: 5678,
            ..entry(
                "/etc/ssh/ssh_host_ed25519_key",
                0o600,
                EntryKind::File(data),
            )
        }])
    };

    migrate::restore(new.path(), &key(vec![b'k'; 1 << 20]), &accept)
        .expect_err("a key larger than the file system fails");
    for e in fs::read_dir(&ssh).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{:?} was written with mode {:o}",
            e.file_name(),
            mode & 0o7777
        );
    }

    migrate::restore(new.path(), &key(b"SECRET".to_vec()), &accept).unwrap();
    let written = fs::metadata(ssh.join("ssh_host_ed25519_key")).unwrap();
    assert_eq!(written.mode() & 0o7777, 0o600);
    assert_eq!((written.uid(), written.gid()), (1234, 5678));
    assert_eq!(
        fs::read_dir(&ssh).unwrap().count(),
        1,
        "no temporary file is left"
    );
}

/// A file something is mounted over (systemd's transient /etc/machine-id) is
/// unmounted and replaced: also when a process has it open at that moment, and
/// when it is mounted over twice. (Before, an open file made the unmount fail
/// with EBUSY, and the first boot with it.)
#[test]
fn a_file_mounted_over_is_unmounted_and_replaced() {
    let new = tempfile::tempdir().unwrap();
    write(new.path(), "etc/machine-id", b"\n", 0o444);
    let transient = tempfile::NamedTempFile::new().unwrap();
    fs::write(transient.path(), b"transient\n").unwrap();
    let target = new.path().join("etc/machine-id");
    let Some(_bound) = mount(transient.path(), &target, "", c"") else {
        return;
    };
    let _again = mount(transient.path(), &target, "", c"");
    let _open = fs::File::open(&target).unwrap();
    let bundle = bundle_of(vec![entry(
        "/etc/machine-id",
        0o444,
        EntryKind::File(b"0123456789abcdef\n".to_vec()),
    )]);
    let accept = migrate::parse_list("/etc/machine-id\n").unwrap();
    migrate::restore(new.path(), &bundle, &accept).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"0123456789abcdef\n");
    assert_eq!(fs::read(transient.path()).unwrap(), b"transient\n");
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
    // Generation 2 in slot 1, of the format after this build's: what a newer
    // imprint might write.
    let payload = [state::RECORD_VERSION as u8 + 1, 0xde, 0xad, 0xbe, 0xef];
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
