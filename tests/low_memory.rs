//! End-to-end, in QEMU: a deploy environment with little memory. A 256 MiB
//! machine deploys a 4 GiB image with fewer chunks in flight than asked; a
//! chunk larger than its memory allows is refused before it is fetched; a
//! deploy the kernel kills for memory is reported and the error policy
//! followed.

mod common;

use common::vm::*;
use common::*;
use imprint::format::state;
use imprint::format::status::Phase;

/// A 256 MiB machine deploys a 4 GiB image whose chunks (16 MiB) and
/// `imprint.jobs=32` would ask for over 1 GiB of buffers: the deploy keeps as
/// many chunks in flight as half its available memory holds, completes, and
/// says what memory it used at its peak.
#[test]
fn a_256_mib_machine_deploys_a_4_gib_image() {
    require_qemu!();
    let repo = Repo::new();
    let image = repo.file("big.img");
    let size: u64 = 4 << 30;
    sparse_disk(&image, size);
    sfdisk(&image, "label: gpt\nsize=4000MiB, type=linux\n");
    // 16 MiB of data every 256 MiB, the rest zeros: 256 MiB to fetch and check.
    let data_chunks = 16u64;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    for i in 0..data_chunks {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&noise(i, 16 << 20), (64 << 20) + i * (256 << 20))
            .unwrap();
    }
    add_with(
        &repo,
        "os:big",
        image.to_str().unwrap(),
        &["--chunk-size", "16M"],
    );
    let served = Served::start(&repo.path());
    let disk = repo.file("disk.img");
    sparse_disk(&disk, size + (64 << 20));
    let append = cmdline(
        &served.url,
        "imprint.image=os:big imprint.jobs=32 imprint.handoff=poweroff",
    );
    let (status, console) = boot(
        repo.dir.path(),
        "deploy",
        Boot {
            append: Some(append),
            memory: 256,
            timeout: 600,
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "{status:?}\n{console}");
    assert_line(&console, &["chunks in flight, not 32: each needs 34 MiB"]);
    // The data pass covers every chunk but the first, written with the head.
    assert_eq!(summary_figure(&console, "bytes"), size - (16 << 20));
    // And the last chunk holds the image's backup GPT.
    assert_eq!(summary_figure(&console, "fetched_chunks"), data_chunks + 1);
    let peak = summary_figure(&console, "memory_peak");
    let available = summary_figure(&console, "memory_available");
    eprintln!(
        "256 MiB machine, 4 GiB image: peak resident memory {} MiB of {} MiB available",
        peak >> 20,
        available >> 20
    );
    assert!(available < 256 << 20, "{available}");
    // The chunk buffers take at most half of what was available; the binary,
    // the manifest and the HTTP connections fit in what is left of 60%.
    assert!(peak < available / 10 * 6, "peak {peak} of {available}");
    // Every byte of the image's partition is on the disk, read back.
    let (record, _) = read_state(&disk);
    assert_eq!(record.mode, state::Mode::Deploy);
    let part = 1 << 20..(1 << 20) + (4000 << 20);
    assert!(
        same_range(&image, &disk, part.clone()),
        "the disk's bytes {part:?} differ from the image's"
    );
}

/// A chunk size the machine's memory cannot hold even once is refused before
/// anything is written, reported as the failure, and the policy followed. (The
/// deploy runs in a child process, so a deploy the kernel kills for memory is
/// reported by PID 1 too; with the memory bound, no setting makes one.)
#[test]
fn a_chunk_larger_than_the_memory_allows_is_refused_and_the_policy_followed() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add_with(
        &repo,
        "os:big-chunks",
        &a.path("os-v1.img"),
        &["--chunk-size", "64M"],
    );
    let served = Served::start(&repo.path());
    let disk = repo.file("disk.img");
    // The disk holds an OS already.
    std::fs::copy(a.path("os-v1.img"), &disk).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(300 << 20).unwrap();
    let before = std::fs::read(&disk).unwrap();
    let append = cmdline(
        &served.url,
        &format!(
            "imprint.image=os:big-chunks imprint.jobs=4 imprint.target=small imprint.status={}/status",
            served.url.replace("127.0.0.1", "10.0.2.2")
        ),
    );
    let (status, console) = boot(
        repo.dir.path(),
        "deploy",
        Boot {
            append: Some(append),
            memory: 192,
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(
        status.success(),
        "deploy VM should power off: {status:?}\n{console}"
    );
    assert_line(
        &console,
        &[
            "deploy failed: ",
            "one chunk in flight needs 130 MiB (the image's chunks are 64 MiB)",
            "smaller --chunk-size",
        ],
    );
    assert_has(&console, "powering off");
    let events = status_of(&served.url);
    assert_eq!(events["small"]["phase"], Phase::Failed.as_str(), "{events}");
    assert!(
        events["small"]["error"]
            .as_str()
            .unwrap()
            .contains("give it more memory"),
        "{events}"
    );
    // Refused before the first write: the old OS on the disk is untouched.
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the refused deploy wrote to the disk"
    );
}

/// The kernel's out-of-memory killer takes the deploy mid-write (QEMU's
/// monitor presses SysRq-F, the kernel's own "manual OOM kill", which picks
/// the largest process as it would when memory runs out): PID 1, which the
/// killer never takes, reports the kill as a failed event (with the deploy's
/// name) and follows the policy, here a power off.
#[test]
fn a_deploy_the_kernel_kills_for_memory_is_reported_and_the_policy_followed() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    let served = Served::start(&repo.path());
    let dir = repo.dir.path().to_path_buf();
    let disk = dir.join("disk.img");
    sparse_disk(&disk, 300 << 20);
    let socket = dir.join("monitor.sock");
    let append = cmdline(
        &served.url,
        &format!(
            "imprint.image=os:v1 imprint.target=oom imprint.on-error=poweroff sysrq_always_enabled imprint.status={}/status",
            served.url.replace("127.0.0.1", "10.0.2.2")
        ),
    );
    let vm = {
        let (dir, disk, socket) = (dir.clone(), disk.clone(), socket.clone());
        std::thread::spawn(move || {
            boot(
                &dir,
                "oom",
                Boot {
                    append: Some(append),
                    // Slow enough that the key lands while it writes.
                    write_iops: &[8],
                    monitor: Some(&socket),
                    timeout: 300,
                    ..Boot::default()
                },
                &[&disk],
            )
        })
    };
    let console = dir.join("oom.console");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains(r#""phase":"writing""#)
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(240),
            "the deploy never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    monitor(&socket, "sendkey alt-sysrq-f");
    let (status, c) = vm.join().unwrap();
    assert!(status.success(), "the VM should power off: {status:?}\n{c}");
    assert_has(
        &c,
        "the deploy process was killed (signal 9), most likely by the kernel for want of memory",
    );
    assert_has(&c, "powering off");
    let events = status_of(&served.url);
    assert_eq!(events["oom"]["phase"], Phase::Failed.as_str(), "{events}");
    assert!(
        events["oom"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("killed (signal 9)"),
        "{events}"
    );
}

/// Whether files `a` and `b` hold the same bytes in `range`.
fn same_range(a: &std::path::Path, b: &std::path::Path, range: std::ops::Range<u64>) -> bool {
    use std::os::unix::fs::FileExt;
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 16 << 20], vec![0u8; 16 << 20]);
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(ba.len() as u64) as usize;
        fa.read_exact_at(&mut ba[..n], at).unwrap();
        fb.read_exact_at(&mut bb[..n], at).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        at += n as u64;
    }
    true
}
