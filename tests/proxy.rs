//! Deploys through a stock HTTP cache: Debian's squid, run with its own
//! configuration on loopback, in front of `imprint serve`. With `http_proxy`
//! set, `imprint deploy` asks squid in absolute form; the first deploy fills
//! the cache, the next ones are served from it (squid's own log says so), and
//! every target is byte-identical to the image.

mod common;

use common::vm::*;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Debian's squid as a caching forward proxy on a free loopback port, with
/// room for chunk-sized objects in memory.
struct Squid {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Squid {
    fn start() -> Squid {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let conf = d.join("squid.conf");
        std::fs::write(
            &conf,
            format!(
                "http_port 127.0.0.1:{port}\n\
                 acl loopback src 127.0.0.1/32\n\
                 http_access allow loopback\n\
                 http_access deny all\n\
                 pid_filename {d}/squid.pid\n\
                 coredump_dir {d}\n\
                 cache_log {d}/cache.log\n\
                 access_log stdio:{d}/access.log squid\n\
                 cache_store_log none\n\
                 cache_mem 256 MB\n\
                 maximum_object_size_in_memory 16 MB\n\
                 maximum_object_size 64 MB\n\
                 cache_dir ufs {d}/cache 256 16 256\n\
                 shutdown_lifetime 1 seconds\n",
                d = d.display()
            ),
        )
        .unwrap();
        // squid drops to its own user when started as root.
        let chown = Command::new("chown")
            .args(["-R", "proxy:proxy"])
            .arg(d)
            .status()
            .unwrap();
        assert!(chown.success());
        let init = Command::new("squid")
            .args(["-N", "-z", "-f"])
            .arg(&conf)
            .output()
            .expect("squid (Debian's squid package; scripts/deps test installs it)");
        assert!(
            init.status.success(),
            "squid -z: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let child = Command::new("squid")
            .args(["-N", "-d1", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, "squid", &d.join("cache.log"));
        Squid {
            child,
            dir,
            url: format!("http://{addr}"),
        }
    }

    /// (result code, URL) of every request squid has logged.
    fn log(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(3)?.split('/').next()?.to_string(),
                    f.get(6)?.to_string(),
                ))
            })
            .collect()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn deploy_through(url: &str, proxy: &str, disk: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(["deploy", "--url", url, "--image", "os:v1", "--disk"])
        .arg(disk)
        .env("http_proxy", proxy)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .unwrap()
}

/// Chunk requests squid has logged so far.
fn chunk_lines_logged(squid: &Squid) -> usize {
    squid
        .log()
        .iter()
        .filter(|(_, url)| url.contains("/chunks/sha256/"))
        .count()
}

#[test]
fn deploys_through_squid_are_served_from_its_cache_after_the_first() {
    if !squid_available() {
        return;
    }
    let repo = Repo::new();
    let image = mixed_image(11, 24);
    repo.add("os:v1", &image, &[]);
    let served = Served::start(&repo.path());
    let squid = Squid::start();
    let chunks = chunk_files(&repo).len();
    assert!(chunks > 4);

    for (i, run) in ["first", "second", "third"].iter().enumerate() {
        let disk = repo.file(&format!("{run}.img"));
        let out = deploy_through(&served.url, &squid.url, &disk);
        assert_success(&out);
        assert_eq!(std::fs::read(&disk).unwrap(), image, "{run}");
        count_settled(chunks * (i + 1), || chunk_lines_logged(&squid));
        let log = squid.log();
        let chunk_lines: Vec<&(String, String)> = log
            .iter()
            .filter(|(_, url)| url.contains("/chunks/sha256/"))
            .collect();
        // Absolute-form GETs of every chunk, once per deploy.
        assert_eq!(chunk_lines.len(), chunks * (i + 1), "{run}: {log:?}");
        let hits = chunk_lines
            .iter()
            .filter(|(code, _)| code.contains("HIT"))
            .count();
        assert_eq!(
            hits,
            chunks * i,
            "{run}: chunks served from the cache: {log:?}"
        );
    }
    // The refs were revalidated, not refetched whole, once cached.
    assert!(
        squid
            .log()
            .iter()
            .any(|(code, url)| url.contains("/refs/os/v1") && code.contains("REFRESH")),
        "{:?}",
        squid.log()
    );
}

/// The deploy environment with `imprint.proxy=`: its chunks come from squid's
/// cache, which a host deploy of the same image filled.
#[test]
fn the_deploy_environment_fetches_through_the_proxy_it_is_given() {
    require_qemu!();
    if !squid_available() {
        return;
    }
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    let served = Served::start(&repo.path());
    let squid = Squid::start();
    let warm = repo.file("warm.img");
    assert_success(&deploy_through(&served.url, &squid.url, &warm));
    // Every chunk of the warm deploy logged before the count is taken.
    count_settled(chunk_files(&repo).len(), || chunk_lines_logged(&squid));
    let before = squid.log().len();

    let dir = repo.dir.path();
    let disk = dir.join("disk.img");
    sparse_disk(&disk, 256 << 20);
    // The repository's URL is squid's view of it (the guest could not reach
    // 127.0.0.1): only the proxy is reachable, as behind a corporate proxy.
    let (status, c) = boot(
        dir,
        "proxied",
        Boot {
            append: Some(format!(
                "console=ttyS0 quiet panic=-1 imprint.repo={} imprint.proxy={} imprint.image=os:v1 imprint.disk=/dev/vda",
                served.url,
                squid.url.replace("127.0.0.1", "10.0.2.2")
            )),
            ..Boot::default()
        },
        &[disk.as_path()],
    );
    assert!(status.success(), "{c}");
    assert_has(&c, "install step done: write-head");
    let fetched = summary_figure(&c, "fetched_chunks");
    let log = squid.log();
    let chunks: Vec<&(String, String)> = log[before..]
        .iter()
        .filter(|(_, url)| url.contains("/chunks/sha256/"))
        .collect();
    // Every chunk it asked for came from the cache.
    assert!(fetched > 0);
    assert!(chunks.len() as u64 >= fetched, "{chunks:?}");
    assert!(
        chunks.iter().all(|(code, _)| code.contains("HIT")),
        "{chunks:?}"
    );
}
