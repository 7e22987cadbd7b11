//! Shared helpers for host integration tests: sample images, the `imprint` binary,
//! a running `imprint serve`, and a fault-injecting HTTP server ([`faulty`]).
#![allow(dead_code)]

pub mod capture;
pub mod disks;
pub mod faulty;
pub mod machine;
pub mod raw;
pub mod rig;
pub mod servers;
pub mod vm;

// Not every test uses it.
#[allow(unused_imports)]
pub use faulty::*;
#[allow(unused_imports)]
pub use raw::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_imprint");
pub const CHUNK: usize = 64 << 10;

/// Partitions the disk image at `path` by the sfdisk `script` (sfdisk from fdisk).
pub fn sfdisk(path: &Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script:?}");
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An image of `chunks` 64 KiB chunks: a mix of random, compressible and zero
/// chunks, with a tail that is not a whole chunk.
pub fn mixed_image(seed: u64, chunks: usize) -> Vec<u8> {
    let mut img = Vec::with_capacity(chunks * CHUNK);
    for i in 0..chunks {
        match i % 10 {
            0..=3 => img.extend(noise(seed * 1000 + i as u64, CHUNK)),
            4..=6 => {
                let line = format!("line {i} of a compressible chunk, seed {seed}\n");
                img.extend(line.bytes().cycle().take(CHUNK));
            }
            _ => img.extend(std::iter::repeat_n(0u8, CHUNK)),
        }
    }
    img.extend(noise(seed + 77, 1000));
    img
}

pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds `image` as `reference`, returning the manifest digest.
    pub fn add(&self, reference: &str, image: &[u8], extra: &[&str]) -> String {
        let img = self.file(&format!("{}.img", reference.replace(':', "_")));
        std::fs::write(&img, image).expect("write image");
        let repo = self.path();
        let mut args = vec![
            "image",
            "add",
            "--repo",
            repo.to_str().unwrap(),
            reference,
            img.to_str().unwrap(),
            "--chunk-size",
            "64K",
        ];
        args.extend_from_slice(extra);
        let out = imprint(&args);
        assert_success(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .expect("digest in output")
            .to_string()
    }
}

pub fn imprint(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running imprint")
}

/// What `imprint image ls` prints of `repo`.
pub fn image_ls(repo: &Repo) -> String {
    stdout_of(&imprint(&[
        "image",
        "ls",
        "--repo",
        repo.path().to_str().unwrap(),
    ]))
}

/// What `imprint image inspect` prints of `reference` in `repo`.
pub fn image_inspect(repo: &Repo, reference: &str) -> String {
    stdout_of(&imprint(&[
        "image",
        "inspect",
        "--repo",
        repo.path().to_str().unwrap(),
        reference,
    ]))
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "imprint failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `key=value` figures of a deploy's summary line.
pub fn summary(out: &Output) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("deploy complete:"))
        .unwrap_or_else(|| panic!("no summary in {stdout:?} / {}", stderr_of(out)));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn figure(summary: &HashMap<String, String>, key: &str) -> u64 {
    summary[key].parse().expect("numeric figure")
}

/// The operator's token every server the tests start has
/// (`--operator-token-file`, unless a test gives its own).
pub const OPERATOR_TOKEN: &str = "the-tests-operator-token-0123456789";

/// A file holding [`OPERATOR_TOKEN`], as `imprint serve` and `imprint host`
/// read it.
pub fn operator_token_file() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-token");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(&format!("{OPERATOR_TOKEN}\n")) {
        // Renamed into place: tests starting servers at once never read half of it.
        let tmp = path.with_extension(format!("{}", std::process::id()));
        std::fs::write(&tmp, format!("{OPERATOR_TOKEN}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// A GET the operator sends (with the token), answered whole.
pub fn operator_get(addr: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    raw_request(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// `imprint host reprovision MAC` against `served`, with the operator token
/// in `token_file`.
/// `imprint host show MAC` against `served`, as its operator.
pub fn host_show(served: &Served, mac: &str, token_file: &Path) -> Output {
    imprint(&[
        "host",
        "show",
        mac,
        "--server",
        &served.url,
        "--token-file",
        token_file.to_str().unwrap(),
    ])
}

pub fn reprovision(served: &Served, mac: &str, token_file: &Path) -> Output {
    imprint(&[
        "host",
        "reprovision",
        mac,
        "--server",
        &served.url,
        "--token-file",
        token_file.to_str().unwrap(),
    ])
}

/// A signing key in the repository's directory: its file and public key.
pub fn keygen(repo: &Repo) -> (PathBuf, String) {
    let key = repo.file("key");
    let out = imprint(&["keygen", "--out", key.to_str().unwrap()]);
    assert_success(&out);
    (key, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `imprint serve` on a free loopback port, killed on drop.
pub struct Served {
    child: Child,
    pub url: String,
}

impl Served {
    pub fn start(repo: &Path) -> Served {
        Served::start_with(repo, &[], None, Stdio::null())
    }

    /// With more `serve` options, optionally under `prlimit` (e.g.
    /// `--nofile=256:256`), its log going to `stderr`.
    pub fn start_with(
        repo: &Path,
        options: &[&str],
        prlimit: Option<&str>,
        stderr: Stdio,
    ) -> Served {
        let cmd = match prlimit {
            Some(limit) => {
                let mut c = Command::new("prlimit");
                c.arg(limit).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        Served::spawn(cmd, repo, "127.0.0.1:0", options, stderr)
    }

    /// With `options` alone: no operator token unless they give one.
    pub fn start_with_own_token(repo: &Path, options: &[&str]) -> Served {
        Served::spawn_as(
            Command::new(BIN),
            repo,
            "127.0.0.1:0",
            options,
            Stdio::null(),
            false,
        )
    }

    /// Listening on `listen` (a fixed address, e.g. to start again on it).
    pub fn start_at(repo: &Path, listen: &str, options: &[&str]) -> Served {
        Served::spawn(Command::new(BIN), repo, listen, options, Stdio::null())
    }

    /// In the network namespace `netns`, listening on `listen`.
    pub fn start_in_netns(netns: &str, repo: &Path, listen: &str) -> Served {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, BIN]);
        Served::spawn(cmd, repo, listen, &[], Stdio::null())
    }

    fn spawn(cmd: Command, repo: &Path, listen: &str, options: &[&str], stderr: Stdio) -> Served {
        Served::spawn_as(cmd, repo, listen, options, stderr, true)
    }

    /// Starts `cmd` as `imprint serve`, with the tests' operator token when
    /// `test_token` and the options give none.
    fn spawn_as(
        mut cmd: Command,
        repo: &Path,
        listen: &str,
        options: &[&str],
        stderr: Stdio,
        test_token: bool,
    ) -> Served {
        cmd.args([
            "serve",
            "--repo",
            repo.to_str().unwrap(),
            "--listen",
            listen,
        ]);
        if test_token && !options.contains(&"--operator-token-file") {
            cmd.arg("--operator-token-file").arg(operator_token_file());
        }
        let mut child = cmd
            .args(options)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning imprint serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("reading serve banner");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
            .to_string();
        Served { child, url }
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// The read end of the server's log pipe, when started with one.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends the server process `signal`.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// The server's exit status, if it ends within `wait`.
    pub fn exit_within(&mut self, wait: std::time::Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < wait {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The most resident memory the server has had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.memory_kib("VmHWM:")
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.memory_kib("VmRSS:")
    }

    /// A figure of the server's /proc/PID/status, in KiB.
    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count()` once it has reached `want`, or as it is after 5 s: a server logs a
/// request just after its answer went out, so a client done with the answer may
/// look before the line is there.
pub fn count_settled(want: usize, count: impl Fn() -> usize) -> usize {
    let start = std::time::Instant::now();
    loop {
        let n = count();
        if n >= want || start.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many of `image`'s `chunk`-sized pieces that are not all zeros `disk` does
/// not hold at the same offset: what a deploy onto it must fetch.
pub fn missing_data_chunks(image: &[u8], disk: &[u8], chunk: usize) -> u64 {
    image
        .chunks(chunk)
        .enumerate()
        .filter(|(i, want)| {
            want.iter().any(|&b| b != 0)
                && disk.get(i * chunk..i * chunk + want.len()) != Some(*want)
        })
        .count() as u64
}
