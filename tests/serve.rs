//! `imprint serve`: what it serves, what it refuses, and the status endpoint.

mod common;

use common::*;
use std::io::{BufReader, Write};
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
    let (status, _, body) = raw_request(
        &addr,
        "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["m1"]["phase"], "writing");
    assert_eq!(doc["m1"]["bytes"], 10);
    assert_eq!(doc["m2"]["phase"], "failed");
    assert_eq!(doc["127.0.0.1"]["phase"], "anonymous");
}
