//! The binary `cargo build` (and so `cargo install --path .`) makes is the one for
//! every role: static, so `imprint initramfs build` packs the running program as
//! the deploy environment's /init, and still a host tool that resolves names.

mod common;

use common::*;
use imprint::host::initramfs::{DEFAULT_MODULES, is_static_elf};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A modules directory with what `initramfs build` reads: ext4 as a module file
/// with one dependency, every other default module built into the kernel.
fn modules_dir(root: &Path) -> PathBuf {
    let dir = root.join("6.1.0-test-amd64");
    for (rel, body) in [
        ("kernel/fs/ext4/ext4.ko", "ext4 module"),
        ("kernel/fs/jbd2/jbd2.ko", "jbd2 module"),
    ] {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    std::fs::write(
        dir.join("modules.dep"),
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\n",
    )
    .unwrap();
    std::fs::write(dir.join("modules.alias"), "alias fs-ext4 ext4\n").unwrap();
    let builtin: String = DEFAULT_MODULES
        .iter()
        .filter(|m| **m != "ext4")
        .map(|m| format!("kernel/drivers/misc/{m}.ko\n"))
        .collect();
    std::fs::write(dir.join("modules.builtin"), builtin).unwrap();
    dir
}

/// The entries of a newc cpio archive: path to (mode, contents).
fn cpio_entries(mut cpio: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let pad = |n: usize| n.div_ceil(4) * 4;
    let mut out = BTreeMap::new();
    loop {
        assert_eq!(&cpio[..6], b"070701", "newc header");
        let field = |i: usize| {
            let hex = std::str::from_utf8(&cpio[6 + i * 8..14 + i * 8]).unwrap();
            usize::from_str_radix(hex, 16).unwrap()
        };
        let (mode, size, name_len) = (field(1) as u32, field(6), field(11));
        let name = String::from_utf8(cpio[110..110 + name_len - 1].to_vec()).unwrap();
        let data_at = pad(110 + name_len);
        if name == "TRAILER!!!" {
            return out;
        }
        out.insert(name, (mode, cpio[data_at..data_at + size].to_vec()));
        cpio = &cpio[pad(data_at + size)..];
    }
}

#[test]
fn the_built_binary_is_static_and_packs_itself_as_init() {
    let bin = std::fs::read(BIN).unwrap();
    assert_eq!(
        is_static_elf(&bin),
        Some(true),
        "{BIN} is not a static x86_64 executable; .cargo/config.toml builds with +crt-static"
    );
    let dir = tempfile::tempdir().unwrap();
    let modules = modules_dir(dir.path());
    let out = dir.path().join("initramfs.img");
    let run = imprint(&[
        "initramfs",
        "build",
        "--out",
        out.to_str().unwrap(),
        "--modules-dir",
        modules.to_str().unwrap(),
    ]);
    assert_success(&run);
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("kernel 6.1.0-test-amd64"),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );

    let cpio = zstd::stream::decode_all(&std::fs::read(&out).unwrap()[..]).unwrap();
    let entries = cpio_entries(&cpio);
    let (mode, init) = &entries["init"];
    assert_eq!(mode & 0o777, 0o755, "/init is executable");
    assert!(*init == bin, "/init is not this very binary");
    assert_eq!(
        entries["sbin/modprobe"].1, b"/init",
        "modprobe links to /init"
    );
    let base = "lib/modules/6.1.0-test-amd64";
    assert_eq!(
        entries[&format!("{base}/kernel/fs/ext4/ext4.ko")].1,
        b"ext4 module"
    );
    assert_eq!(
        entries[&format!("{base}/kernel/fs/jbd2/jbd2.ko")].1,
        b"jbd2 module"
    );
    let dep = String::from_utf8_lossy(&entries[&format!("{base}/modules.dep")].1).into_owned();
    assert!(
        dep.contains("kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko"),
        "{dep}"
    );
}

/// Static glibc still resolves host names through /etc/hosts (NSS "files" is built
/// into libc since glibc 2.34), so `--url http://localhost:PORT` works on the host.
#[test]
fn the_static_binary_resolves_localhost() {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let listed = hosts.lines().any(|l| {
        let mut words = l.split('#').next().unwrap_or("").split_whitespace();
        words.next() == Some("127.0.0.1") && words.any(|w| w == "localhost")
    });
    if !listed {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: /etc/hosts does not map localhost to 127.0.0.1"
        );
        return;
    }
    let repo = Repo::new();
    let image = mixed_image(7, 12);
    repo.add("os:v1", &image, &[]);
    let served = Served::start(&repo.path());
    let url = served.url.replace("127.0.0.1", "localhost");
    let disk = repo.file("disk.img");
    let out = imprint(&[
        "deploy",
        "--url",
        &url,
        "--image",
        "os:v1",
        "--disk",
        disk.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert!(std::fs::read(&disk).unwrap() == image, "deployed bytes");
}
