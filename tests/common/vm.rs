//! The QEMU rig from tests: artifacts, booting VMs, reading what they left on disk.

use super::*;
use imprint::format::gpt;
use imprint::format::state;
use imprint::statepart;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

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

const NGINX: &str = "/usr/sbin/nginx";

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

/// Debian's nginx serving a directory as plain static files on a loopback
/// port, with its own configuration and logs: a repository published as most
/// are, on a web server (or a CDN) that knows nothing of imprint.
pub struct Nginx {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub url: String,
}

impl Nginx {
    pub fn start(root: &Path) -> Nginx {
        Nginx::start_with(root, None)
    }

    /// Over HTTPS with `tls` (certificate chain, key).
    pub fn start_tls(root: &Path, tls: (&Path, &Path)) -> Nginx {
        Nginx::start_with(root, Some(tls))
    }

    fn start_with(root: &Path, tls: Option<(&Path, &Path)>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             user root root;\nevents {{ worker_connections 256; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n\
               sendfile on;\n\
               log_format requests '$remote_addr \"$request\" $status $pipe $connection';\n\
               access_log {d}/access.log requests;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port}{}; root {}; {} }}\n}}\n",
            if tls.is_some() { " ssl" } else { "" },
            root.display(),
            tls.map(|(cert, key)| format!(
                "ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            ))
            .unwrap_or_default()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, "nginx", &dir.path().join("error.log"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        Nginx {
            child,
            dir,
            url: format!("{scheme}://{addr}"),
        }
    }

    /// The request lines ("GET /path HTTP/1.1") it has logged so far.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter_map(|l| Some(l.split('"').nth(1)?.to_string()))
            .collect()
    }

    /// How many requests it has logged for paths containing `path_part`.
    pub fn requested(&self, path_part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains(path_part))
            .count()
    }

    /// Requests for `path_part` that nginx found already waiting on their
    /// connection when it finished the one before (HTTP/1.1 pipelining).
    pub fn pipelined(&self, path_part: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.contains(path_part))
            .filter(|l| {
                l.rsplit('"')
                    .next()
                    .and_then(|t| t.split_whitespace().nth(1))
                    == Some("p")
            })
            .count()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; a server started at once
/// gets it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (30 s at most) for a server just started to accept on `addr`; on a
/// timeout fails with its log.
pub fn wait_listening(addr: &str, server: &str, log: &Path) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{server} did not listen on {addr}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends a server: terminated, not killed, so a master process takes its
/// workers with it.
pub fn terminate(child: &mut std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = child.wait();
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

/// Copies a disk image keeping its holes (std::fs::copy would fill them).
pub fn copy_sparse(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .args([from, to])
        .status()
        .expect("running cp");
    assert!(
        status.success(),
        "cp {} {}: {status:?}",
        from.display(),
        to.display()
    );
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

/// `imprint serve --hosts` for network boots, on `listen` (a free port when
/// `None`): the inventory `inventory` (TOML, written next to the repository),
/// the deploy environment's kernel and initramfs, the machines kept under
/// the repository's directory. Returns the server and the `qemu/run --net`
/// that network-boots from it.
pub fn provisioning_server(repo: &Repo, inventory: &str, listen: Option<&str>) -> (Served, String) {
    provisioning_server_with(repo, inventory, listen, &[])
}

/// [`provisioning_server`] with more `serve` options.
pub fn provisioning_server_with(
    repo: &Repo,
    inventory: &str,
    listen: Option<&str>,
    extra: &[&str],
) -> (Served, String) {
    let a = artifacts();
    let dir = repo.dir.path();
    let hosts = dir.join("hosts.toml");
    std::fs::write(&hosts, inventory).unwrap();
    let data = dir.join("data");
    let (kernel, initrd) = (a.path("vmlinuz"), a.path("initramfs.img"));
    let mut options = vec![
        "--hosts",
        hosts.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
    ];
    options.extend_from_slice(extra);
    std::fs::create_dir_all(repo.path()).unwrap();
    let served = match listen {
        Some(addr) => Served::start_at(&repo.path(), addr, &options),
        None => Served::start_with(&repo.path(), &options, None, Stdio::null()),
    };
    let net = format!(
        "user-boot:{}/boot.ipxe",
        served.url.replace("127.0.0.1", "10.0.2.2")
    );
    (served, net)
}

/// What the provisioning server says of machine `mac` (`GET /machines`).
pub fn machine_entry(served: &Served, mac: &str) -> serde_json::Value {
    let (status, _, body) = operator_get(&served.addr(), "/machines");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    doc["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac)
        .cloned()
        .unwrap_or_else(|| panic!("{mac} not in {doc}"))
}

/// Adds an image with the default (1 MiB) chunk size; returns the manifest digest.
pub fn add(repo: &Repo, reference: &str, image: &str) -> String {
    add_with(repo, reference, image, &[])
}

/// [`add`] with more arguments to `image add` (`--chunk-size 16M`, ...).
pub fn add_with(repo: &Repo, reference: &str, image: &str, extra: &[&str]) -> String {
    let repo_path = repo.path();
    let mut args = vec![
        "image",
        "add",
        "--repo",
        repo_path.to_str().unwrap(),
        reference,
        image,
    ];
    args.extend_from_slice(extra);
    let out = imprint(&args);
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("digest")
        .to_string()
}

pub fn chunk_files(repo: &Repo) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(repo.path().join("chunks/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

pub fn cmdline(url: &str, extra: &str) -> String {
    let guest_url = url.replace("127.0.0.1", "10.0.2.2");
    format!("console=ttyS0 quiet panic=-1 imprint.repo={guest_url} {extra}")
}

pub fn sparse_disk(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// `count` blank 3 GiB disks, `disk1.img`... in the repository's directory:
/// room for the stock Debian images.
pub fn blank_disks(repo: &Repo, count: usize) -> Vec<PathBuf> {
    (1..=count)
        .map(|i| {
            let d = repo.file(&format!("disk{i}.img"));
            sparse_disk(&d, 3 << 30);
            d
        })
        .collect()
}

pub fn read_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The deployed disk holds the image everywhere except the GPT headers and the
/// state partition, which the deploy environment rewrites; the state record and
/// the relocated GPT read back.
pub fn check_deployed_disk(disk: &Path, image: &[u8], digest: &str, hostname: Option<&str>) {
    let mut f = std::fs::File::open(disk).unwrap();
    let disk_size = f.metadata().unwrap().len();
    let layout = gpt::read(&mut f)
        .unwrap()
        .expect("a GPT on the deployed disk");
    assert_eq!(
        layout.last_usable_lba,
        disk_size / 512 - 34,
        "GPT moved to the disk's end"
    );
    let mut backup = [0u8; 512];
    f.seek(SeekFrom::Start(disk_size - 512)).unwrap();
    f.read_exact(&mut backup).unwrap();
    assert_eq!(
        &backup[..8],
        b"EFI PART",
        "backup GPT header at the last sector"
    );

    let state_part = statepart::find(&layout).expect("state partition");
    let (start, len) = statepart::byte_range(&layout, state_part);
    let end = start + len;
    let mut on_disk = vec![0u8; image.len()];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut on_disk).unwrap();
    assert_eq!(&on_disk[..440], &image[..440], "boot code");
    let gpt_end = 34 * 512;
    for (i, (a, b)) in on_disk.iter().zip(image).enumerate().skip(gpt_end) {
        let in_state = (i as u64) >= start && (i as u64) < end;
        if !in_state && a != b {
            panic!("deployed disk differs from the image at byte {i}");
        }
    }
    let mut window = vec![0u8; (end - start) as usize];
    f.seek(SeekFrom::Start(start)).unwrap();
    f.read_exact(&mut window).unwrap();
    let (record, _) = state::read(&mut std::io::Cursor::new(window)).expect("state record");
    assert_eq!(record.mode, state::Mode::Deploy);
    assert_eq!(record.image_digest.to_string(), digest);
    assert_eq!(
        record.settings.get("hostname").map(String::as_str),
        hostname
    );
}

/// Disk 1's bytes, less its first sector and its state partition: what an upgrade
/// must leave alone.
pub fn untouchable(disk: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut bytes).unwrap();
    bytes[..512].fill(0);
    let p = statepart::find(&layout).unwrap();
    let (start, len) = statepart::byte_range(&layout, p);
    bytes[start as usize..(start + len) as usize].fill(0);
    bytes
}

/// A figure of the deploy's summary line on a console.
pub fn summary_figure(console: &str, key: &str) -> u64 {
    console
        .lines()
        .find(|l| l.contains("deploy complete:"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in the summary:\n{console}"))
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

pub fn status_of(url: &str) -> serde_json::Value {
    let addr = url.trim_start_matches("http://");
    let (status, _, body) = operator_get(addr, "/status");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// The state record on a disk image.
pub fn read_state(disk: &Path) -> (state::Record, u64) {
    statepart::StateDisk::open(disk.to_str().unwrap())
        .expect("a state partition")
        .read_record()
        .unwrap()
}

/// A file from the ext4 root (partition "root") of a disk image, read with debugfs.
pub fn root_file(disk: &Path, path: &str) -> String {
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let number = layout
        .partitions
        .iter()
        .find(|p| p.name == "root")
        .unwrap()
        .number;
    partition_file(disk, number, path)
}

/// A file from the ext4 file system in partition `number` of a disk image.
pub fn partition_file(disk: &Path, number: u32, path: &str) -> String {
    partition_debugfs(disk, number, &format!("cat {path}"))
}

/// What debugfs prints for `request` (one of its commands) on ext4 partition
/// `number` of `disk`.
pub fn partition_debugfs(disk: &Path, number: u32, request: &str) -> String {
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let p = layout
        .partitions
        .iter()
        .find(|p| p.number == number)
        .unwrap();
    let mut buf = vec![0u8; ((p.last_lba - p.first_lba + 1) * 512) as usize];
    f.seek(SeekFrom::Start(p.first_lba * 512)).unwrap();
    f.read_exact(&mut buf).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.img");
    std::fs::write(&img, buf).unwrap();
    let out = Command::new("debugfs")
        .args(["-R", request, img.to_str().unwrap()])
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A digest of a disk image's bytes except its first sector (the boot record)
/// and its state partition: what an upgrade must leave as it was on the
/// previous disk. Streams, holes and all, so multi-GiB images are fine.
pub fn untouchable_digest(disk: &Path) -> [u8; 32] {
    use sha2::Digest as _;
    use std::io::Read;
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let p = statepart::find(&layout).unwrap();
    let (start, len) = statepart::byte_range(&layout, p);
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (from, to) in [(0, 512), (start, start + len)] {
            let (a, b) = (from.max(at), to.min(at + n as u64));
            if a < b {
                buf[(a - at) as usize..(b - at) as usize].fill(0);
            }
        }
        hash.update(&buf[..n]);
        at += n as u64;
    }
    hash.finalize().into()
}

/// A static network boot for every machine: the deploy environment's kernel
/// and initramfs copied into the repository's `boot/`, and `boot.ipxe` booting
/// them with `imprint.repo=` the server at `url` (as the guest reaches it) and
/// `args`. Returns the `qemu/run --net` that network-boots from it.
pub fn static_boot_script(repo: &Repo, url: &str, args: &str) -> String {
    let a = artifacts();
    let boot_dir = repo.path().join("boot");
    std::fs::create_dir_all(&boot_dir).unwrap();
    std::fs::copy(a.path("vmlinuz"), boot_dir.join("vmlinuz")).unwrap();
    std::fs::copy(a.path("initramfs.img"), boot_dir.join("initramfs.img")).unwrap();
    let url = url.replace("127.0.0.1", "10.0.2.2");
    std::fs::write(
        repo.path().join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel {url}/boot/vmlinuz initrd=initramfs.img console=ttyS0 quiet panic=-1 \
             imprint.repo={url} {args}\ninitrd {url}/boot/initramfs.img\nboot\n"
        ),
    )
    .unwrap();
    format!("user-boot:{url}/boot.ipxe")
}

/// Boots `disk` (BIOS) from the network `net`, which must power the VM off or
/// reboot it within ten minutes; returns the console.
pub fn boot_from_network(dir: &Path, name: &str, net: &str, disk: &Path) -> String {
    let (status, c) = boot(
        dir,
        name,
        Boot {
            net,
            timeout: 600,
            ..Boot::default()
        },
        &[disk],
    );
    assert!(status.success(), "{name}: {status:?}\n{c}");
    c
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

/// A certificate authority made for a test with openssl, and a server
/// certificate it signed for 127.0.0.1 and 10.0.2.2 (the host, as QEMU's
/// guests reach it).
pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA's certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (Debian's openssl package; scripts/deps test installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let subject = format!("/CN=imprint test CA {name}");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=repository",
        ]);
        openssl(&args);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "3",
            "-extfile",
            "server.ext",
        ]);
        TestCa {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            _dir: dir,
        }
    }
}
