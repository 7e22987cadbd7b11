//! Disk images: blank and copied disks, images added to a repository, and
//! what a deploy, an upgrade or an OS left on a disk, read back.

use super::*;
use imprint::format::gpt;
use imprint::format::state;
use imprint::statepart;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Copies a disk image keeping its holes (std::fs::copy would fill them).
pub fn copy_sparse(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .args([from, to])
        .status()
        .expect("running cp");
    assert!(
        status.success(),
        "cp {} {}: {status:?}",
        from.display(),
        to.display()
    );
}

/// Adds an image with the default (1 MiB) chunk size; returns the manifest digest.
pub fn add(repo: &Repo, reference: &str, image: &str) -> String {
    add_with(repo, reference, image, &[])
}

/// [`add`] with more arguments to `image add` (`--chunk-size 16M`, ...).
pub fn add_with(repo: &Repo, reference: &str, image: &str, extra: &[&str]) -> String {
    let repo_path = repo.path();
    let mut args = vec![
        "image",
        "add",
        "--repo",
        repo_path.to_str().unwrap(),
        reference,
        image,
    ];
    args.extend_from_slice(extra);
    let out = imprint(&args);
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("digest")
        .to_string()
}

pub fn chunk_files(repo: &Repo) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(repo.path().join("chunks/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

pub fn sparse_disk(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// `count` blank 3 GiB disks, `disk1.img`... in the repository's directory:
/// room for the stock Debian images.
pub fn blank_disks(repo: &Repo, count: usize) -> Vec<PathBuf> {
    (1..=count)
        .map(|i| {
            let d = repo.file(&format!("disk{i}.img"));
            sparse_disk(&d, 3 << 30);
            d
        })
        .collect()
}

pub fn read_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The deployed disk holds the image everywhere except the GPT headers and the
/// state partition, which the deploy environment rewrites; the state record and
/// the relocated GPT read back.
pub fn check_deployed_disk(disk: &Path, image: &[u8], digest: &str, hostname: Option<&str>) {
    let mut f = std::fs::File::open(disk).unwrap();
    let disk_size = f.metadata().unwrap().len();
    let layout = gpt::read(&mut f)
        .unwrap()
        .expect("a GPT on the deployed disk");
    assert_eq!(
        layout.last_usable_lba,
        disk_size / 512 - 34,
        "GPT moved to the disk's end"
    );
    let mut backup = [0u8; 512];
    f.seek(SeekFrom::Start(disk_size - 512)).unwrap();
    f.read_exact(&mut backup).unwrap();
    assert_eq!(
        &backup[..8],
        b"EFI PART",
        "backup GPT header at the last sector"
    );

    let state_part = statepart::find(&layout).expect("state partition");
    let (start, len) = statepart::byte_range(&layout, state_part);
    let end = start + len;
    let mut on_disk = vec![0u8; image.len()];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut on_disk).unwrap();
    assert_eq!(&on_disk[..440], &image[..440], "boot code");
    let gpt_end = 34 * 512;
    for (i, (a, b)) in on_disk.iter().zip(image).enumerate().skip(gpt_end) {
        let in_state = (i as u64) >= start && (i as u64) < end;
        if !in_state && a != b {
            panic!("deployed disk differs from the image at byte {i}");
        }
    }
    let mut window = vec![0u8; (end - start) as usize];
    f.seek(SeekFrom::Start(start)).unwrap();
    f.read_exact(&mut window).unwrap();
    let (record, _) = state::read(&mut std::io::Cursor::new(window)).expect("state record");
    assert_eq!(record.mode, state::Mode::Deploy);
    assert_eq!(record.image_digest.to_string(), digest);
    assert_eq!(
        record.settings.get("hostname").map(String::as_str),
        hostname
    );
}

/// Disk 1's bytes, less its first sector and its state partition: what an upgrade
/// must leave alone.
pub fn untouchable(disk: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut bytes).unwrap();
    bytes[..512].fill(0);
    let p = statepart::find(&layout).unwrap();
    let (start, len) = statepart::byte_range(&layout, p);
    bytes[start as usize..(start + len) as usize].fill(0);
    bytes
}

/// The state record on a disk image.
pub fn read_state(disk: &Path) -> (state::Record, u64) {
    statepart::StateDisk::open(disk.to_str().unwrap())
        .expect("a state partition")
        .read_record()
        .unwrap()
}

/// A file from the ext4 root (partition "root") of a disk image, read with debugfs.
pub fn root_file(disk: &Path, path: &str) -> String {
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let number = layout
        .partitions
        .iter()
        .find(|p| p.name == "root")
        .unwrap()
        .number;
    partition_file(disk, number, path)
}

/// A file from the ext4 file system in partition `number` of a disk image.
pub fn partition_file(disk: &Path, number: u32, path: &str) -> String {
    partition_debugfs(disk, number, &format!("cat {path}"))
}

/// What debugfs prints for `request` (one of its commands) on ext4 partition
/// `number` of `disk`.
pub fn partition_debugfs(disk: &Path, number: u32, request: &str) -> String {
    let (dir, _) = partition_copy(disk, number);
    let img = dir.path().join("partition.img");
    let out = Command::new("debugfs")
        .args(["-R", request, img.to_str().unwrap()])
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A digest of a disk image's bytes except its first sector (the boot record)
/// and its state partition: what an upgrade must leave as it was on the
/// previous disk. Streams, holes and all, so multi-GiB images are fine.
pub fn untouchable_digest(disk: &Path) -> [u8; 32] {
    use sha2::Digest as _;
    use std::io::Read;
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let p = statepart::find(&layout).unwrap();
    let (start, len) = statepart::byte_range(&layout, p);
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (from, to) in [(0, 512), (start, start + len)] {
            let (a, b) = (from.max(at), to.min(at + n as u64));
            if a < b {
                buf[(a - at) as usize..(b - at) as usize].fill(0);
            }
        }
        hash.update(&buf[..n]);
        at += n as u64;
    }
    hash.finalize().into()
}

/// Writes `contents` as `path` (replacing any file there) into the ext4 file
/// system in partition `number` of a disk image, with debugfs: a change made
/// to a machine's configuration while it is off.
pub fn partition_write(disk: &Path, number: u32, path: &str, contents: &str) {
    let (dir, start) = partition_copy(disk, number);
    let img = dir.path().join("partition.img");
    let local = dir.path().join("contents");
    std::fs::write(&local, contents).unwrap();
    let debugfs = |request: &str| {
        Command::new("debugfs")
            .args(["-w", "-R", request, img.to_str().unwrap()])
            .output()
            .expect("debugfs (e2fsprogs)")
    };
    // Absent before: nothing to remove.
    debugfs(&format!("rm {path}"));
    let out = debugfs(&format!("write {} {path}", local.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read(&img).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    use std::io::Write;
    f.seek(SeekFrom::Start(start)).unwrap();
    f.write_all(&written).unwrap();
    f.sync_all().unwrap();
    assert_eq!(partition_file(disk, number, path), contents, "written");
}

/// Partition `number` of `disk` copied out, as `partition.img` in the
/// directory returned, and where it starts on the disk.
fn partition_copy(disk: &Path, number: u32) -> (tempfile::TempDir, u64) {
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let p = layout
        .partitions
        .iter()
        .find(|p| p.number == number)
        .unwrap();
    let mut buf = vec![0u8; ((p.last_lba - p.first_lba + 1) * 512) as usize];
    f.seek(SeekFrom::Start(p.first_lba * 512)).unwrap();
    f.read_exact(&mut buf).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("partition.img"), buf).unwrap();
    (dir, p.first_lba * 512)
}
