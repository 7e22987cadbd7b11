//! Host integration: `imprint capture` of a file-backed disk (GPT, ext4 and
//! FAT16 made by e2fsprogs and dosfstools over junk) into an `imprint serve
//! --capture-token`, and `imprint deploy` of the capture onto a disk full of
//! other junk.

mod common;

use common::capture::{TOKEN, serve_capturing};
use common::*;
use imprint::format::gpt;
use imprint::format::usage;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn must(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 64 MiB disk of junk: GPT, an ext4 root of 32 MiB with a few files in it,
/// a FAT16 ESP of 16 MiB with one; the rest of both file systems is the
/// junk that was there.
fn source_disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("source.img");
    std::fs::write(&disk, noise(1, (64 * MIB) as usize)).unwrap();
    sfdisk(
        &disk,
        "label: gpt\nstart=2048, size=16MiB, type=U\nstart=34816, size=32MiB, type=L, name=root\n",
    );
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "source\n").unwrap();
    std::fs::write(tree.join("big.bin"), noise(2, 3 << 20)).unwrap();
    let root = dir.join("root.img");
    std::fs::write(&root, noise(3, (32 * MIB) as usize)).unwrap();
    must(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "nodiscard", "-d"])
            .arg(&tree)
            .arg(&root),
    );
    let esp = dir.join("esp.img");
    std::fs::write(&esp, noise(4, (16 * MIB) as usize)).unwrap();
    must(Command::new("mkfs.vfat").args(["-F", "16"]).arg(&esp));
    let loader = dir.join("loader.efi");
    std::fs::write(&loader, noise(5, 300_000)).unwrap();
    must(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg(&loader)
            .arg("::/loader.efi"),
    );
    for (part, at) in [(&esp, 2048u64), (&root, 34816)] {
        must(
            Command::new("dd")
                .arg(format!("if={}", part.display()))
                .arg(format!("of={}", disk.display()))
                .args([
                    "bs=512",
                    &format!("seek={at}"),
                    "conv=notrunc",
                    "status=none",
                ]),
        );
    }
    disk
}

fn capture_with(served: &Served, disk: &Path, token: &str) -> std::process::Output {
    imprint(&[
        "capture",
        "--disk",
        disk.to_str().unwrap(),
        "--server",
        &served.url,
        "--image",
        "golden:1",
        "--token",
        token,
        "--chunk-size",
        "65536",
    ])
}

fn capture(served: &Served, disk: &Path) -> HashMap<String, u64> {
    let out = capture_with(served, disk, TOKEN);
    assert_success(&out);
    // "  uploaded      N chunks, B bytes" and the like.
    let text = stdout_of(&out);
    let mut figures = HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let key = words
            .iter()
            .take_while(|w| w.parse::<u64>().is_err())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(n) = words.iter().find_map(|w| w.parse::<u64>().ok()) {
            figures.insert(key, n);
        }
    }
    figures.insert(
        "uploaded bytes".into(),
        text.lines()
            .find(|l| l.trim_start().starts_with("uploaded"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap(),
    );
    figures
}

#[test]
fn a_capture_carries_the_used_blocks_only_and_deploys_them_over_junk() {
    let dir = tempfile::tempdir().unwrap();
    let source = source_disk(dir.path());
    let repo = Repo::new();
    let served = serve_capturing(&repo, &[]);
    let first = capture(&served, &source);
    // The 3 MiB of noise in the root, the 300 KB loader and the file
    // systems' own metadata and journal (mkfs leaves the journal's old bytes)
    // travel; the junk in the other 35 MiB of the file systems does not.
    let sent = first["uploaded bytes"];
    assert!(sent > 3 * MIB && sent < 12 * MIB, "{first:?}");
    assert_eq!(first["read"], first["used"], "{first:?}");
    assert!(first["used"] < 16 * MIB, "{first:?}");
    assert_eq!(first["already there"], 0);
    let again = capture(&served, &source);
    assert_eq!(again["uploaded"], 0, "{again:?}");
    assert_eq!(again["already there"], first["uploaded"]);

    // Deployed onto a disk of other junk: every used byte as on the source,
    // zeros in every free one.
    let target = dir.path().join("target.img");
    std::fs::write(&target, noise(9, (64 * MIB) as usize)).unwrap();
    let out = imprint(&[
        "deploy",
        "--url",
        &served.url,
        "--image",
        "golden:1",
        "--disk",
        target.to_str().unwrap(),
    ]);
    assert_success(&out);
    let src = std::fs::read(&source).unwrap();
    let dst = std::fs::read(&target).unwrap();
    let mut file = std::fs::File::open(&source).unwrap();
    let layout = gpt::read(&mut file).unwrap().unwrap();
    let (used, parts) = usage::disk_usage(&mut file, src.len() as u64).unwrap();
    let kinds: Vec<&str> = parts.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ["FAT", "ext4"]);
    for p in &layout.partitions {
        let (start, end) = (p.first_lba * 512, (p.last_lba + 1) * 512);
        let mut at = start;
        for r in used.used_within(start, end) {
            assert!(
                dst[at as usize..r.start as usize].iter().all(|&b| b == 0),
                "free bytes {at}..{} of partition {} are zeros",
                r.start,
                p.number
            );
            assert!(
                dst[r.start as usize..r.end as usize] == src[r.start as usize..r.end as usize],
                "used bytes {r:?} of partition {} as on the source",
                p.number
            );
            at = r.end;
        }
        assert!(dst[at as usize..end as usize].iter().all(|&b| b == 0));
    }
    // And the file systems say so themselves.
    let root = dir.path().join("deployed-root.img");
    let p = &layout.partitions[1];
    std::fs::write(
        &root,
        &dst[(p.first_lba * 512) as usize..((p.last_lba + 1) * 512) as usize],
    )
    .unwrap();
    must(Command::new("e2fsck").args(["-fn"]).arg(&root));
    let big = Command::new("debugfs")
        .args(["-R", "cat /big.bin"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(big.stdout == noise(2, 3 << 20), "the root's file came over");
}

#[test]
fn a_disk_with_no_gpt_and_a_wrong_token_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    let served = serve_capturing(&repo, &[]);
    let source = source_disk(dir.path());
    let out = capture_with(&served, &source, "not-the-token-0123456789");
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("403"), "{err}");
    assert!(!repo.path().join("refs/golden").exists());
    let bare = dir.path().join("bare.img");
    std::fs::write(&bare, noise(7, MIB as usize)).unwrap();
    let out = capture_with(&served, &bare, TOKEN);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("has no GPT") && err.contains("sgdisk -g"),
        "{err}"
    );
}
