//! Fresh file system identities, checked by e2fsprogs: a UUID changed in place
//! leaves a file system that `e2fsck -f` finds clean, that says the new UUID, and
//! whose files read back.

use imprint::format::ext4::{self, uuid_text};
use std::path::Path;
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (e2fsprogs): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// An ext4 image of `mib` MiB with `options` for mkfs.ext4 and a file in it.
fn image(dir: &Path, name: &str, mib: u64, options: &[&str]) -> std::path::PathBuf {
    let content = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(
        content.join("etc/hello"),
        "hello from the old file system\n",
    )
    .unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let mut args = vec!["-q", "-F", "-U", "5eed0000-0000-4000-8000-000000000001"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["-d", content.to_str().unwrap(), path.to_str().unwrap()]);
    let (ok, text) = run("mkfs.ext4", &args);
    assert!(ok, "mkfs.ext4: {text}");
    path
}

#[test]
fn a_new_uuid_leaves_a_clean_file_system_with_its_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, mib, options) in [
        ("small-blocks", 64, &["-b", "1024"][..]),
        ("large-blocks", 300, &["-b", "4096"][..]),
        ("no-csum", 32, &["-O", "^metadata_csum"][..]),
    ] {
        let path = image(dir.path(), name, mib, options);
        let fresh = [0x42u8; 16];
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let old = ext4::set_uuid(&mut f, fresh).unwrap();
        assert_eq!(uuid_text(&old), "5eed0000-0000-4000-8000-000000000001");
        drop(f);
        let p = path.to_str().unwrap();
        let (ok, text) = run("e2fsck", &["-fn", p]);
        assert!(ok, "{name}: e2fsck after the UUID change:\n{text}");
        let (_, header) = run("dumpe2fs", &["-h", p]);
        assert!(header.contains(&uuid_text(&fresh)), "{name}:\n{header}");
        if !options.contains(&"^metadata_csum") {
            assert!(header.contains("metadata_csum_seed"), "{name}:\n{header}");
        }
        let (ok, text) = run("debugfs", &["-R", "cat /etc/hello", p]);
        assert!(
            ok && text.contains("hello from the old file system"),
            "{name}: {text}"
        );
        let mut f = std::fs::File::open(&path).unwrap();
        assert_eq!(ext4::read(&mut f).unwrap().uuid, fresh);
    }
}

#[test]
fn group_descriptor_checksums_tied_to_the_uuid_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(
        dir.path(),
        "uninit",
        32,
        &["-O", "^metadata_csum,uninit_bg"],
    );
    let before = std::fs::read(&path).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let err = ext4::set_uuid(&mut f, [1; 16]).unwrap_err();
    assert!(err.to_string().contains("uninit_bg"), "{err}");
    assert!(std::fs::read(&path).unwrap() == before);
}

#[test]
fn a_new_fat_volume_id_is_what_blkid_and_fsck_see() {
    use imprint::format::fat;
    let dir = tempfile::tempdir().unwrap();
    for (name, flags) in [("fat32.img", "-F32"), ("fat16.img", "-F16")] {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let p = path.to_str().unwrap();
        let (ok, text) = run("mkfs.vfat", &[flags, "-i", "5EED0001", p]);
        assert!(ok, "mkfs.vfat: {text}");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(
            fat::set_volume_id(&mut f, 0x1234_ABCD).unwrap(),
            0x5EED_0001
        );
        drop(f);
        let (ok, text) = run("fsck.vfat", &["-n", p]);
        assert!(ok, "{name}: fsck.vfat:\n{text}");
        let (_, text) = run("blkid", &["-p", "-o", "value", "-s", "UUID", p]);
        assert_eq!(text.trim(), fat::volume_id_text(0x1234_ABCD), "{name}");
    }
}
