//! `imprint serve` under hostile or careless clients: declared lengths and
//! endless headers, more connections than it has descriptors or slots for, one
//! client holding many, slow readers and slow writers. It stays small and keeps
//! serving everyone else.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;

/// A declared length is never what decides an allocation: huge declared bodies
/// that never come are refused, the server stays small and keeps serving.
#[test]
fn a_huge_declared_body_does_not_kill_or_bloat_the_server() {
    let (_repo, mut served, digest) = served_repo();
    let addr = served.addr();
    let manifest = format!("/manifests/sha256/{}", digest.trim_start_matches("sha256:"));
    for request in [
        format!("GET {manifest} HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999\r\n\r\n"),
        "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999\r\n\r\n".to_string(),
        "POST /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let (status, closed) = answer_within(&mut s, std::time::Duration::from_secs(10));
        assert!(
            matches!(status, Some(413) | Some(501)),
            "{request}: {status:?}"
        );
        assert!(closed, "{request}: connection left open");
    }
    assert!(served.alive());
    assert!(served.rss_kib() < 64 << 10, "rss {} KiB", served.rss_kib());
    assert!(get_ok(&addr, &manifest));
}

/// Header lines and counts are bounded: a 1 MiB header line is refused with 431
/// and not buffered.
#[test]
fn an_endless_header_is_refused() {
    let (_repo, mut served, _) = served_repo();
    let addr = served.addr();
    let mut s = TcpStream::connect(&addr).unwrap();
    let mut line = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 1 << 20));
    // The server closes once it has seen enough; the rest of the send may fail.
    let _ = s.write_all(&line);
    let (status, closed) = answer_within(&mut s, std::time::Duration::from_secs(10));
    assert_eq!(status, Some(431));
    assert!(closed);
    assert!(served.alive());
    assert!(served.rss_kib() < 64 << 10, "rss {} KiB", served.rss_kib());
}

/// More idle connections than the server has descriptors for: accepting fails
/// for a while, the server rides it out, and once the idle ones time out it
/// serves again. (Before: ~600 idle connections ended the accept loop for good.)
#[test]
fn idle_connections_beyond_the_descriptor_limit_do_not_stop_the_server() {
    let repo = Repo::new();
    let digest = repo.add("os:v1", &mixed_image(4, 4), &[]);
    let manifest = format!("/manifests/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut served = Served::start_with(
        &repo.path(),
        &[
            "--max-connections",
            "1000",
            "--header-timeout",
            "2",
            "--idle-timeout",
            "2",
        ],
        Some("--nofile=128:128"),
        std::process::Stdio::null(),
    );
    let addr = served.addr();
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() > 128, "only {} connections", idle.len());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(served.alive());
    // The idle connections time out; what waited in the backlog is then
    // accepted and times out in turn. Service comes back.
    let start = std::time::Instant::now();
    while !get_ok(&addr, &manifest) {
        assert!(served.alive());
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "not serving again after idle connections timed out"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(idle);
    assert!(get_ok(&addr, &manifest));
}

/// At the connection limit, new connections get 503 at once instead of
/// waiting; below it again, they are served.
#[test]
fn connections_beyond_the_limit_are_told_to_come_back() {
    let (repo, _, digest) = served_repo();
    let manifest = format!("/manifests/sha256/{}", digest.trim_start_matches("sha256:"));
    let served = Served::start_with(
        &repo.path(),
        &["--max-connections", "4"],
        None,
        std::process::Stdio::null(),
    );
    let addr = served.addr();
    // Each held connection is served (and so counted) once it has had an answer.
    let held: Vec<TcpStream> = (0..4).map(|_| kept_alive(&addr, &manifest)).collect();
    let mut extra = TcpStream::connect(&addr).unwrap();
    let (status, closed) = answer_within(&mut extra, std::time::Duration::from_secs(5));
    assert_eq!(status, Some(503));
    assert!(closed);
    drop(held);
    // Served again once the server has seen the held connections close.
    let start = std::time::Instant::now();
    while !get_ok(&addr, &manifest) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "still refused after the held connections closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One client address cannot take every connection: beyond its share it is
/// told to come back, while another client is served. (Before: one client
/// holding every slot got everyone else 503.)
#[test]
fn one_client_cannot_hold_every_connection() {
    let (repo, _, digest) = served_repo();
    let manifest = format!("/manifests/sha256/{}", digest.trim_start_matches("sha256:"));
    let served = Served::start_with(
        &repo.path(),
        &[
            "--max-connections",
            "8",
            "--max-connections-per-client",
            "3",
        ],
        None,
        std::process::Stdio::null(),
    );
    let addr = served.addr();
    let greedy = [127, 0, 0, 2];
    let held: Vec<TcpStream> = (0..3)
        .map(|_| kept_alive_on(connect_from(greedy, &addr), &manifest))
        .collect();
    let mut extra = connect_from(greedy, &addr);
    let (status, closed) = answer_within(&mut extra, std::time::Duration::from_secs(5));
    assert_eq!(status, Some(503));
    assert!(closed);
    assert!(get_ok(&addr, &manifest), "another client must be served");
    drop(held);
}

/// Many clients that ask for the status table and read the answer slowly (or
/// never) share the server's one copy of it: its memory grows by a few copies
/// of the table at most, not by one per client. (Before: each answer was a
/// copy of its own; twelve such clients took 1.5 GB.)
#[test]
fn slow_readers_share_one_copy_of_the_status_table() {
    let repo = Repo::new();
    std::fs::create_dir_all(repo.path()).unwrap();
    let served = Served::start_with(
        &repo.path(),
        &[
            "--max-connections",
            "200",
            "--max-connections-per-client",
            "200",
        ],
        None,
        std::process::Stdio::null(),
    );
    let addr = served.addr();
    let pad = "x".repeat(12_000);
    for i in 0..2000 {
        let body = format!(r#"{{"target":"m{i}","phase":"writing","pad":"{pad}"}}"#);
        assert_eq!(post_status(&addr, "/status", "", &body), 204);
    }
    let (status, _, table) = operator_get(&addr, "/status");
    assert_eq!(status, 200);
    let table_kib = table.len() as u64 / 1024;
    assert!(table_kib > 20_000, "{table_kib} KiB");
    let before = served.peak_rss_kib();
    // Fifty readers: each has the start of its answer, and reads no more.
    let readers: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\n\r\n"
            )
            .unwrap();
            let mut first = [0u8; 12];
            use std::io::Read;
            s.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            s
        })
        .collect();
    let peak = served.peak_rss_kib();
    let grew = peak.saturating_sub(before);
    let _ = writeln!(
        std::io::stderr(),
        "status table {table_kib} KiB; 50 slow readers: peak resident memory {before} KiB before, {peak} KiB with them (+{grew} KiB)"
    );
    assert!(
        grew < 4 * table_kib,
        "+{grew} KiB for 50 readers of a {table_kib} KiB table"
    );
    drop(readers);
}

/// Slow clients (a header byte now and then) hold only their own connection,
/// and only until the header timeout; everyone else is served meanwhile.
/// (Before: eight slow clients stopped all service.)
#[test]
fn slow_clients_do_not_stop_service() {
    let (repo, _, digest) = served_repo();
    let manifest = format!("/manifests/sha256/{}", digest.trim_start_matches("sha256:"));
    let served = Served::start_with(
        &repo.path(),
        &["--header-timeout", "3"],
        None,
        std::process::Stdio::null(),
    );
    let addr = served.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..32)
        .map(|_| {
            let addr = addr.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                let _ = s.write_all(b"GET / HTTP/1.1\r\n");
                let start = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.write_all(b"X").is_err() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                let (status, closed) = answer_within(&mut s, std::time::Duration::from_secs(1));
                (status, closed, start.elapsed())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..5 {
        assert!(
            get_ok(&addr, &manifest),
            "not served while slow clients wait"
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in slow {
        let (status, closed, _) = t.join().unwrap();
        // Cut off at the header timeout, with 408 when it could still be said.
        assert!(closed || status == Some(408), "{status:?} {closed}");
    }
}
