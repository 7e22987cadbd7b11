//! The QEMU tier: what it needs from the host, the artifacts it boots (the
//! deploy environment, the test OS and Debian images), and booting a VM with
//! `qemu/run`, reading its console. The servers the VMs reach
//! ([`super::servers`]) and the disk helpers ([`super::disks`]) are re-exported
//! here, so a test's `use common::vm::*` has them all; [`super::machine`] is
//! the machine the end-to-end tests boot.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

// Not every test uses them.
#[allow(unused_imports)]
pub use super::disks::*;
#[allow(unused_imports)]
pub use super::servers::*;

/// What the QEMU tier needs from the host, each with the Debian package that
/// brings it (`scripts/deps test` installs them all).
const NEEDED_COMMANDS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("sfdisk", "fdisk"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("syslinux", "syslinux"),
];
const NEEDED_FILES: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/lib/SYSLINUX/gptmbr.bin", "syslinux"),
    ("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi", "syslinux-efi"),
    (
        "/usr/lib/syslinux/modules/efi64/ldlinux.e64",
        "syslinux-common",
    ),
];

/// The pieces of the QEMU tier this host lacks, as "what (package)".
fn qemu_tier_missing() -> Vec<String> {
    let on_path = |cmd: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(cmd).is_file()))
    };
    let mut missing: Vec<String> = NEEDED_COMMANDS
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(cmd, pkg)| format!("{cmd} ({pkg})"))
        .collect();
    missing.extend(
        NEEDED_FILES
            .iter()
            .filter(|(file, _)| !Path::new(file).exists())
            .map(|(file, pkg)| format!("{file} ({pkg})")),
    );
    // The test OS boots Debian's newest kernel with its own initrd and modules.
    let kernel = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .max_by_key(|release| imprint::host::initramfs::version_key(release));
    match kernel {
        None => missing.push("a kernel /boot/vmlinuz-* (linux-image-amd64)".into()),
        Some(release) => {
            for need in [
                format!("/boot/initrd.img-{release}"),
                format!("/lib/modules/{release}/modules.dep"),
            ] {
                if !Path::new(&need).exists() {
                    missing.push(format!("{need} (linux-image-amd64)"));
                }
            }
        }
    }
    missing
}

/// True when the QEMU tier can run here. Otherwise a plain `cargo test` skips it,
/// saying on stderr what is missing, while `IMPRINT_QEMU_TESTS=require` (set by
/// scripts/test, which installs everything first) makes a missing piece a failure.
pub fn qemu_available() -> bool {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    available(MISSING.get_or_init(qemu_tier_missing))
}

/// What building the stock Debian images (boot/build-debian-os, and
/// boot/build-debian-uki) needs beyond the QEMU tier: debootstrap, mkosi, and
/// root for them.
fn debian_missing() -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut missing = Vec::new();
    for (cmd, package) in [
        ("debootstrap", "debootstrap"),
        ("mkosi", "mkosi"),
        ("systemd-nspawn", "systemd-container"),
        ("objcopy", "binutils"),
    ] {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(cmd).is_file()));
        if !on_path {
            missing.push(format!("{cmd} ({package})"));
        }
    }
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
        missing.push("root (debootstrap and chroot)".to_string());
    }
    missing
}

/// Like `qemu_available`, for the tests that boot the stock Debian image.
pub fn debian_available() -> bool {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    available(MISSING.get_or_init(debian_missing))
}

/// What the tests that run a network in a namespace of their own need beyond
/// the QEMU tier: iproute2, a stock DHCP server (dnsmasq), a tap device, root.
fn netns_missing() -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut missing: Vec<String> = [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("dnsmasq", "dnsmasq-base"),
    ]
    .iter()
    .filter(|(cmd, _)| {
        !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(cmd).is_file())
    })
    .map(|(cmd, pkg)| format!("{cmd} ({pkg})"))
    .collect();
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (the tun module)".to_string());
    }
    if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
        missing.push("root (network namespaces)".to_string());
    }
    missing
}

/// Like `qemu_available`, for the tests that run a network namespace.
pub fn netns_available() -> bool {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    available(MISSING.get_or_init(netns_missing))
}

/// Headless Chromium, for the tests of the status page.
pub fn chromium_available() -> bool {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    available(MISSING.get_or_init(|| {
        if Path::new("/usr/bin/chromium").is_file() {
            Vec::new()
        } else {
            vec!["chromium (chromium)".to_string()]
        }
    }))
}

/// Debian's nginx, for the tests that publish a repository as plain files.
pub fn nginx_available() -> bool {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    available(MISSING.get_or_init(|| {
        if Path::new(NGINX).is_file() {
            Vec::new()
        } else {
            vec!["nginx (nginx-light)".to_string()]
        }
    }))
}

/// Debian's nginx (see [`Nginx`]).
pub(super) const NGINX: &str = "/usr/sbin/nginx";

/// Debian's squid and root (it drops to its own user), for the tests that
/// deploy through a cache.
pub fn squid_available() -> bool {
    use std::os::unix::fs::MetadataExt;
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    available(MISSING.get_or_init(|| {
        let mut missing = Vec::new();
        if !Path::new("/usr/sbin/squid").is_file() {
            missing.push("squid (squid)".to_string());
        }
        if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
            missing.push("root (squid runs as its own user)".to_string());
        }
        missing
    }))
}

/// True when nothing is missing; otherwise says what is, on stderr (a skip) or,
/// with IMPRINT_QEMU_TESTS=require, as a failure.
fn available(missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("QEMU test")
        .to_string();
    let missing = missing.join(", ");
    if std::env::var("IMPRINT_QEMU_TESTS").as_deref() == Ok("require") {
        panic!(
            "{test}: IMPRINT_QEMU_TESTS=require, but the QEMU tier lacks {missing}; `scripts/deps test` installs them"
        );
    }
    // Straight to the stderr handle: the test harness captures eprintln! output
    // of passing tests, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: the QEMU tier needs {missing}; `scripts/deps test` installs them, `scripts/test` runs the tier"
    );
    false
}

/// At the start of a QEMU test: returns early (a skip) when the tier cannot run.
#[macro_export]
macro_rules! require_qemu {
    () => {
        if !$crate::common::vm::qemu_available() {
            return;
        }
    };
}

/// Whether the full matrix runs (`IMPRINT_FULL_MATRIX=1`, as scripts/full-matrix
/// sets): a test CI runs then repeats what CI samples once (more boots).
pub fn full_matrix() -> bool {
    std::env::var("IMPRINT_FULL_MATRIX").as_deref() == Ok("1")
}

/// After `require_qemu!()` in a test that runs a network namespace: returns
/// early (a skip) when it cannot run here.
#[macro_export]
macro_rules! require_netns {
    () => {
        if !$crate::common::vm::netns_available() {
            return;
        }
    };
}

/// After `require_qemu!()` in a test that boots the stock Debian image: returns
/// early (a skip) when it cannot be built here.
#[macro_export]
macro_rules! require_debian {
    () => {
        if !$crate::common::vm::debian_available() {
            return;
        }
    };
}

pub struct Artifacts {
    pub dir: PathBuf,
}

impl Artifacts {
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// The status events a deploy environment printed on its console
/// (`imprint-status: {json}`), each read as one of this build's: a line that
/// is not fails the test.
pub fn status_events(console: &str) -> Vec<imprint::format::status::Envelope> {
    console
        .lines()
        .filter_map(|l| {
            l.split_once("imprint-status: ")
                .map(|(_, json)| json.trim())
        })
        .map(|json| {
            let value: serde_json::Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            imprint::format::status::Envelope::parse(&value)
                .unwrap_or_else(|| panic!("not an event of this build: {json}"))
        })
        .collect()
}

/// Builds the static binary, initramfs and test OS images once per test run.
pub fn artifacts() -> &'static Artifacts {
    static ONCE: OnceLock<Artifacts> = OnceLock::new();
    ONCE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // scripts/test runs qemu/prepare once before the QEMU tier, rather than
        // once in every test's process.
        if std::env::var("IMPRINT_QEMU_PREPARED").as_deref() == Ok("1") {
            return Artifacts {
                dir: root.join("target/qemu"),
            };
        }
        let out = Command::new(root.join("qemu/prepare"))
            .output()
            .expect("running qemu/prepare");
        assert!(
            out.status.success(),
            "qemu/prepare failed (install qemu-system-x86 ovmf linux-image-amd64 busybox-static mtools dosfstools syslinux syslinux-efi, or run scripts/test):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Artifacts {
            dir: root.join("target/qemu"),
        }
    })
}

/// Kinds of stock Debian image (boot/build-debian-os).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debian {
    Stock,
    /// With Debian's cloud-init.
    CloudInit,
    /// Its kernel command line names a root that is not there: it never comes up.
    BrokenRoot,
    /// Built by mkosi the systemd way (boot/build-debian-uki): systemd-boot, a
    /// unified kernel image, the root found by its partition type. UEFI only.
    Uki,
}

/// The Debian image VERSION of `kind` (`qemu/prepare-debian`), built once per
/// test run. Booting writes to
/// a disk: boot a copy (`copy_sparse`).
pub fn debian_image(version: &str, kind: Debian) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, Debian)>> = std::sync::Mutex::new(Vec::new());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (flag, prefix) = match kind {
        Debian::Stock => (None, "debian"),
        Debian::CloudInit => (Some("--cloud-init"), "debian-cloud-init"),
        Debian::BrokenRoot => (Some("--broken-root"), "debian-broken-root"),
        Debian::Uki => (Some("--uki"), "debian-uki"),
    };
    let image = root
        .join("target/qemu")
        .join(format!("{prefix}-{version}.img"));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = (version.to_string(), kind);
    if !built.contains(&key) {
        let mut cmd = Command::new(root.join("qemu/prepare-debian"));
        cmd.args(flag);
        let out = cmd
            .arg(version)
            .output()
            .expect("running qemu/prepare-debian");
        assert!(
            out.status.success(),
            "qemu/prepare-debian {version} failed (needs root, `scripts/deps debian` and the Debian archive while its cache is cold):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        built.push(key);
    }
    image
}

pub struct Boot<'a> {
    pub firmware: &'a str,
    pub vars: Option<&'a Path>,
    pub append: Option<String>,
    pub net: &'a str,
    pub timeout: u64,
    /// Guest memory in MiB.
    pub memory: u32,
    /// A power cut: QEMU is killed (SIGKILL, nothing flushed) as soon as a
    /// console line holds one of these, or `cut_after_ms` later; the exit status
    /// is then 137.
    pub cut_on: &'a [&'a str],
    pub cut_after_ms: u64,
    /// Slow disks: at most this many write requests a second, one figure per
    /// disk in order, the last one for the disks after it (none: no limit).
    pub write_iops: &'a [u32],
    /// Runs QEMU in this network namespace (for `net: "tap:NAME"`).
    pub netns: Option<&'a str>,
    /// The NIC's MAC address (default QEMU's first, 52:54:00:12:34:56).
    pub mac: Option<&'a str>,
    /// A USB stick (writable), first in the boot order.
    pub usb: Option<&'a Path>,
    /// A CD/DVD, first in the boot order.
    pub cdrom: Option<&'a Path>,
    /// The initramfs of a RAM-disk boot (default: the one qemu/prepare built).
    pub initrd: Option<&'a Path>,
    /// QEMU's monitor on this Unix socket (see [`monitor`]).
    pub monitor: Option<&'a Path>,
}

impl Default for Boot<'_> {
    fn default() -> Self {
        Boot {
            firmware: "bios",
            vars: None,
            append: None,
            net: "user",
            timeout: 240,
            memory: 1024,
            cut_on: &[],
            cut_after_ms: 0,
            write_iops: &[],
            netns: None,
            mac: None,
            usb: None,
            cdrom: None,
            initrd: None,
            monitor: None,
        }
    }
}

/// The exit status `qemu/run` gives when it cut the power.
pub const CUT_STATUS: i32 = 137;

/// Runs a VM to completion (power off, reboot or timeout) and returns its exit
/// status and console.
pub fn boot(dir: &Path, name: &str, b: Boot, disks: &[&Path]) -> (ExitStatus, String) {
    let serial = dir.join(format!("{name}.console"));
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu/run");
    let mut cmd = match b.netns {
        Some(netns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns]).arg(run);
            c
        }
        None => Command::new(run),
    };
    cmd.args(["--serial", serial.to_str().unwrap()])
        .args(["--timeout", &b.timeout.to_string()])
        .args(["--firmware", b.firmware, "--net", b.net])
        .args(["--memory", &b.memory.to_string()]);
    if let Some(v) = b.vars {
        cmd.args(["--vars", v.to_str().unwrap()]);
    }
    if let Some(mac) = b.mac {
        cmd.args(["--mac", mac]);
    }
    if let Some(usb) = b.usb {
        cmd.args(["--usb", usb.to_str().unwrap()]);
    }
    if let Some(cdrom) = b.cdrom {
        cmd.args(["--cdrom", cdrom.to_str().unwrap()]);
    }
    if let Some(socket) = b.monitor {
        cmd.args(["--monitor", socket.to_str().unwrap()]);
    }
    for text in b.cut_on {
        cmd.args(["--cut-on", text]);
    }
    if !b.cut_on.is_empty() {
        cmd.args(["--cut-after-ms", &b.cut_after_ms.to_string()]);
    }
    if !b.write_iops.is_empty() {
        let iops: Vec<String> = b.write_iops.iter().map(u32::to_string).collect();
        cmd.args(["--write-iops", &iops.join(",")]);
    }
    if let Some(append) = &b.append {
        // Only a RAM-disk boot needs the deploy environment built.
        let a = artifacts();
        let initrd = b
            .initrd
            .map_or_else(|| a.path("initramfs.img"), |p| p.display().to_string());
        cmd.args(["--kernel", &a.path("vmlinuz"), "--initrd", &initrd])
            .args(["--append", append]);
    }
    cmd.args(disks);
    let status = cmd.status().expect("running qemu/run");
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    (status, console)
}

/// Sends `command` to the monitor of a VM started with `Boot::monitor`
/// (waiting for the socket to appear).
pub fn monitor(socket: &Path, command: &str) {
    use std::io::Write;
    let start = std::time::Instant::now();
    let mut conn = loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(30),
                    "QEMU's monitor {}: {e}",
                    socket.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    writeln!(conn, "{command}").unwrap();
    // Its prompt comes once on connecting, and again once the command ran.
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&said).matches("(qemu)").count() < 2 {
        match std::io::Read::read(&mut conn, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn cmdline(url: &str, extra: &str) -> String {
    let guest_url = url.replace("127.0.0.1", "10.0.2.2");
    format!("console=ttyS0 quiet panic=-1 imprint.repo={guest_url} {extra}")
}

/// A figure of the deploy's summary line on a console.
pub fn summary_figure(console: &str, key: &str) -> u64 {
    figure_of_line(console, "deploy complete:", key)
}

/// A figure (`KEY=N`) of the first console line holding `marker`.
pub fn figure_of_line(console: &str, marker: &str, key: &str) -> u64 {
    console
        .lines()
        .find(|l| l.contains(marker))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in the {marker:?} line:\n{console}"))
}

/// Some line of the console holds every one of `parts`.
pub fn assert_line(console: &str, parts: &[&str]) {
    assert!(
        console.lines().any(|l| parts.iter().all(|p| l.contains(p))),
        "no console line holds all of {parts:?}:\n{console}"
    );
}

pub fn assert_has(console: &str, needle: &str) {
    assert!(
        console.contains(needle),
        "console lacks {needle:?}:\n{console}"
    );
}

/// When the deploy environment started the installed OS by kexec of `kernel`
/// (a path, or the start of one): seconds after its own kernel started.
pub fn kexec_seconds(console: &str, kernel: &str) -> f64 {
    let prefix = format!("starting the installed OS by kexec of {kernel}");
    console
        .lines()
        .find_map(|l| {
            let (_, after) = l.split_once(&prefix)?;
            after
                .split(" at ")
                .nth(1)?
                .strip_suffix(" s")?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no kexec of {kernel} in:\n{console}"))
}
