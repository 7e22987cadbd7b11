//! The deploy engine against a server that misbehaves: dropped connections, 500s,
//! truncated bodies, flipped bytes, wrong content and stalls. A target that checks
//! every write against the true image shows that nothing unverified is ever written.

mod common;

use common::*;
use imprint::engine::{self, DeployError, DeployOptions, Target};
use imprint::format::digest::ImageRef;
use imprint::source::{FetchError, HttpSource, RetryPolicy, SystemResolver};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A disk in memory that records any write that differs from the image it should
/// end up holding.
struct CheckingTarget {
    truth: Vec<u8>,
    disk: Mutex<Vec<u8>>,
    bad_writes: Mutex<Vec<u64>>,
    writes: Mutex<u64>,
}

impl CheckingTarget {
    fn new(truth: Vec<u8>, initial: Vec<u8>) -> Self {
        CheckingTarget {
            truth,
            disk: Mutex::new(initial),
            bad_writes: Mutex::new(Vec::new()),
            writes: Mutex::new(0),
        }
    }
}

impl Target for CheckingTarget {
    fn size(&self) -> u64 {
        self.disk.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let disk = self.disk.lock().unwrap();
        buf.copy_from_slice(&disk[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        if self.truth[at..at + buf.len()] != *buf {
            self.bad_writes.lock().unwrap().push(offset);
        }
        *self.writes.lock().unwrap() += 1;
        self.disk.lock().unwrap()[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let (at, len) = (offset as usize, len as usize);
        if self.truth[at..at + len].iter().any(|&b| b != 0) {
            self.bad_writes.lock().unwrap().push(offset);
        }
        self.disk.lock().unwrap()[at..at + len].fill(0);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "memory disk".into()
    }
}

fn source(url: &str, timeout: Duration) -> HttpSource {
    HttpSource::new(url, Arc::new(SystemResolver), timeout, 4, None).unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 6,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
    }
}

#[test]
fn every_fault_is_survived_and_nothing_corrupt_is_written() {
    let repo = Repo::new();
    let image = mixed_image(30, 120);
    repo.add("os:v1", &image, &[]);
    // Each chunk fails a varying number of times (0-3) in a varying way; refs and
    // manifests are served cleanly so the faults land on chunk data.
    let kinds = [
        Fault::Drop,
        Fault::ServerError,
        Fault::Truncate,
        Fault::FlipByte,
        Fault::WrongContent,
        Fault::Stall,
    ];
    let plan = Arc::new(move |path: &str, attempt: u64| {
        if !path.starts_with("chunks/") {
            return Fault::None;
        }
        let seed = path.bytes().rev().nth(1).unwrap_or(0) as u64 + path.len() as u64;
        let failures = seed % 4;
        if attempt < failures {
            kinds[((seed + attempt) % kinds.len() as u64) as usize]
        } else {
            Fault::None
        }
    });
    let server = FaultyServer::start(
        &repo.path(),
        plan,
        Duration::ZERO,
        Duration::from_millis(1500),
    );
    let src = source(&server.url, Duration::from_millis(500));
    let image_ref: ImageRef = "os:v1".parse().unwrap();
    let resolved = engine::resolve(&src, &image_ref, None, &fast_retry()).unwrap();
    // Start from stale non-zero data so zero chunks must be written too.
    let target = CheckingTarget::new(image.clone(), noise(1, image.len()));
    let opts = DeployOptions {
        jobs: 4,
        retry: fast_retry(),
        ..DeployOptions::default()
    };
    let progress = engine::deploy(&src, &resolved.manifest, &target, &opts, &|_| {}).unwrap();

    let injected = server.injected();
    for kind in kinds {
        assert!(
            injected.iter().any(|(_, f)| *f == kind),
            "{kind:?} never injected"
        );
    }
    assert!(
        progress.retries >= injected.len() as u64,
        "{} retries, {} faults",
        progress.retries,
        injected.len()
    );
    assert_eq!(
        *target.disk.lock().unwrap(),
        image,
        "disk ends byte-identical"
    );
    assert!(
        target.bad_writes.lock().unwrap().is_empty(),
        "unverified data written"
    );
    assert!(*target.writes.lock().unwrap() > 0);
}

#[test]
fn a_chunk_that_is_always_corrupt_fails_the_deploy_and_is_never_written() {
    let repo = Repo::new();
    let image = mixed_image(31, 40);
    repo.add("os:v1", &image, &[]);
    let mut chunk_files: Vec<String> = Vec::new();
    for shard in std::fs::read_dir(repo.path().join("chunks/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            chunk_files.push(
                p.strip_prefix(repo.path())
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    chunk_files.sort();
    let poisoned = chunk_files[0].clone();
    let p = poisoned.clone();
    let plan = Arc::new(move |path: &str, _| {
        if path == p {
            Fault::FlipByte
        } else {
            Fault::None
        }
    });
    let server = FaultyServer::start(&repo.path(), plan, Duration::ZERO, Duration::ZERO);
    let src = source(&server.url, Duration::from_secs(5));
    let resolved = engine::resolve(&src, &"os:v1".parse().unwrap(), None, &fast_retry()).unwrap();
    let target = CheckingTarget::new(image.clone(), vec![0; image.len()]);
    let opts = DeployOptions {
        jobs: 2,
        retry: fast_retry(),
        ..DeployOptions::default()
    };
    let err = engine::deploy(&src, &resolved.manifest, &target, &opts, &|_| {}).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, DeployError::Fetch(FetchError::GaveUp { .. })),
        "{text}"
    );
    assert!(
        text.contains(poisoned.rsplit('/').next().unwrap()),
        "{text}"
    );
    assert!(target.bad_writes.lock().unwrap().is_empty());
    let hits = server.injected().len() as u64;
    assert_eq!(
        hits,
        fast_retry().attempts as u64,
        "retried exactly the policy's attempts"
    );
}

#[test]
fn not_found_and_denied_fail_at_once() {
    let repo = Repo::new();
    let image = mixed_image(32, 10);
    repo.add("os:v1", &image, &[]);
    let server = FaultyServer::start(
        &repo.path(),
        Arc::new(|_: &str, _| Fault::None),
        Duration::ZERO,
        Duration::ZERO,
    );
    let src = source(&server.url, Duration::from_secs(5));
    let err = engine::resolve(
        &src,
        &"os:nope".parse().unwrap(),
        None,
        &RetryPolicy::default(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, DeployError::Fetch(FetchError::NotFound { .. })),
        "{err}"
    );
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "no retries on 404"
    );

    // A server that is not there: connection refused is retried, then given up.
    let dead = source("http://127.0.0.1:9", Duration::from_millis(200));
    let err = engine::resolve(&dead, &"os:v1".parse().unwrap(), None, &fast_retry())
        .err()
        .unwrap();
    assert!(
        matches!(err, DeployError::Fetch(FetchError::GaveUp { .. })),
        "{err}"
    );
}

#[test]
fn a_seed_disk_supplies_unchanged_chunks_and_never_wrong_ones() {
    let repo = Repo::new();
    let v1 = mixed_image(33, 100);
    let mut v2 = v1.clone();
    // 5 chunks change; the seed (v1) also has one chunk damaged that v2 did not
    // change, which must then be fetched, not copied.
    for c in [3, 20, 41, 60, 88] {
        v2[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&noise(900 + c as u64, CHUNK));
    }
    repo.add("os:v2", &v2, &[]);
    let mut seed_bytes = v1.clone();
    seed_bytes[10 * CHUNK + 7] ^= 0x40;
    let seed = CheckingTarget::new(seed_bytes.clone(), seed_bytes);
    let server = FaultyServer::start(
        &repo.path(),
        Arc::new(|_: &str, _| Fault::None),
        Duration::ZERO,
        Duration::ZERO,
    );
    let src = source(&server.url, Duration::from_secs(5));
    let resolved = engine::resolve(&src, &"os:v2".parse().unwrap(), None, &fast_retry()).unwrap();
    let target = CheckingTarget::new(v2.clone(), vec![0; v2.len()]);
    let p = engine::deploy_with_seed(
        &src,
        &resolved.manifest,
        &target,
        Some(&seed),
        &DeployOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(*target.disk.lock().unwrap(), v2);
    assert!(target.bad_writes.lock().unwrap().is_empty());
    assert_eq!(p.chunks_fetched, 6, "5 changed + 1 damaged on the seed");
    let data_chunks = v2
        .chunks(CHUNK)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64;
    assert_eq!(p.chunks_seeded, data_chunks - 6);
    assert_eq!(
        p.seeded_bytes,
        p.chunks_seeded * CHUNK as u64 - CHUNK as u64 + 1000
    );
}

/// Over plain HTTP each connection carries the next chunk's request while the
/// server still answers the one before (pipelining): a server that holds each
/// answer until the next request comes (or half a second has passed) finds it
/// waiting, except for a connection's last chunks. Every chunk still lands
/// verified, and only chunks the target lacks are asked for.
#[test]
fn chunks_are_requested_ahead_on_each_connection() {
    let repo = Repo::new();
    let v1 = mixed_image(34, 60);
    let mut v2 = v1.clone();
    for c in (0..60).step_by(4) {
        v2[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&noise(700 + c as u64, CHUNK));
    }
    repo.add("os:v2", &v2, &[]);
    let server = FaultyServer::start_holding(&repo.path(), Duration::from_millis(500));
    let src = source(&server.url, Duration::from_secs(5));
    let resolved = engine::resolve(&src, &"os:v2".parse().unwrap(), None, &fast_retry()).unwrap();
    let target = CheckingTarget::new(v2.clone(), v1.clone());
    let opts = DeployOptions {
        jobs: 2,
        retry: fast_retry(),
        ..DeployOptions::default()
    };
    let before = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    let p = engine::deploy(&src, &resolved.manifest, &target, &opts, &|_| {}).unwrap();
    assert_eq!(*target.disk.lock().unwrap(), v2);
    assert!(target.bad_writes.lock().unwrap().is_empty());
    let changed = (0..60).step_by(4).count() as u64;
    assert_eq!(p.chunks_fetched, changed, "{p:?}");
    let requests = server.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(requests, changed, "one request per changed chunk");
    let pipelined = server.pipelined.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        pipelined >= changed / 2,
        "{pipelined} of {changed} answers had the next request waiting"
    );
}
