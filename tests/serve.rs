//! `imprint serve`: what it serves, what it refuses, and the status endpoint.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

#[test]
fn serves_files_with_ranges_and_head() {
    let (repo, served, digest) = served_repo();
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
    let (repo, served, _) = served_repo();
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
    let (repo, served, digest) = served_repo();
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
    let (repo, served, _) = served_repo();
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
    let (_repo, served, _) = served_repo();
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

/// A FIFO in the repository does not hold a connection: it is not a file.
#[test]
fn a_fifo_in_the_repository_is_not_served() {
    let (repo, served, _) = served_repo();
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
    let (repo, _, _) = served_repo();
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
    let (repo, _, digest) = served_repo();
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
    let (repo, _, digest) = served_repo();
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
