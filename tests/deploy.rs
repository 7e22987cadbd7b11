//! Host integration: `imprint image add`, `imprint serve` and `imprint deploy` on
//! file-backed disks over loopback HTTP.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn deploy(url: &str, image: &str, disk: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "deploy",
        "--url",
        url,
        "--image",
        image,
        "--disk",
        disk.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    imprint(&args)
}

fn disk_verify(url: &str, image: &str, disk: &std::path::Path) -> std::process::Output {
    imprint(&[
        "disk",
        "verify",
        "--url",
        url,
        "--image",
        image,
        "--disk",
        disk.to_str().unwrap(),
    ])
}

/// A command that was refused: its exit code, and what its error says.
fn refused(out: &std::process::Output, code: i32, says: &str) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(says), "expected {says:?} in:\n{err}");
}

#[test]
fn deploy_is_byte_identical_and_redeploy_fetches_nothing() {
    let repo = Repo::new();
    let image = mixed_image(1, 200);
    repo.add("os:v1", &image, &[]);
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");

    let first = deploy(&served.url, "os:v1", &disk, &[]);
    assert_success(&first);
    assert_eq!(std::fs::read(&disk).unwrap(), image);
    let s = summary(&first);
    assert!(figure(&s, "fetched") > 0);
    assert_eq!(figure(&s, "bytes"), image.len() as u64);

    let again = deploy(&served.url, "os:v1", &disk, &[]);
    assert_success(&again);
    let s = summary(&again);
    assert_eq!(figure(&s, "fetched"), 0, "{s:?}");
    assert_eq!(figure(&s, "written"), 0);
    assert_eq!(figure(&s, "skipped"), image.len() as u64);

    let verify = disk_verify(&served.url, "os:v1", &disk);
    assert_success(&verify);
}

#[test]
fn stale_data_is_overwritten_and_zero_chunks_zeroed() {
    let repo = Repo::new();
    let image = mixed_image(2, 60);
    repo.add("os:v1", &image, &[]);
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");
    // A disk full of old data, larger than the image: every byte of the image range
    // must end up right, the rest is left alone.
    let mut old = noise(99, image.len() + 4096);
    std::fs::write(&disk, &old).unwrap();
    let out = deploy(&served.url, "os:v1", &disk, &["--jobs", "3"]);
    assert_success(&out);
    let s = summary(&out);
    assert!(
        figure(&s, "zeroed") > 0,
        "zero chunks over old data are zeroed: {s:?}"
    );
    let now = std::fs::read(&disk).unwrap();
    assert_eq!(&now[..image.len()], &image[..]);
    old.drain(..image.len());
    assert_eq!(
        &now[image.len()..],
        &old[..],
        "bytes past the image untouched"
    );

    let verify = disk_verify(&served.url, "os:v1", &disk);
    assert_success(&verify);
    // One flipped byte is caught by verify.
    let mut bad = now.clone();
    bad[3 * CHUNK + 5] ^= 1;
    std::fs::write(&disk, &bad).unwrap();
    let verify = disk_verify(&served.url, "os:v1", &disk);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains(&format!("offset {}", 3 * CHUNK)));
}

#[test]
fn delta_deploy_fetches_only_changed_chunks() {
    let repo = Repo::new();
    let v1 = mixed_image(3, 200);
    let mut v2 = v1.clone();
    // Change 5% of the chunks (10 of 200), spread over the image.
    let changed: Vec<usize> = (0..10).map(|i| i * 19 + 1).collect();
    for &c in &changed {
        let fresh = noise(5000 + c as u64, CHUNK);
        v2[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&fresh);
    }
    repo.add("os:v1", &v1, &[]);
    repo.add("os:v2", &v2, &[]);
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");
    let full = deploy(&served.url, "os:v1", &disk, &[]);
    assert_success(&full);
    let delta = deploy(&served.url, "os:v2", &disk, &[]);
    assert_success(&delta);
    assert_eq!(std::fs::read(&disk).unwrap(), v2);
    let (full, delta) = (summary(&full), summary(&delta));
    assert_eq!(
        figure(&delta, "fetched_chunks"),
        changed.len() as u64,
        "{delta:?}"
    );
    // Random chunks do not compress: about 64 KiB each, plus zstd framing.
    let fetched = figure(&delta, "fetched");
    assert!(
        fetched <= changed.len() as u64 * (CHUNK as u64 + 1024),
        "{fetched}"
    );
    assert!(
        fetched * 5 < figure(&full, "fetched"),
        "delta {fetched} vs full {full:?}"
    );
}

#[test]
fn killed_deploy_resumes_fetching_only_what_is_missing() {
    let repo = Repo::new();
    let image = mixed_image(4, 300);
    repo.add("os:v1", &image, &[]);
    // A slow server, so the deploy is surely under way when it is killed.
    let slow = FaultyServer::start(
        &repo.path(),
        Arc::new(|_: &str, _| Fault::None),
        Duration::from_millis(15),
        Duration::ZERO,
    );
    let disk = repo.file("disk");
    let jobs = 4u64;
    let mut child = Command::new(BIN)
        .args([
            "deploy", "--url", &slow.url, "--image", "os:v1", "--jobs", "4", "--disk",
        ])
        .arg(&disk)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Wait for a good part of the data chunks to be fetched, then kill -9.
    while slow.requests.load(std::sync::atomic::Ordering::Relaxed) < 60 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "deploy made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // What is missing now, judged against the image itself.
    let missing_data = missing_data_chunks(&image, &std::fs::read(&disk).unwrap(), CHUNK);
    let data_chunks = image
        .chunks(CHUNK)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64;
    assert!(
        missing_data > 0 && missing_data < data_chunks,
        "{missing_data} of {data_chunks}"
    );

    let served = Served::start(&repo.path());
    let resumed = deploy(&served.url, "os:v1", &disk, &["--jobs", "4"]);
    assert_success(&resumed);
    assert_eq!(std::fs::read(&disk).unwrap(), image);
    let s = summary(&resumed);
    let fetched = figure(&s, "fetched_chunks");
    assert!(
        fetched <= missing_data + jobs,
        "fetched {fetched}, missing {missing_data}"
    );
    assert!(fetched < data_chunks);
}

#[test]
fn signed_images_verify_with_the_right_key_only() {
    let repo = Repo::new();
    let key = repo.file("key");
    let out = imprint(&["keygen", "--out", key.to_str().unwrap()]);
    assert_success(&out);
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(repo.file("key.pub"))
            .unwrap()
            .trim(),
        public
    );
    // keygen never overwrites a key.
    assert!(
        !imprint(&["keygen", "--out", key.to_str().unwrap()])
            .status
            .success()
    );

    let other = repo.file("other");
    let other_public =
        String::from_utf8_lossy(&imprint(&["keygen", "--out", other.to_str().unwrap()]).stdout)
            .trim()
            .to_string();

    let image = mixed_image(5, 20);
    repo.add("os:signed", &image, &["--sign-key", key.to_str().unwrap()]);
    repo.add("os:unsigned", &image, &[]);
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");

    let wrong = deploy(
        &served.url,
        "os:signed",
        &disk,
        &["--pubkey", &other_public],
    );
    refused(&wrong, 3, "signature");
    assert!(!disk.exists(), "target untouched");

    // Same content, so the same manifest; but the signature is for os:signed,
    // and a signature binds the tag it was made for.
    let unsigned = deploy(&served.url, "os:unsigned", &disk, &["--pubkey", &public]);
    refused(&unsigned, 3, "not as os:unsigned");
    assert!(!disk.exists(), "target untouched");

    let good = deploy(&served.url, "os:signed", &disk, &["--pubkey", &public]);
    assert_success(&good);
    assert_eq!(std::fs::read(&disk).unwrap(), image);

    let bad_key = deploy(
        &served.url,
        "os:signed",
        &disk,
        &["--pubkey", "not-base64!"],
    );
    refused(&bad_key, 3, "not-base64!");
}

/// Pointing `refs/web/v2` at web:v1's signed manifest (a rollback to an old,
/// vulnerable release by anyone on the plain-HTTP path) is refused under a key;
/// a ref that leads to another image's manifest is refused even without one.
/// Signatures in the first format are refused with the command that re-signs
/// them, and re-signed they verify.
#[test]
fn a_signature_binds_the_name_and_tag_it_was_made_for() {
    let repo = Repo::new();
    let (key, public) = keygen(&repo);
    let sign = ["--sign-key", key.to_str().unwrap()];
    let v1 = repo.add("web:v1", &mixed_image(1, 8), &sign);
    let v2 = repo.add("web:v2", &mixed_image(2, 8), &sign);
    repo.add("db:v1", &mixed_image(3, 8), &sign);
    let r = repo.path();
    let served = Served::start(&r);
    let disk = repo.file("disk");

    let good = deploy(&served.url, "web:v2", &disk, &["--pubkey", &public]);
    assert_success(&good);
    std::fs::remove_file(&disk).unwrap();

    // refs/web/v2 now names web:v1's manifest.
    std::fs::write(r.join("refs/web/v2"), format!("{v1}\n")).unwrap();
    let replayed = deploy(&served.url, "web:v2", &disk, &["--pubkey", &public]);
    refused(&replayed, 3, "not as web:v2");
    assert!(!disk.exists(), "target untouched");

    // refs/web/v2 names db's manifest: another image, refused with or without a key.
    let db = std::fs::read_to_string(r.join("refs/db/v1")).unwrap();
    std::fs::write(r.join("refs/web/v2"), &db).unwrap();
    let other = deploy(&served.url, "web:v2", &disk, &[]);
    refused(&other, 3, "is the image \"db\", not \"web\"");
    assert!(!disk.exists(), "target untouched");

    // A signature file of the first format: refused, with the way out.
    std::fs::write(r.join("refs/web/v2"), format!("{v2}\n")).unwrap();
    let sig = r.join(format!(
        "manifests/sha256/{}.sig",
        v2.trim_start_matches("sha256:")
    ));
    std::fs::write(
        &sig,
        format!("ed25519 {public} {}\n", "A".repeat(86) + "=="),
    )
    .unwrap();
    let old = deploy(&served.url, "web:v2", &disk, &["--pubkey", &public]);
    refused(
        &old,
        3,
        "imprint image sign --repo DIR NAME:TAG --sign-key FILE",
    );
    let resign = imprint(&[
        "image",
        "sign",
        "--repo",
        r.to_str().unwrap(),
        "web:v2",
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert_success(&resign);
    let text = std::fs::read_to_string(&sig).unwrap();
    assert_eq!(text.lines().count(), 1, "the old line is replaced: {text}");
    assert_success(&deploy(
        &served.url,
        "web:v2",
        &disk,
        &["--pubkey", &public],
    ));
}

#[test]
fn unsigned_manifest_is_refused_when_a_key_is_required() {
    let repo = Repo::new();
    let (_, public) = keygen(&repo);
    repo.add("os:v1", &mixed_image(6, 10), &[]);
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");
    let out = deploy(&served.url, "os:v1", &disk, &["--pubkey", &public]);
    refused(&out, 3, "not signed");
    assert!(!disk.exists());
}

/// A disk holding a recognisable pattern, to show it was not touched.
fn pattern_disk(repo: &Repo, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let disk = repo.file("disk");
    let bytes = noise(4242, len);
    std::fs::write(&disk, &bytes).unwrap();
    (disk, bytes)
}

#[test]
fn wrong_pin_leaves_the_target_untouched() {
    let repo = Repo::new();
    let image = mixed_image(7, 30);
    let digest = repo.add("os:v1", &image, &[]);
    let other = repo.add("os:v2", &mixed_image(8, 30), &[]);
    let (disk, before) = pattern_disk(&repo, image.len() + 100);
    // The repository serves v2's manifest under v1's digest: the pin catches it.
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let manifests = repo.path().join("manifests/sha256");
    std::fs::copy(manifests.join(hex(&other)), manifests.join(hex(&digest))).unwrap();
    let served = Served::start(&repo.path());

    let out = deploy(&served.url, &digest, &disk, &[]);
    refused(&out, 3, "does not match");
    assert_eq!(std::fs::read(&disk).unwrap(), before);

    // A pin naming no manifest at all: a clear not-found, nothing written.
    let missing = format!("sha256:{}", "ab".repeat(32));
    let out = deploy(&served.url, &missing, &disk, &[]);
    refused(&out, 5, "not found");
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

#[test]
fn pinned_digest_deploys_without_refs() {
    let repo = Repo::new();
    let image = mixed_image(9, 20);
    let digest = repo.add("os:v1", &image, &[]);
    std::fs::remove_dir_all(repo.path().join("refs")).unwrap();
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");
    assert_success(&deploy(&served.url, &digest, &disk, &[]));
    assert_eq!(std::fs::read(&disk).unwrap(), image);
}

#[test]
fn target_too_small_is_untouched() {
    let repo = Repo::new();
    let image = mixed_image(10, 30);
    repo.add("os:v1", &image, &[]);
    let served = Served::start(&repo.path());
    let (disk, before) = pattern_disk(&repo, image.len() - 1);
    let out = deploy(&served.url, "os:v1", &disk, &[]);
    refused(&out, 4, "larger disk");
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

#[test]
fn bad_manifests_and_refs_fail_clearly_and_touch_nothing() {
    let repo = Repo::new();
    let image = mixed_image(11, 10);
    let digest = repo.add("os:v1", &image, &[]);
    let hex = digest.trim_start_matches("sha256:");
    let manifest = std::fs::read(repo.path().join("manifests/sha256").join(hex)).unwrap();
    let (disk, before) = pattern_disk(&repo, image.len());

    // Store a bad manifest under its own digest and point a ref at it, so only the
    // manifest decoder can object.
    let plant = |tag: &str, bytes: &[u8]| {
        let d = sha256_hex(bytes);
        std::fs::write(repo.path().join("manifests/sha256").join(&d), bytes).unwrap();
        std::fs::create_dir_all(repo.path().join("refs/bad")).unwrap();
        std::fs::write(
            repo.path().join("refs/bad").join(tag),
            format!("sha256:{d}\n"),
        )
        .unwrap();
    };
    plant("truncated", &manifest[..manifest.len() / 2]);
    plant("garbage", b"this is not a manifest at all");
    let mut future = manifest.clone();
    future[0] = 9; // format version varint
    plant("future", &future);
    std::fs::create_dir_all(repo.path().join("refs/bad")).unwrap();
    std::fs::write(
        repo.path().join("refs/bad/dangling"),
        format!("sha256:{}\n", "cd".repeat(32)),
    )
    .unwrap();
    std::fs::write(repo.path().join("refs/bad/nonsense"), "hello\n").unwrap();

    let served = Served::start(&repo.path());
    for (tag, code, needle) in [
        ("truncated", 3, "manifest"),
        ("garbage", 3, "manifest"),
        ("future", 3, "version"),
        ("dangling", 5, "not found"),
        ("nonsense", 3, "bad:nonsense"),
        ("missing-tag", 5, "not found"),
    ] {
        let out = deploy(&served.url, &format!("bad:{tag}"), &disk, &[]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(code), "{tag}: {err}");
        assert!(err.contains(needle), "{tag}: {err}");
        assert!(!err.contains("panicked"), "{tag}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.contains("error")).count(),
            1,
            "{tag}: {err}"
        );
        assert_eq!(
            std::fs::read(&disk).unwrap(),
            before,
            "{tag}: target touched"
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn repo_check_reports_missing_and_corrupt_chunks() {
    let repo = Repo::new();
    repo.add("os:v1", &mixed_image(12, 20), &[]);
    let ok = imprint(&["repo", "check", "--repo", repo.path().to_str().unwrap()]);
    assert_success(&ok);

    let mut chunks: Vec<_> = walk(&repo.path().join("chunks"));
    chunks.sort();
    assert!(chunks.len() >= 2);
    std::fs::remove_file(&chunks[0]).unwrap();
    let mut bytes = std::fs::read(&chunks[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&chunks[1], bytes).unwrap();
    let bad = imprint(&["repo", "check", "--repo", repo.path().to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&bad.stdout);
    let name = |p: &std::path::PathBuf| p.file_name().unwrap().to_string_lossy().to_string();
    assert!(stdout.contains(&name(&chunks[0])), "{stdout}");
    assert!(stdout.contains(&name(&chunks[1])), "{stdout}");
    assert!(stdout.contains("2 problems"), "{stdout}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn image_add_reports_and_dedupes() {
    let repo = Repo::new();
    let image = mixed_image(13, 50);
    let img = repo.file("a.img");
    std::fs::write(&img, &image).unwrap();
    let r = repo.path();
    let add = |reference: &str| {
        let out = imprint(&[
            "image",
            "add",
            "--repo",
            r.to_str().unwrap(),
            reference,
            img.to_str().unwrap(),
            "--chunk-size",
            "64K",
        ]);
        assert_success(&out);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let value = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    let text = add("os:a");
    assert_eq!(value(&text, "logical size"), image.len() as u64);
    assert_eq!(value(&text, "chunks"), image.len().div_ceil(CHUNK) as u64);
    assert_eq!(value(&text, "zero chunks"), 15);
    assert!(value(&text, "new chunks") > 0);
    let text = add("os:b");
    assert_eq!(value(&text, "new chunks"), 0, "{text}");
    assert_eq!(value(&text, "bytes stored"), 0, "{text}");

    let ls = imprint(&["image", "ls", "--repo", r.to_str().unwrap()]);
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.contains("os:a") && listing.contains("os:b"),
        "{listing}"
    );

    let json = imprint(&[
        "image",
        "inspect",
        "--repo",
        r.to_str().unwrap(),
        "os:a",
        "--json",
    ]);
    assert_success(&json);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["size"], image.len() as u64);
    assert_eq!(
        doc["chunks"].as_array().unwrap().len(),
        image.len().div_ceil(CHUNK)
    );

    let empty = repo.file("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let out = imprint(&[
        "image",
        "add",
        "--repo",
        r.to_str().unwrap(),
        "os:empty",
        empty.to_str().unwrap(),
    ]);
    refused(&out, 1, "empty");
    let out = imprint(&[
        "image",
        "add",
        "--repo",
        r.to_str().unwrap(),
        "os:x",
        img.to_str().unwrap(),
        "--chunk-size",
        "100K",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("power of two"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn deploy_from_a_local_directory() {
    let repo = Repo::new();
    let image = mixed_image(14, 25);
    repo.add("os:v1", &image, &[]);
    let disk = repo.file("disk");
    let out = imprint(&[
        "deploy",
        "--repo",
        repo.path().to_str().unwrap(),
        "--image",
        "os:v1",
        "--disk",
        disk.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert_eq!(std::fs::read(&disk).unwrap(), image);
}

/// Under a key, nothing is fetched or decoded before a signature vouches for it:
/// a huge unsigned manifest behind a ref costs its reader no memory. (Before, it
/// was fetched and decoded first: 247 MiB cost 2.5 GB before "not signed".)
#[test]
fn an_unsigned_manifest_is_not_fetched_under_a_key() {
    let repo = Repo::new();
    let (key, public) = keygen(&repo);
    let r = repo.path();
    repo.add(
        "web:v1",
        &mixed_image(1, 4),
        &["--sign-key", key.to_str().unwrap()],
    );
    // 96 MiB that hash to the name a ref gives them.
    let junk: Vec<u8> = (0..96u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let digest = imprint::format::digest::Digest::of(&junk);
    std::fs::write(r.join(format!("manifests/sha256/{}", digest.hex())), &junk).unwrap();
    drop(junk);
    std::fs::create_dir_all(r.join("refs/web")).unwrap();
    std::fs::write(r.join("refs/web/huge"), format!("{digest}\n")).unwrap();
    let served = Served::start(&r);
    let disk = repo.file("disk");
    let out = std::process::Command::new("/usr/bin/time")
        .args([
            "-f",
            "max-rss-kib %M",
            BIN,
            "deploy",
            "--url",
            &served.url,
            "--image",
            "web:huge",
        ])
        .args(["--disk", disk.to_str().unwrap(), "--pubkey", &public])
        .output()
        .expect("/usr/bin/time (package time)");
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("is not signed"), "{err}");
    let rss: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("max-rss-kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure from time: {err}"));
    assert!(rss < 32 << 10, "the reader grew to {rss} KiB");
    assert!(!disk.exists(), "target untouched");
}

/// `mixed_image` made a bootable GPT disk by sfdisk: protective MBR with its boot
/// signature, primary GPT, backup GPT in the last sector, a fresh disk GUID.
fn bootable_image(repo: &Repo, seed: u64, chunks: usize) -> Vec<u8> {
    let mut img = mixed_image(seed, chunks);
    img.resize(img.len().div_ceil(512) * 512, 0);
    let path = repo.file(&format!("gpt-{seed}.img"));
    std::fs::write(&path, &img).unwrap();
    sfdisk(&path, "label: gpt\nsize=4MiB, type=L, name=root\n");
    std::fs::read(&path).unwrap()
}

/// What firmware would take for a bootable disk: a boot signature, a primary GPT
/// header, or a backup GPT header in the last sector.
fn looks_bootable(disk: &[u8]) -> bool {
    disk[510..512] == [0x55, 0xAA]
        || &disk[512..520] == b"EFI PART"
        || &disk[disk.len() - 512..disk.len() - 504] == b"EFI PART"
}

#[test]
fn an_interrupted_deploy_leaves_a_disk_that_does_not_boot_and_a_rerun_completes() {
    let repo = Repo::new();
    let old = bootable_image(&repo, 21, 120);
    let new = bootable_image(&repo, 22, 120);
    repo.add("os:old", &old, &[]);
    repo.add("os:new", &new, &[]);
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");
    assert_success(&deploy(&served.url, "os:old", &disk, &[]));
    assert_eq!(std::fs::read(&disk).unwrap(), old);
    assert!(looks_bootable(&old) && looks_bootable(&new));

    // One of the new image's chunks goes missing from the repository: the deploy
    // fails there. Early, in the middle, and the last, which holds the backup GPT.
    // Nothing is written before the image's head is in hand, so an early failure
    // may leave the old disk whole (and bootable as the old OS); any later one
    // has written much of the rest, and then the disk must not look bootable.
    let stored = |index: usize| {
        let hex = sha256_hex(&new[index * CHUNK..((index + 1) * CHUNK).min(new.len())]);
        repo.path()
            .join(format!("chunks/sha256/{}/{hex}", &hex[..2]))
    };
    let last = new.len().div_ceil(CHUNK) - 1;
    for missing in [1, 60, 113, last] {
        std::fs::write(&disk, &old).unwrap();
        let chunk = stored(missing);
        let kept = repo.file("kept-chunk");
        std::fs::rename(&chunk, &kept).unwrap();
        let failed = deploy(&served.url, "os:new", &disk, &["--jobs", "2"]);
        assert!(!failed.status.success(), "chunk {missing} was missing");
        std::fs::rename(&kept, &chunk).unwrap();
        let partial = std::fs::read(&disk).unwrap();
        let err = stderr_of(&failed);
        if partial == old {
            assert_eq!(missing, 1, "chunk {missing} missing: nothing was written");
            assert!(err.contains("Nothing on the disk was changed"), "{err}");
            continue;
        }
        assert!(
            !looks_bootable(&partial),
            "chunk {missing} missing: the half-written disk looks bootable"
        );
        assert!(
            err.contains("does not boot until a deploy completes: run the deploy again"),
            "{err}"
        );
    }

    let rerun = deploy(&served.url, "os:new", &disk, &[]);
    assert_success(&rerun);
    assert_eq!(std::fs::read(&disk).unwrap(), new);
    assert_success(&disk_verify(&served.url, "os:new", &disk));
    // Deployed again: nothing to write, and the head is never taken down.
    let again = deploy(&served.url, "os:new", &disk, &[]);
    assert_eq!(figure(&summary(&again), "written"), 0);
    assert_eq!(std::fs::read(&disk).unwrap(), new);
}

/// A repository published as plain files by Debian's nginx: each connection of
/// the host's deploy carries the next chunk's request before the answer to the
/// one before (nginx logs a request as pipelined when it came in with the one
/// before, as a connection's first two do), and the disk ends byte-identical;
/// a redeploy after a change asks for the changed chunk only.
#[test]
fn a_deploy_from_nginx_keeps_requests_ahead_on_its_connections() {
    if !common::vm::nginx_available() {
        return;
    }
    let repo = Repo::new();
    let v1 = mixed_image(41, 120);
    repo.add("os:v1", &v1, &[]);
    let mut v2 = v1.clone();
    v2[77 * CHUNK + 5] ^= 0xA5;
    repo.add("os:v2", &v2, &[]);
    let nginx = common::vm::Nginx::start(&repo.path());
    let disk = repo.file("disk");
    let chunk_requests = || nginx.requested("/chunks/");

    let out = deploy(&nginx.url, "os:v1", &disk, &["--jobs", "4"]);
    assert_success(&out);
    assert!(std::fs::read(&disk).unwrap() == v1, "disk differs from v1");
    let fetched = figure(&summary(&out), "fetched_chunks") as usize;
    assert_eq!(
        count_settled(fetched, chunk_requests),
        fetched,
        "one request per chunk"
    );
    let pipelined = nginx.pipelined("/chunks/");
    assert!(
        pipelined > 0,
        "none of {fetched} chunk requests was waiting when nginx finished the one before"
    );

    let out = deploy(&nginx.url, "os:v2", &disk, &["--jobs", "2"]);
    assert_success(&out);
    assert!(std::fs::read(&disk).unwrap() == v2, "disk differs from v2");
    assert_eq!(count_settled(fetched + 1, chunk_requests), fetched + 1);
}
