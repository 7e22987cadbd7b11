//! `imprint serve`: what it serves, what it refuses, and the status endpoint.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

fn setup() -> (Repo, Served, String) {
    let repo = Repo::new();
    let digest = repo.add("os:v1", &mixed_image(20, 20), &[]);
    let served = Served::start(&repo.path());
    (repo, served, digest)
}

#[test]
fn serves_files_with_ranges_and_head() {
    let (repo, served, digest) = setup();
    let hex = digest.trim_start_matches("sha256:");
    let path = format!("/manifests/sha256/{hex}");
    let want = std::fs::read(repo.path().join(&path[1..])).unwrap();
    let addr = served.addr();

    let (status, headers, body) = raw_request(
        &addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert_eq!(body, want);
    assert_eq!(
        header(&headers, "content-length"),
        Some(want.len().to_string().as_str())
    );
    assert!(
        header(&headers, "cache-control")
            .unwrap()
            .contains("immutable")
    );

    let (status, headers, body) = raw_request(
        &addr,
        &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&headers, "content-length"),
        Some(want.len().to_string().as_str())
    );

    let (status, headers, body) = raw_request(
        &addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=3-9\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 206);
    assert_eq!(body, &want[3..10]);
    assert_eq!(
        header(&headers, "content-range"),
        Some(format!("bytes 3-9/{}", want.len()).as_str())
    );

    let (status, _, body) = raw_request(
        &addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=-4\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 206);
    assert_eq!(body, &want[want.len() - 4..]);

    let (status, headers, _) = raw_request(
        &addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes={}-\r\nConnection: close\r\n\r\n",
            want.len()
        ),
    );
    assert_eq!(status, 416);
    assert_eq!(
        header(&headers, "content-range"),
        Some(format!("bytes */{}", want.len()).as_str())
    );

    let (status, headers, body) = raw_request(
        &addr,
        "GET /refs/os/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body).trim(), digest);
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));

    let (status, _, _) = raw_request(
        &addr,
        "GET /refs/os/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
    let (status, _, _) = raw_request(
        &addr,
        "DELETE /refs/os/v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);
}

/// A cache in front of the server (squid, a CDN) revalidates what is not
/// immutable: with the validators a response gave, a conditional request gets
/// `304` and no body, until the file changes.
#[test]
fn conditional_requests_get_304_until_the_file_changes() {
    let repo = Repo::new();
    repo.add("os:v1", &mixed_image(1, 2), &[]);
    let served = Served::start(&repo.path());
    let addr = served.addr();
    let get = |extra: &str| {
        raw_request(
            &addr,
            &format!("GET /refs/os/v1 HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"),
        )
    };
    let (status, headers, first) = get("");
    assert_eq!(status, 200);
    let etag = header(&headers, "etag").unwrap().to_string();
    let modified = header(&headers, "last-modified").unwrap().to_string();
    assert!(modified.ends_with(" GMT"), "{modified}");

    for condition in [
        format!("If-None-Match: {etag}\r\n"),
        format!("If-Modified-Since: {modified}\r\n"),
    ] {
        let (status, headers, body) = get(&condition);
        assert_eq!(status, 304, "{condition}");
        assert!(body.is_empty());
        assert_eq!(header(&headers, "content-length"), None);
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    }
    let (status, _, body) = get("If-None-Match: \"something-else\"\r\n");
    assert_eq!(status, 200);
    assert_eq!(body, first);

    // The ref moves to another image: the old tag no longer matches.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let digest = repo.add("os:v1", &mixed_image(2, 2), &[]);
    let (status, headers, body) = get(&format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body).trim(), digest);
    assert_ne!(header(&headers, "etag"), Some(etag.as_str()));
}

#[test]
fn large_bodies_carry_content_length_over_keep_alive() {
    let (repo, served, _) = setup();
    // The biggest stored chunk: above tiny_http's chunked-encoding threshold.
    let mut chunks = Vec::new();
    for shard in std::fs::read_dir(repo.path().join("chunks/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            chunks.push(f.unwrap().path());
        }
    }
    chunks.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let big = chunks.last().unwrap();
    let want = std::fs::read(big).unwrap();
    assert!(want.len() > 32 << 10);
    let rel = big
        .strip_prefix(repo.path())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    // Three requests on one connection.
    let mut stream = TcpStream::connect(served.addr()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..3 {
        stream
            .write_all(format!("GET /{rel} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let (status, headers, body) = read_response(&mut reader, false);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "transfer-encoding"), None);
        assert_eq!(
            header(&headers, "content-length"),
            Some(want.len().to_string().as_str())
        );
        assert_eq!(body, want);
    }
}

#[test]
fn many_clients_at_once() {
    let (repo, served, digest) = setup();
    let hex = digest.trim_start_matches("sha256:").to_string();
    let want = std::fs::read(repo.path().join("manifests/sha256").join(&hex)).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (addr, hex, want) = (served.addr(), hex.clone(), want.clone());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                for _ in 0..20 {
                    stream
                        .write_all(
                            format!("GET /manifests/sha256/{hex} HTTP/1.1\r\nHost: x\r\n\r\n")
                                .as_bytes(),
                        )
                        .unwrap();
                    let (status, _, body) = read_response(&mut reader, false);
                    assert_eq!(status, 200);
                    assert_eq!(body, want);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn never_serves_outside_the_repository() {
    let (repo, served, _) = setup();
    let secret = repo.file("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    std::os::unix::fs::symlink(&secret, repo.path().join("refs/os/escape")).unwrap();
    std::os::unix::fs::symlink(repo.dir.path(), repo.path().join("chunks/up")).unwrap();
    let addr = served.addr();
    for path in [
        "/../secret.txt",
        "/refs/../../secret.txt",
        "/refs/%2e%2e/%2e%2e/secret.txt",
        "/refs/os/escape",
        "/chunks/up/secret.txt",
        "/./refs/os/v1",
        "//etc/passwd",
    ] {
        let (status, _, body) = raw_request(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(status == 403 || status == 404, "{path}: {status}");
        assert!(
            !String::from_utf8_lossy(&body).contains("top secret"),
            "{path}"
        );
    }
    let (status, _, _) = raw_request(
        &addr,
        "GET /refs/os/escape HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403);
    // A symlink that stays inside the repository is fine.
    std::os::unix::fs::symlink(
        repo.path().join("refs/os/v1"),
        repo.path().join("refs/os/latest"),
    )
    .unwrap();
    let (status, _, _) = raw_request(
        &addr,
        "GET /refs/os/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
}

#[test]
fn status_events_keep_the_latest_per_target() {
    let (_repo, served, _) = setup();
    let addr = served.addr();
    let post = |body: &str| {
        raw_request(
            &addr,
            &format!(
                "POST /status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .0
    };
    assert_eq!(post(r#"{"target":"m1","phase":"booted"}"#), 204);
    assert_eq!(post(r#"{"target":"m1","phase":"writing","bytes":10}"#), 204);
    assert_eq!(post(r#"{"target":"m2","phase":"failed","error":"x"}"#), 204);
    assert_eq!(post(r#"{"phase":"anonymous"}"#), 204);
    assert_eq!(post("not json"), 400);
    assert_eq!(post("[1,2]"), 400);
    let (status, _, body) = operator_get(&addr, "/status");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["m1"]["phase"], "writing");
    assert_eq!(doc["m1"]["bytes"], 10);
    assert_eq!(doc["m2"]["phase"], "failed");
    assert_eq!(doc["127.0.0.1"]["phase"], "anonymous");
}

/// Reads whatever a server sends until it closes or `wait` passes; the status
/// code of the first response, if one came.
fn answer_within(stream: &mut TcpStream, wait: std::time::Duration) -> (Option<u16>, bool) {
    use std::io::Read;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let status = String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    (status, closed)
}

/// A kept-alive connection, idle after one request for `path` was answered 200.
fn kept_alive(addr: &str, path: &str) -> TcpStream {
    kept_alive_on(TcpStream::connect(addr).unwrap(), path)
}

/// `conn` once it has had one answer (so the server counts it), kept open.
fn kept_alive_on(mut conn: TcpStream, path: &str) -> TcpStream {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    assert_eq!(read_response(&mut reader, false).0, 200);
    conn
}

fn get_ok(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    answer_within(&mut s, std::time::Duration::from_secs(10)).0 == Some(200)
}

/// A declared length is never what decides an allocation: huge declared bodies
/// that never come are refused, the server stays small and keeps serving.
#[test]
fn a_huge_declared_body_does_not_kill_or_bloat_the_server() {
    let (_repo, mut served, digest) = setup();
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
    let (_repo, mut served, _) = setup();
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
    let (repo, _, digest) = setup();
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
    let (repo, _, digest) = setup();
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
    let (repo, _, digest) = setup();
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

/// A FIFO in the repository does not hold a connection: it is not a file.
#[test]
fn a_fifo_in_the_repository_is_not_served() {
    let (repo, served, _) = setup();
    let fifo = repo.path().join("refs/fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let mut s = TcpStream::connect(served.addr()).unwrap();
    write!(
        s,
        "GET /refs/fifo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (status, _) = answer_within(&mut s, std::time::Duration::from_secs(5));
    assert_eq!(status, Some(404));
}

fn post_status(addr: &str, path: &str, extra_headers: &str, body: &str) -> u16 {
    raw_request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .0
}

/// A connection from another loopback address (127.0.0.2), as another machine.
fn post_from(source: [u8; 4], addr: &str, body: &str) -> u16 {
    let mut s = connect_from(source, addr);
    write!(
        s,
        "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    answer_within(&mut s, std::time::Duration::from_secs(5))
        .0
        .unwrap()
}

/// The status table: bounded in machines and event size, names checked,
/// nothing raw in the log, one machine cannot overwrite another's progress.
#[test]
fn the_status_table_is_bounded_checked_and_owned() {
    let repo = Repo::new();
    repo.add("os:v1", &mixed_image(2, 2), &[]);
    let log = repo.file("serve.log");
    let mut served = Served::start_with(
        &repo.path(),
        &["--status-machines", "50"],
        None,
        std::fs::File::create(&log).unwrap().into(),
    );
    let addr = served.addr();
    let pad = "x".repeat(8000);
    for i in 0..500 {
        let body = format!(r#"{{"target":"m{i}","phase":"writing","pad":"{pad}"}}"#);
        assert_eq!(post_status(&addr, "/status", "", &body), 204);
    }
    let big = format!(r#"{{"target":"big","pad":"{}"}}"#, "x".repeat(60_000));
    assert_eq!(post_status(&addr, "/status", "", &big), 413);
    let (_, _, body) = operator_get(&addr, "/status");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let machines = doc.as_object().unwrap();
    assert_eq!(machines.len(), 50);
    assert!(machines.contains_key("m499") && !machines.contains_key("m0"));

    // Names that would forge log lines or drive a terminal are refused; other
    // strings reach the log escaped.
    let forged = r#"{"target":"evil\nimprint: error: forged","phase":"x"}"#;
    assert_eq!(post_status(&addr, "/status", "", forged), 400);
    let escape = r#"{"target":"m-esc","phase":"\u001b[2J\u001b]0;owned\u0007"}"#;
    assert_eq!(post_status(&addr, "/status", "", escape), 204);

    // m-esc reports from 127.0.0.1; 127.0.0.2 cannot overwrite it.
    assert_eq!(
        post_from(
            [127, 0, 0, 2],
            &addr,
            r#"{"target":"m-esc","phase":"failed"}"#
        ),
        409
    );
    let (_, _, body) = operator_get(&addr, "/status?target=m-esc");
    let history: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert!(served.alive());
    drop(served);
    let text = std::fs::read(&log).unwrap();
    assert!(!text.contains(&0x1b), "raw escape in the log");
    assert!(!text.contains(&0x07));
    assert!(
        !String::from_utf8_lossy(&text)
            .lines()
            .any(|l| l.starts_with("imprint: error: forged")),
        "a forged log line"
    );
}

/// With a token configured, status events need it (header or query), and with
/// it may report for any machine.
#[test]
fn a_status_token_is_required_when_configured() {
    let (repo, _, _) = setup();
    let served = Served::start_with(
        &repo.path(),
        &["--status-token", "s3cret"],
        None,
        std::process::Stdio::null(),
    );
    let addr = served.addr();
    let body = r#"{"target":"m1","phase":"booted"}"#;
    assert_eq!(post_status(&addr, "/status", "", body), 401);
    assert_eq!(post_status(&addr, "/status?token=wrong", "", body), 401);
    assert_eq!(post_status(&addr, "/status?token=s3cret", "", body), 204);
    assert_eq!(
        post_status(&addr, "/status", "Authorization: Bearer s3cret\r\n", body),
        204
    );
}

/// The server keeps serving after whoever reads its log goes away.
#[test]
fn a_closed_log_pipe_does_not_stop_the_server() {
    let (repo, _, digest) = setup();
    let manifest = format!("/manifests/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut served = Served::start_with(&repo.path(), &[], None, std::process::Stdio::piped());
    // The pipe's read end closes: every log line now meets EPIPE.
    drop(served.take_stderr());
    let addr = served.addr();
    for i in 0..5 {
        let body = format!(r#"{{"target":"m{i}","phase":"booted"}}"#);
        assert_eq!(post_status(&addr, "/status", "", &body), 204);
    }
    assert!(served.alive());
    assert!(get_ok(&addr, &manifest));
}

/// SIGTERM: new connections are refused, a download under way finishes whole,
/// an idle kept-alive connection is closed, and the server exits 0.
#[test]
fn sigterm_finishes_what_is_under_way_and_exits() {
    use std::io::Read;
    let (repo, _, digest) = setup();
    let hex = digest.trim_start_matches("sha256:");
    // 16 MiB under a name the server serves, read slowly below.
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let big_name = format!("/manifests/sha256/{}", "ab".repeat(32));
    std::fs::write(repo.path().join(&big_name[1..]), &big).unwrap();
    let mut served = Served::start_with(&repo.path(), &[], None, std::process::Stdio::piped());
    let log = served.take_stderr().unwrap();
    let (line_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let addr = served.addr();

    let mut idle = kept_alive(&addr, &format!("/manifests/sha256/{hex}"));

    // A download under way.
    let mut download = TcpStream::connect(&addr).unwrap();
    write!(
        download,
        "GET {big_name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = vec![0u8; 1 << 20];
    download.read_exact(&mut got).unwrap();

    served.signal(rustix::process::Signal::TERM);
    // The server says it takes no new connections once it has stopped taking them.
    let start = std::time::Instant::now();
    loop {
        let left = std::time::Duration::from_secs(10).saturating_sub(start.elapsed());
        let line = lines
            .recv_timeout(left)
            .expect("no word of SIGTERM in the log");
        if line.contains("no new connections") {
            break;
        }
    }
    // No new connections: refused, or closed without an answer.
    if let Ok(mut late) = TcpStream::connect(&addr) {
        let _ = write!(
            late,
            "GET /manifests/sha256/{hex} HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let (status, _) = answer_within(&mut late, std::time::Duration::from_secs(3));
        assert_eq!(status, None, "a new connection was served after SIGTERM");
    }
    // The idle one is closed.
    idle.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        idle.read(&mut byte).unwrap(),
        0,
        "the idle connection stayed open"
    );
    // The download finishes whole.
    download.read_to_end(&mut got).unwrap();
    let body_start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got[body_start..] == big[..], "the download was cut short");
    let status = served
        .exit_within(std::time::Duration::from_secs(10))
        .expect("the server did not exit");
    assert!(status.success(), "{status:?}");
}
