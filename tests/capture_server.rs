//! `imprint serve` taking captures (`/capture/`), driven over HTTP as a
//! capturing deploy environment drives it: which chunks are missing, the
//! chunks, the manifest; with the capture token and with a machine's own
//! credential, against hostile and careless uploads. What is published is
//! checked by `imprint repo check`, listed by `imprint image ls`, and
//! deployed by `imprint deploy` to a file.

mod common;

use common::capture::*;
use common::rig::*;
use common::*;
use imprint::format::digest::Digest;
use imprint::format::manifest::{ChunkKind, MAX_CHUNK_SIZE, Manifest, max_stored_size};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const GOLDEN: &str = "52:54:00:00:00:0a";

#[test]
fn a_capture_by_token_is_published_signed_and_deploys_byte_identical() {
    let repo = Repo::new();
    let (key, public) = keygen(&repo);
    let served = serve_capturing(&repo, &["--sign-key", key.to_str().unwrap()]);
    let image = mixed_image(7, 40);
    let c = Captured::of("golden", &image);
    assert!(c.chunks.len() > 10);

    // Nothing is there: every chunk is missing, in the order asked.
    let (status, headers, missing) =
        send(&served, "POST", "/capture/missing", Some(TOKEN), &c.asked());
    assert_eq!(status, 200, "{}", text(&missing));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(missing, c.asked());
    upload(&served, &c, &missing, TOKEN, None);
    for (name, frame) in &c.chunks {
        assert_eq!(&std::fs::read(chunk_file(&repo, name)).unwrap(), frame);
    }
    let (status, _, missing) = send(&served, "POST", "/capture/missing", Some(TOKEN), &c.asked());
    assert_eq!((status, missing.len()), (200, 0));
    // A chunk sent again is there already, left as it was.
    let (name, frame) = &c.chunks[0];
    let (status, _, body) = send(
        &served,
        "PUT",
        &chunk_target(name, None),
        Some(TOKEN),
        frame,
    );
    assert_eq!(status, 200, "{}", text(&body));
    // Nothing is an image before its manifest is committed.
    assert!(!repo.path().join("refs/golden/1").exists());

    let manifest = c.manifest.encode();
    let (status, headers, body) = send(
        &served,
        "PUT",
        "/capture/refs/golden/1",
        Some(TOKEN),
        &manifest,
    );
    assert_eq!(status, 201, "{}", text(&body));
    let digest = Digest::of(&manifest);
    assert_eq!(text(&body), format!("{digest}\n"));
    assert_eq!(header(&headers, "location"), Some("/refs/golden/1"));
    assert_eq!(
        std::fs::read_to_string(repo.path().join("refs/golden/1")).unwrap(),
        format!("{digest}\n")
    );
    let stored = std::fs::read(
        repo.path()
            .join(format!("manifests/sha256/{}", digest.hex())),
    )
    .unwrap();
    assert_eq!(Manifest::decode(&stored).unwrap(), c.manifest);
    let ls = imprint(&["image", "ls", "--repo", repo.path().to_str().unwrap()]);
    assert!(
        stdout_of(&ls).contains(&format!("golden:1\t{digest}\t{} bytes", image.len())),
        "{}",
        stdout_of(&ls)
    );
    let check = repo_check(&repo);
    assert_success(&check);
    // Signed by the server's key, for golden:1, issued as it was published.
    let sig = std::fs::read_to_string(
        repo.path()
            .join(format!("manifests/sha256/{}.sig", digest.hex())),
    )
    .unwrap();
    assert!(
        sig.starts_with(&format!("ed25519-v2 {public} golden 1 {} ", manifest.len())),
        "{sig}"
    );

    let disk = repo.file("disk");
    let deploy = |pubkey: &str| {
        imprint(&[
            "deploy",
            "--url",
            &served.url,
            "--image",
            "golden:1",
            "--disk",
            disk.to_str().unwrap(),
            "--pubkey",
            pubkey,
        ])
    };
    let (_, other) = {
        let other = Repo::new();
        keygen(&other)
    };
    let refused = deploy(&other);
    assert!(
        !refused.status.success(),
        "another key's signature is not there"
    );
    assert!(!disk.exists(), "nothing written");
    assert_success(&deploy(&public));
    assert_eq!(std::fs::read(&disk).unwrap(), image);
}

#[test]
fn chunks_that_are_not_what_they_say_are_refused_and_nothing_is_stored() {
    let repo = Repo::new();
    let served = serve_capturing(&repo, &[]);
    let c = Captured::of("golden", &mixed_image(8, 4));
    let (name, frame) = &c.chunks[0];
    let (other, _) = &c.chunks[1];

    // Another chunk's content under this name.
    let (status, _, body) = send(
        &served,
        "PUT",
        &chunk_target(other, None),
        Some(TOKEN),
        frame,
    );
    assert_eq!(status, 422, "{}", text(&body));
    assert!(
        text(&body).contains("chunk does not match its name"),
        "{}",
        text(&body)
    );
    assert!(!chunk_file(&repo, other).exists());
    // Not zstd; a frame cut short; two frames.
    for (bad, says) in [
        (b"plain bytes, not a frame".to_vec(), "not a zstd frame"),
        (frame[..frame.len() - 5].to_vec(), "cut short"),
        (
            [frame.clone(), frame.clone()].concat(),
            "more than one zstd frame",
        ),
    ] {
        let (status, _, body) = send(&served, "PUT", &chunk_target(name, None), Some(TOKEN), &bad);
        assert_eq!(status, 422, "{says}: {}", text(&body));
        assert!(text(&body).contains(says), "{}", text(&body));
    }
    assert!(!chunk_file(&repo, name).exists());
    // A frame of a little more than the largest chunk, a few kilobytes sent.
    let big = vec![0u8; MAX_CHUNK_SIZE as usize + 1];
    let bomb = zstd::bulk::compress(&big, 3).unwrap();
    let (status, _, body) = send(
        &served,
        "PUT",
        &chunk_target(&Digest::of(&big), None),
        Some(TOKEN),
        &bomb,
    );
    assert_eq!(status, 422, "{}", text(&body));
    assert!(
        text(&body).contains("decompresses to more than"),
        "{}",
        text(&body)
    );
    assert!(!chunk_file(&repo, &Digest::of(&big)).exists());
    // A body larger than any chunk's stored form: refused before it is sent.
    let mut conn = TcpStream::connect(served.addr()).unwrap();
    write!(
        conn,
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        chunk_target(name, None),
        max_stored_size(MAX_CHUNK_SIZE) + 1
    )
    .unwrap();
    assert_eq!(
        answer_within(&mut conn, Duration::from_secs(10)),
        (Some(413), true)
    );
    // No name that is not a digest, and no file anywhere else.
    let (status, _, _) = send(
        &served,
        "PUT",
        "/capture/chunks/sha256/../../refs/x",
        Some(TOKEN),
        frame,
    );
    assert_eq!(status, 404);
    let upper = format!("/capture/chunks/sha256/{}", name.hex().to_uppercase());
    assert_eq!(send(&served, "PUT", &upper, Some(TOKEN), frame).0, 404);
    assert_eq!(files_under(&repo.path()), Vec::<String>::new());

    // What "missing" takes: whole digests, 1 to 8192 of them.
    for bad in [Vec::new(), vec![7u8; 33]] {
        let (status, _, body) = send(&served, "POST", "/capture/missing", Some(TOKEN), &bad);
        assert_eq!(status, 400, "{}", text(&body));
    }
    let mut conn = TcpStream::connect(served.addr()).unwrap();
    write!(
        conn,
        "POST /capture/missing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        8193 * 32
    )
    .unwrap();
    assert_eq!(
        answer_within(&mut conn, Duration::from_secs(10)).0,
        Some(413)
    );
    let most: Vec<u8> = (0..8192u32)
        .flat_map(|i| Digest::of(&i.to_le_bytes()).0)
        .collect();
    let (status, _, missing) = send(&served, "POST", "/capture/missing", Some(TOKEN), &most);
    assert_eq!((status, missing), (200, most));
}

/// Four uploads at a time; the fifth is told to come back, its body read and
/// thrown away (or, when it waits for `100 Continue`, never asked for).
#[test]
fn four_uploads_at_once_and_the_fifth_comes_back_later() {
    let repo = Repo::new();
    let served = serve_capturing(&repo, &[]);
    let c = Captured::of("golden", &mixed_image(9, 10));
    let head = |name: &Digest, len: usize, expect: bool| {
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n{}Content-Length: {len}\r\n\r\n",
            chunk_target(name, None),
            if expect {
                "Expect: 100-continue\r\n"
            } else {
                ""
            }
        )
    };
    // Four uploads that wait for 100 Continue: told to go on once each has
    // its slot, then held one byte short of their end.
    let mut held = Vec::new();
    for (name, frame) in c.chunks.iter().take(4) {
        let mut conn = TcpStream::connect(served.addr()).unwrap();
        conn.write_all(head(name, frame.len(), true).as_bytes())
            .unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut interim = String::new();
        for _ in 0..2 {
            std::io::BufRead::read_line(&mut reader, &mut interim).unwrap();
        }
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        conn.write_all(&frame[..frame.len() - 1]).unwrap();
        held.push((conn, reader, frame[frame.len() - 1]));
    }
    let (extra, frame) = &c.chunks[4];
    let (status, headers, body) = send(
        &served,
        "PUT",
        &chunk_target(extra, None),
        Some(TOKEN),
        frame,
    );
    assert_eq!(status, 503, "{}", text(&body));
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    // Bodies sent whole are read: the connection stays in step.
    let mut conn = TcpStream::connect(served.addr()).unwrap();
    for _ in 0..2 {
        conn.write_all(head(extra, frame.len(), false).as_bytes())
            .unwrap();
        conn.write_all(frame).unwrap();
    }
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    for _ in 0..2 {
        let (status, headers, _) = read_response(&mut reader, false);
        assert_eq!(status, 503);
        assert_eq!(header(&headers, "connection"), Some("keep-alive"));
    }
    // Waiting for 100 Continue: told at once, nothing asked for.
    let mut waiting = TcpStream::connect(served.addr()).unwrap();
    waiting
        .write_all(head(extra, frame.len(), true).as_bytes())
        .unwrap();
    assert_eq!(
        answer_within(&mut waiting, Duration::from_secs(10)),
        (Some(503), true)
    );
    assert!(!chunk_file(&repo, extra).exists());

    for (mut conn, mut reader, last) in held {
        conn.write_all(&[last]).unwrap();
        assert_eq!(read_response(&mut reader, false).0, 201);
    }
    // The slots are free again.
    let (status, _, body) = send(
        &served,
        "PUT",
        &chunk_target(extra, None),
        Some(TOKEN),
        frame,
    );
    assert_eq!(status, 201, "{}", text(&body));
    assert_eq!(&std::fs::read(chunk_file(&repo, extra)).unwrap(), frame);
}

#[test]
fn a_commit_needs_every_chunk_there_and_right() {
    let repo = Repo::new();
    let served = serve_capturing(&repo, &[]);
    let image = mixed_image(10, 12);
    let c = Captured::of("golden", &image);
    let commit = |manifest: &Manifest| {
        let (status, headers, body) = send(
            &served,
            "PUT",
            "/capture/refs/golden/1",
            Some(TOKEN),
            &manifest.encode(),
        );
        (
            status,
            header(&headers, "x-imprint-missing").map(str::to_string),
            text(&body),
        )
    };
    let no_image = || {
        assert!(!repo.path().join("refs/golden/1").exists());
        let manifests = std::fs::read_dir(repo.path().join("manifests/sha256"));
        assert_eq!(manifests.map_or(0, |d| d.count()), 0);
    };
    // All but two chunks.
    let asked = c.asked();
    upload(&served, &c, &asked[64..], TOKEN, None);
    let (status, missing, body) = commit(&c.manifest);
    assert_eq!((status, missing.as_deref()), (409, Some("2")), "{body}");
    assert!(body.contains("2 of the manifest's"), "{body}");
    no_image();
    upload(&served, &c, &asked[..64], TOKEN, None);

    // Every chunk there; the manifest says another BLAKE3 of one.
    let mut wrong = c.manifest.clone();
    let data = wrong
        .chunks
        .iter_mut()
        .find(|ch| matches!(ch.kind, ChunkKind::Data { .. }))
        .unwrap();
    if let ChunkKind::Data { blake3, .. } = &mut data.kind {
        blake3[0] ^= 1;
    }
    let (status, _, body) = commit(&wrong);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("blake3 digest does not match"), "{body}");
    no_image();
    // Another image's manifest; bytes that are no manifest.
    let mut renamed = c.manifest.clone();
    renamed.name = "other".into();
    let (status, _, body) = commit(&renamed);
    assert_eq!(status, 422, "{body}");
    let (status, _, body) = send(
        &served,
        "PUT",
        "/capture/refs/golden/1",
        Some(TOKEN),
        b"\x01garbage",
    );
    assert_eq!(status, 400, "{}", text(&body));
    let (status, _, _) = send(&served, "PUT", "/capture/refs/.hidden/1", Some(TOKEN), b"x");
    assert_eq!(status, 404);
    no_image();

    let (status, _, body) = commit(&c.manifest);
    assert_eq!(status, 201, "{body}");
    assert_success(&repo_check(&repo));

    // Another stored size than the repository's file (a chunk it held
    // already may be compressed otherwise than the machine's): the content
    // counts, and the manifest published carries the file's size.
    let mut resized = c.manifest.clone();
    for ch in &mut resized.chunks {
        if let ChunkKind::Data { stored_size, .. } = &mut ch.kind {
            *stored_size += 1;
        }
    }
    let (status, _, body) = commit(&resized);
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body.trim(),
        Digest::of(&c.manifest.encode()).to_string(),
        "published with the stored sizes"
    );
    assert_success(&repo_check(&repo));
}

#[test]
fn without_a_credential_401_with_a_wrong_one_403_and_none_configured_404() {
    let repo = Repo::new();
    std::fs::create_dir_all(repo.path()).unwrap();
    let plain = Served::start(&repo.path());
    let (status, _, body) = send(&plain, "POST", "/capture/missing", Some(TOKEN), &[0; 32]);
    assert_eq!(status, 404);
    assert_eq!(
        text(&body),
        "this server does not accept captures: start it with --capture-token or give a host capture = in the inventory\n"
    );
    drop(plain);

    let served = serve_capturing(&repo, &[]);
    let (status, _, body) = send(&served, "POST", "/capture/missing", None, &[0; 32]);
    assert_eq!(status, 401);
    assert!(
        text(&body).contains("--capture-token") && text(&body).contains("capture = \"NAME:TAG\""),
        "{}",
        text(&body)
    );
    let (status, _, _) = send(
        &served,
        "POST",
        "/capture/missing",
        Some("not-the-capture-token-at-all"),
        &[0; 32],
    );
    assert_eq!(status, 403);
    let (status, _, _) = send(
        &served,
        "PUT",
        "/capture/refs/golden/1",
        Some(&TOKEN[1..]),
        b"x",
    );
    assert_eq!(status, 403);
    assert_eq!(
        send(&served, "GET", "/capture/missing", Some(TOKEN), b"").0,
        405
    );

    // A token too short to stand guessing is not taken.
    let out = imprint(&[
        "serve",
        "--repo",
        repo.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--capture-token",
        "short",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("shorter than 16 characters"),
        "{}",
        stderr_of(&out)
    );
}

const CAPTURING: &str = r#"
[hosts."52:54:00:00:00:0a"]
hostname = "golden-source"
capture = "golden:1"
settings = { disk = "/dev/vda" }

[hosts."52:54:00:12:34:56"]
image = "os:v1"
"#;

/// A machine the inventory sends to capture: its boot script says so with a
/// credential of its own, which may publish its NAME:TAG and nothing else,
/// once; then its next boot goes to its disk, until it is reprovisioned.
#[test]
fn a_machine_captures_its_own_tag_once_with_its_credential() {
    let rig = Rig::new(CAPTURING);
    let served = rig.serve(&[]);
    let s = script(&served, GOLDEN, "pcbios");
    let kernel = s
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("{s}"));
    for arg in [
        " imprint.mode=capture ",
        " imprint.image=golden:1 ",
        " imprint.repo=http://10.0.2.2:8080 ",
        " imprint.status=http://10.0.2.2:8080/status ",
        " imprint.target=52:54:00:00:00:0a ",
        " imprint.disk=/dev/vda",
        " imprint.credential=",
    ] {
        assert!(kernel.contains(arg), "{arg:?} not in {kernel}");
    }
    assert!(!kernel.contains("imprint.redeploy"), "{kernel}");
    assert!(s.contains("capturing golden:1 from golden-source"), "{s}");
    assert_eq!(
        machine(&machines(&served), GOLDEN)["next"],
        "capture golden:1"
    );
    let credential = credential_of(&s);
    // The deploy environment says it started, as a deploy does.
    assert_eq!(
        event(
            &served,
            GOLDEN,
            r#"{"phase":"booted","target":"MAC"}"#,
            Some(&credential)
        ),
        204
    );

    let image = mixed_image(11, 10);
    let c = Captured::of("golden", &image);
    // The credential goes with the machine's MAC, in any of iPXE's spellings.
    let (status, _, _) = send(
        &served,
        "POST",
        "/capture/missing",
        Some(&credential),
        &c.asked(),
    );
    assert_eq!(status, 403, "a credential without ?mac=");
    let (status, _, missing) = send(
        &served,
        "POST",
        "/capture/missing?mac=52-54-00-00-00-0a",
        Some(&credential),
        &c.asked(),
    );
    assert_eq!(status, 200);
    upload(
        &served,
        &c,
        &missing,
        &credential,
        Some("52%3A54%3A00%3A00%3A00%3A0a"),
    );
    // Another machine's credential: not one sent to capture.
    let deploy_credential = credential_of(&script(&served, NODE, "pcbios"));
    let (status, _, body) = send(
        &served,
        "POST",
        &format!("/capture/missing?mac={NODE}"),
        Some(&deploy_credential),
        &c.asked(),
    );
    assert_eq!(status, 403);
    assert!(text(&body).contains("no capture ="), "{}", text(&body));
    let (status, _, _) = send(
        &served,
        "POST",
        &format!("/capture/missing?mac={NODE}"),
        Some(&credential),
        &c.asked(),
    );
    assert_eq!(status, 403, "a credential is for its own machine");

    let manifest = c.manifest.encode();
    let mut other = c.manifest.clone();
    other.name = "other".into();
    let (status, _, body) = send(
        &served,
        "PUT",
        &format!("/capture/refs/other/1?mac={GOLDEN}"),
        Some(&credential),
        &other.encode(),
    );
    assert_eq!(status, 403);
    assert!(
        text(&body).contains("may capture golden:1 only"),
        "{}",
        text(&body)
    );
    assert!(!rig.repo.path().join("refs/other").exists());
    let (status, _, body) = send(
        &served,
        "PUT",
        &format!("/capture/refs/golden/1?mac={GOLDEN}"),
        Some(&credential),
        &manifest,
    );
    assert_eq!(status, 201, "{}", text(&body));
    assert_success(&repo_check(&rig.repo));

    // Done: the credential no longer counts, the next boot goes to the disk,
    // and the server says what it captured.
    let (status, _, _) = send(
        &served,
        "POST",
        &format!("/capture/missing?mac={GOLDEN}"),
        Some(&credential),
        &c.asked(),
    );
    assert_eq!(status, 403);
    let again = script(&served, GOLDEN, "pcbios");
    assert!(!is_deploy(&again), "{again}");
    assert!(
        again.contains("is captured; booting its own disk"),
        "{again}"
    );
    let m = machine(&machines(&served), GOLDEN).clone();
    assert_eq!(m["next"], "local");
    assert_eq!(m["state"]["captured"], "golden:1");
    assert_eq!(m["state"]["completed"], Digest::of(&manifest).to_string());
    assert_eq!(m["state"]["in_progress"], false);
    assert_eq!(m["event"]["phase"], "captured");
    assert_eq!(m["event"]["image"], "golden:1");
    assert!(
        m["event"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    // Written down: a restart of the server changes nothing.
    drop(served);
    let served = rig.serve(&[]);
    assert!(!is_deploy(&script(&served, GOLDEN, "pcbios")));

    // Reprovisioned: captured again, with a new credential; the old one
    // still counts for nothing.
    assert_success(&reprovision(&served, GOLDEN, &operator_token_file()));
    let s = script(&served, GOLDEN, "pcbios");
    assert!(s.contains(" imprint.mode=capture "), "{s}");
    let fresh = credential_of(&s);
    assert_ne!(fresh, credential);
    let (status, _, _) = send(
        &served,
        "POST",
        &format!("/capture/missing?mac={GOLDEN}"),
        Some(&credential),
        &c.asked(),
    );
    assert_eq!(status, 403);
    let (status, _, missing) = send(
        &served,
        "POST",
        &format!("/capture/missing?mac={GOLDEN}"),
        Some(&fresh),
        &c.asked(),
    );
    assert_eq!((status, missing.len()), (200, 0));
}
