//! End-to-end: the deploy environment boots in QEMU (software emulation) from a
//! kernel and our initramfs, deploys a test OS from `imprint serve` on the host to
//! its virtio disk, and the firmware then boots the installed OS from that disk.
//! Assertions are on the serial console, the status events and the disk bytes.

mod common;

use common::vm::*;
use common::*;
use imprint::format::state;
use imprint::format::status::{Event, Phase};
use imprint::format::timing::Phase as Timed;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn deploy_then_boot(firmware: &str) {
    let a = artifacts();
    let repo = Repo::new();
    let image = read_file(&a.path("os-v1.img"));
    let digest = add(&repo, "os:v1", &a.path("os-v1.img"));
    let served = Served::start(&repo.path());
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 200 << 20);
    let vars = repo.file("vars.fd");
    let uefi = firmware == "uefi";
    let append = cmdline(
        &served.url,
        &format!(
            "imprint.image=os:v1 imprint.hostname=node-1 imprint.target=vm-{firmware} imprint.status={}/status",
            served.url.replace("127.0.0.1", "10.0.2.2")
        ),
    );
    let (status, console) = boot(
        repo.dir.path(),
        "deploy",
        Boot {
            firmware,
            vars: uefi.then_some(vars.as_path()),
            append: Some(append),
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "deploy VM: {status:?}\n{console}");
    // Every event on the console is one of this build's, in the order of a
    // deploy, each naming the machine.
    let events = status_events(&console);
    let mut phases: Vec<Phase> = events.iter().map(|e| e.event.phase()).collect();
    phases.dedup();
    assert_eq!(
        phases,
        [
            Phase::Booted,
            Phase::Hardware,
            Phase::NetworkUp,
            Phase::DiskSelected,
            Phase::Writing,
            Phase::BootRecords,
            Phase::Handoff,
            Phase::Complete,
        ],
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.target == format!("vm-{firmware}")));
    // What the machine has, said once its drivers were loaded: QEMU's, with
    // this test's disk (its size read back from the file) and NIC.
    let hardware = events
        .iter()
        .find_map(|e| match &e.event {
            Event::Hardware { hardware } => Some(hardware.clone()),
            _ => None,
        })
        .expect("no hardware event");
    println!(
        "hardware event: {}",
        console
            .lines()
            .find(|l| l.contains(r#""phase":"hardware""#))
            .unwrap_or_default()
    );
    assert_eq!(hardware.firmware, if uefi { "uefi" } else { "bios" });
    assert_eq!(hardware.arch, "x86_64");
    assert_eq!(hardware.dmi.vendor, "QEMU", "{hardware:?}");
    assert!(hardware.cpu.count >= 1 && !hardware.cpu.model.is_empty());
    assert!(hardware.memory > 64 << 20, "{hardware:?}");
    let vda = hardware.disks.iter().find(|d| d.name == "vda");
    assert_eq!(
        vda.map(|d| d.size),
        Some(std::fs::metadata(&disk).unwrap().len()),
        "{hardware:?}"
    );
    assert!(
        hardware
            .nics
            .iter()
            .any(|n| n.mac == "52:54:00:12:34:56" && n.driver == "virtio_net"),
        "{hardware:?}"
    );
    let last_written = events.iter().rev().find_map(|e| match e.event {
        Event::Writing { done, total, .. } => Some((done, total)),
        _ => None,
    });
    assert!(
        matches!(last_written, Some((d, t)) if d == t && t > 0),
        "{last_written:?}"
    );
    assert!(
        events.iter().any(|e| matches!(&e.event, Event::BootRecords { image, disk, .. } if *image == digest && disk == "/dev/vda")),
        "{events:?}"
    );
    assert_has(&console, "handing off (reboot)");
    // The test OS carries imprint: the deploy environment looks and leaves it.
    assert_has(&console, "the image carries its own first-boot agent");
    assert_eq!(read_state(&disk).0.agent, state::Agent::Own);
    assert_eq!(
        status_of(&served.url)[format!("vm-{firmware}")]["phase"],
        Phase::Complete.as_str()
    );
    // Where the time went, in the record: every phase of a network deploy, in
    // order, and the bytes by where they came from.
    let timings = read_state(&disk)
        .0
        .timings
        .expect("no timings in the record");
    let phases: Vec<Timed> = timings.phases.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        phases,
        [
            Timed::Drivers,
            Timed::Network,
            Timed::Manifest,
            Timed::Disk,
            Timed::Write,
            Timed::BootRecords
        ],
        "{timings:?}"
    );
    assert!(timings.get(Timed::Write) > Some(0), "{timings:?}");
    assert!(
        timings.started_ms > 0 && timings.handoff_at_ms > 0,
        "{timings:?}"
    );
    assert_eq!(
        timings.bytes.network,
        summary_figure(&console, "from_network"),
        "{timings:?}"
    );
    assert!(timings.bytes.network >= summary_figure(&console, "fetched"));
    assert_eq!(timings.bytes.target, summary_figure(&console, "skipped"));
    assert_eq!(timings.bytes.previous + timings.bytes.media, 0);
    assert!(
        timings.data.fetch_ms + timings.data.verify_ms > 0,
        "{timings:?}"
    );
    assert_line(&console, &["timings: drivers ", " write ", "% of "]);
    assert_has(&console, "\"timings\":{");
    // Checked before the installed OS runs: it mounts its root read-write.
    check_deployed_disk(&disk, &image, &digest, Some("node-1"));

    // The "reboot": the firmware now boots the installed OS from the disk.
    let (status, console) = boot(
        repo.dir.path(),
        "installed",
        Boot {
            firmware,
            vars: uefi.then_some(vars.as_path()),
            net: "none",
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "installed OS VM: {status:?}\n{console}");
    assert_has(&console, "test-os: v1 booted");
    assert_line(
        &console,
        &["imprint firstboot: disk=/dev/vda ", "(the disk holding /)"],
    );
    assert_has(&console, "imprint firstboot: mode=deploy");
    assert_has(&console, &format!("imprint firstboot: image=os {digest}"));
    assert_has(&console, "imprint firstboot: setting hostname=node-1");
    assert_has(&console, "imprint firstboot: committed");
    let (record, _) = read_state(&disk);
    assert_eq!(record.mode, state::Mode::Committed);
    assert_eq!(record.deployed_mode, state::Mode::Deploy);
    // The first boot added the hand-off (here: the deploy VM's power-off, the
    // test's checks and a new VM's firmware) and its own start.
    let after = record.timings.expect("the commit lost the timings");
    assert_eq!(after.phases[..timings.phases.len()], timings.phases[..]);
    assert!(after.get(Timed::Handoff) > Some(0), "{after:?}");
    let os = after.get(Timed::OsBoot).unwrap_or(0);
    assert!((100..120_000).contains(&os), "{after:?}");
    assert_line(
        &console,
        &[
            "imprint firstboot: timings: drivers ",
            " handoff ",
            " os-boot ",
        ],
    );
    assert_eq!(root_file(&disk, "/etc/hostname"), "node-1\n");
    assert_eq!(
        root_file(&disk, "/etc/imprint/settings/hostname"),
        "node-1\n"
    );
    if firmware == "bios" {
        // First boot again: nothing left to do, nothing changes.
        let (status, console) = boot(
            repo.dir.path(),
            "installed-again",
            Boot {
                net: "none",
                ..Boot::default()
            },
            &[&disk],
        );
        assert!(status.success(), "{console}");
        assert_has(&console, "imprint firstboot: nothing to do (committed)");
        assert_eq!(read_state(&disk).0.mode, state::Mode::Committed);
    }
}

/// A RAM-disk deploy (BIOS) with `extra` on the command line, reporting its
/// status events to `served`.
fn deploy_reporting(
    repo: &Repo,
    served: &Served,
    extra: &str,
    disk: &std::path::Path,
) -> (std::process::ExitStatus, String) {
    let append = cmdline(
        &served.url,
        &format!(
            "{extra} imprint.status={}/status",
            served.url.replace("127.0.0.1", "10.0.2.2")
        ),
    );
    boot(
        repo.dir.path(),
        "deploy",
        Boot {
            append: Some(append),
            ..Boot::default()
        },
        &[disk],
    )
}

#[test]
fn bios_ramdisk_deploy_then_seabios_boots_the_installed_os() {
    require_qemu!();
    deploy_then_boot("bios");
}

#[test]
fn uefi_ramdisk_deploy_then_ovmf_boots_the_installed_os() {
    require_qemu!();
    deploy_then_boot("uefi");
}

#[test]
fn kexec_handoff_boots_the_installed_kernel_without_firmware() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    let cmdline_of_os = std::fs::read_to_string(a.path("os-v1.img.cmdline")).unwrap();
    // This image has no imprint-state partition: the deploy environment adds one.
    let no_state = repo.file("no-state.img");
    std::fs::copy(a.path("os-v1.img"), &no_state).unwrap();
    let deleted = Command::new("sfdisk")
        .args(["-q", "--delete", no_state.to_str().unwrap(), "3"])
        .status()
        .unwrap();
    assert!(deleted.success());
    let out = imprint(&[
        "image",
        "add",
        "--repo",
        repo.path().to_str().unwrap(),
        "os:v1",
        no_state.to_str().unwrap(),
        "--boot-partition",
        "1",
        "--kernel",
        "/vmlinuz",
        "--initrd",
        "/initrd.img",
        "--cmdline",
        cmdline_of_os.trim(),
    ]);
    assert_success(&out);
    let served = Served::start(&repo.path());
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 200 << 20);
    let (status, console) = boot(
        repo.dir.path(),
        "kexec",
        Boot {
            append: Some(cmdline(
                &served.url,
                "imprint.image=os:v1 imprint.handoff=kexec",
            )),
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "{status:?}\n{console}");
    assert_has(&console, "created the imprint-state partition");
    assert_has(&console, "handing off (kexec /vmlinuz)");
    // One VM run: the installed OS came up through kexec, not the firmware.
    let after = &console[console.find("handing off (kexec").unwrap()..];
    assert_has(after, "test-os: v1 booted");
    assert_has(after, "imprint firstboot: mode=deploy");
}

#[test]
fn initramfs_is_deterministic_small_and_complete() {
    require_qemu!();
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str| {
        let out = dir.path().join(name);
        let status = Command::new(a.path("imprint"))
            .args(["initramfs", "build", "--out", out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(out).unwrap()
    };
    let one = build("a.img");
    assert_eq!(one, build("b.img"), "two builds differ");
    assert!(one.len() < 8 << 20, "initramfs is {} bytes", one.len());
    let cpio = zstd::stream::decode_all(&one[..]).unwrap();
    let text = String::from_utf8_lossy(&cpio);
    for needle in [
        "init\0",
        "sbin/modprobe",
        "dev/console",
        "modules.alias",
        "modules.dep",
        "virtio_blk.ko",
        "virtio_net.ko",
        "e1000e.ko",
        "nvme.ko",
        "ahci.ko",
        "usb-storage.ko",
        "xhci-pci.ko",
        "vfat.ko",
        "ext4.ko",
        "isofs.ko",
    ] {
        assert!(text.contains(needle), "initramfs lacks {needle}");
    }
    // A dynamically linked /init is refused with a clear message.
    let out = Command::new(a.path("imprint"))
        .args(["initramfs", "build", "--out"])
        .arg(dir.path().join("c.img"))
        .args(["--init", "/bin/ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dynamically linked"));
}

#[test]
fn corrupt_chunk_fails_clearly_and_the_disk_does_not_boot() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v2", &a.path("os-v2.img"));
    let v2_chunks = chunk_files(&repo);
    add(&repo, "os:v1", &a.path("os-v1.img"));
    // Corrupt the largest chunk that v1 has and v2 lacks.
    let mut only_v1: Vec<PathBuf> = chunk_files(&repo)
        .into_iter()
        .filter(|c| !v2_chunks.contains(c))
        .collect();
    only_v1.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let bad = only_v1.last().expect("v1 and v2 differ");
    let mut bytes = std::fs::read(bad).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(bad, bytes).unwrap();
    let bad_name = bad.file_name().unwrap().to_string_lossy().to_string();

    // The disk holds a bootable OS (v2) before: after the failed deploy of v1 it
    // must not boot.
    let disk = repo.file("disk.img");
    std::fs::copy(a.path("os-v2.img"), &disk).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let served = Served::start(&repo.path());
    let (status, console) = deploy_reporting(
        &repo,
        &served,
        "imprint.image=os:v1 imprint.target=corrupt",
        &disk,
    );
    assert!(
        status.success(),
        "deploy VM should power off: {status:?}\n{console}"
    );
    assert_has(&console, "deploy failed");
    assert_has(&console, &bad_name);
    assert_has(&console, &format!("\"phase\":\"{}\"", Phase::Failed));
    assert_has(&console, "powering off");
    let events = status_of(&served.url);
    assert_eq!(events["corrupt"]["phase"], Phase::Failed.as_str());
    assert!(
        events["corrupt"]["error"]
            .as_str()
            .unwrap()
            .contains(&bad_name)
    );

    let now = std::fs::read(&disk).unwrap();
    assert!(now[510..512] != [0x55, 0xAA], "boot signature must be gone");
    assert!(&now[512..520] != b"EFI PART", "primary GPT must be gone");
    let (_, console) = boot(
        repo.dir.path(),
        "after",
        Boot {
            net: "none",
            timeout: 25,
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(
        !console.contains("test-os"),
        "a half-written disk booted:\n{console}"
    );
}

#[test]
fn killed_half_way_the_next_boot_resumes() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    let image = read_file(&a.path("os-v1.img"));
    let digest = add(&repo, "os:v1", &a.path("os-v1.img"));
    let data_chunks = image
        .chunks(1 << 20)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64;
    // A slow repository, so the deploy is surely under way when the VM dies.
    let slow = FaultyServer::start(
        &repo.path(),
        Arc::new(|_: &str, _| Fault::None),
        Duration::from_millis(700),
        Duration::ZERO,
    );
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 200 << 20);
    let append = cmdline(&slow.url, "imprint.image=os:v1 imprint.jobs=2");
    let dir = repo.dir.path().to_path_buf();
    let disk2 = disk.clone();
    let vm = std::thread::spawn(move || {
        boot(
            &dir,
            "first",
            Boot {
                append: Some(append),
                ..Boot::default()
            },
            &[&disk2],
        )
    });
    let started = Instant::now();
    while slow.requests.load(std::sync::atomic::Ordering::Relaxed) < 16 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "deploy never got going"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Pull the plug.
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &format!("file={}", disk.display())])
        .status();
    let (_, console) = vm.join().unwrap();
    assert!(
        !console.contains("boot records written"),
        "killed too late:\n{console}"
    );
    // What the first boot left missing, judged by the disk's bytes (requests the
    // server counted may have been in flight, not yet written, at the kill).
    let missing = missing_data_chunks(&image, &std::fs::read(&disk).unwrap(), 1 << 20);
    assert!(missing < data_chunks, "nothing written before the kill");

    let served = Served::start(&repo.path());
    // This boot also shows the kernel's static ip= syntax instead of DHCP.
    let append = cmdline(
        &served.url,
        "imprint.image=os:v1 imprint.handoff=poweroff ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off",
    );
    let (status, console) = boot(
        repo.dir.path(),
        "second",
        Boot {
            append: Some(append),
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "{console}");
    assert_has(&console, "network up on eth0: 10.0.2.15/24 via 10.0.2.2");
    let line = console
        .lines()
        .find(|l| l.contains("deploy complete:"))
        .unwrap_or_else(|| panic!("no summary:\n{console}"));
    let fetched: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fetched_chunks="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    // At most what was missing (the first chunk among it: its boot records were
    // cleared first and are written last).
    assert!(
        fetched <= missing,
        "fetched {fetched} of {data_chunks} when {missing} were missing: {line}"
    );
    assert!(fetched < data_chunks, "{line}");
    check_deployed_disk(&disk, &image, &digest, None);
}

#[test]
fn no_dhcp_server_gives_a_clear_message_and_powers_off() {
    require_qemu!();
    let repo = Repo::new();
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 64 << 20);
    let (status, console) = boot(
        repo.dir.path(),
        "nodhcp",
        Boot {
            append: Some(cmdline(
                "http://127.0.0.1:9",
                "imprint.image=os:v1 imprint.dhcp-timeout=6",
            )),
            net: "dead",
            timeout: 120,
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(
        status.success(),
        "the error policy powers off: {status:?}\n{console}"
    );
    assert_has(&console, "no DHCP answer on eth0 within 6 s");
    assert_has(&console, &format!("\"phase\":\"{}\"", Phase::Failed));
    assert_has(&console, "powering off");
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
        "disk touched"
    );
}

#[test]
fn bad_command_line_is_reported_by_name_and_nothing_is_written() {
    require_qemu!();
    let repo = Repo::new();
    let disk = repo.file("disk.img");
    let before = noise(77, 8 << 20);
    std::fs::write(&disk, &before).unwrap();
    let (status, console) = boot(
        repo.dir.path(),
        "badcmdline",
        Boot {
            append: Some(cmdline(
                "http://127.0.0.1:9",
                "imprint.image=os:v1 imprint.colour=blue imprint.jobs=lots",
            )),
            timeout: 120,
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "{status:?}\n{console}");
    assert_has(&console, "imprint.colour: unknown key");
    assert_has(&console, "imprint.jobs: \"lots\" is not a number");
    assert_has(&console, "nothing was written");
    assert_has(&console, "powering off");
    assert!(
        !console.contains("network up"),
        "it went on despite the errors"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), before);
}

/// An image the machine cannot run is refused before its disk is touched,
/// with a message that names what the image needs: one that boots with UEFI
/// only, on a BIOS machine; one that needs a larger disk than the machine has;
/// one that needs a storage driver (NVMe) none of its devices is bound to.
#[test]
fn an_image_the_machine_does_not_meet_is_refused_before_anything_is_written() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add_with(
        &repo,
        "os:uefi-only",
        &a.path("os-v1.img"),
        &["--firmware", "uefi"],
    );
    add_with(&repo, "os:big", &a.path("os-v1.img"), &["--min-disk", "1G"]);
    add_with(
        &repo,
        "os:nvme",
        &a.path("os-v1.img"),
        &["--driver", "nvme"],
    );
    let served = Served::start(&repo.path());
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 200 << 20);
    let noise = noise(78, 8 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &noise))
        .unwrap();
    let before = std::fs::read(&disk).unwrap();
    for (image, why) in [
        (
            "os:uefi-only",
            "the image boots with UEFI firmware only; this machine started with BIOS (legacy boot)",
        ),
        (
            "os:big",
            "is too small: the image needs a disk of at least 1073741824 bytes",
        ),
        (
            "os:nvme",
            "the image needs a device bound to the driver nvme; none of this machine's is (it has ",
        ),
    ] {
        let name = image.replace(':', "-");
        let (status, console) = boot(
            repo.dir.path(),
            &name,
            Boot {
                append: Some(cmdline(
                    &served.url,
                    &format!(
                        "imprint.image={image} imprint.target={name} imprint.status={}/status",
                        served.url.replace("127.0.0.1", "10.0.2.2")
                    ),
                )),
                timeout: 180,
                ..Boot::default()
            },
            &[&disk],
        );
        assert!(status.success(), "{status:?}\n{console}");
        assert_has(&console, why);
        assert_has(&console, "nothing was written");
        assert_has(&console, "powering off");
        let failed = status_events(&console)
            .into_iter()
            .find_map(|e| match e.event {
                Event::Failed { error } => Some(error),
                _ => None,
            })
            .expect("a failed event");
        assert!(failed.contains(why), "{failed}");
        assert_eq!(status_of(&served.url)[&name]["phase"], "failed");
        assert!(
            std::fs::read(&disk).unwrap() == before,
            "{image}: the disk was written"
        );
    }
}

/// An image whose root the deploy environment cannot mount (btrfs; it carries
/// ext4 only): the deploy completes and says what it skipped and why, on the
/// console and in its status; the disk boots, and its own imprint commits.
#[test]
fn a_root_the_deploy_environment_cannot_mount_is_skipped_and_the_disk_boots() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:btrfs", &a.path("os-btrfs.img"));
    let served = Served::start(&repo.path());
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 300 << 20);
    let (status, console) = deploy_reporting(
        &repo,
        &served,
        "imprint.image=os:btrfs imprint.hostname=node-b imprint.target=btrfs",
        &disk,
    );
    assert!(status.success(), "deploy VM: {status:?}\n{console}");
    let why = "no first-boot agent installed: no root file system found (/dev/vda2 holds btrfs; the deploy environment reads ext4 roots only)";
    assert_has(&console, why);
    // The same words in the boot-records status event.
    assert_has(&console, &format!("\"agent\":\"{why}\""));
    assert_has(&console, "handing off (reboot)");
    assert_eq!(
        status_of(&served.url)["btrfs"]["phase"],
        Phase::Complete.as_str()
    );
    match read_state(&disk).0.agent {
        state::Agent::Skipped(reason) => assert!(reason.contains("btrfs"), "{reason}"),
        other => panic!("agent {other:?}"),
    }

    let (status, console) = boot(
        repo.dir.path(),
        "installed",
        Boot {
            net: "none",
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "installed OS VM: {status:?}\n{console}");
    assert_has(&console, "test-os: btrfs booted");
    assert_has(&console, "imprint firstboot: committed");
    assert_eq!(read_state(&disk).0.mode, state::Mode::Committed);
}

/// A replayed signature cannot take a machine back: `os:stable` was signed for
/// v1 (issued 2000) and then for v2 (issued 3000); a blank disk refuses v1
/// below its `imprint.min-issued=`; v2 is on the disk; the ref pointed back at
/// v1's manifest (whose old `stable` signature still verifies) is refused and
/// nothing is written, unless the operator allows a downgrade.
#[test]
fn an_older_signed_release_does_not_replace_a_newer_one() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    let r = repo.path();
    let (key, public) = keygen(&repo);
    let add = |image: &str, issued: &str| {
        let out = imprint(&[
            "image",
            "add",
            "--repo",
            r.to_str().unwrap(),
            "os:stable",
            image,
            "--sign-key",
            key.to_str().unwrap(),
            "--issued",
            issued,
        ]);
        assert_success(&out);
        std::fs::read_to_string(r.join("refs/os/stable")).unwrap()
    };
    let v1 = add(&a.path("os-v1.img"), "2000");
    let v2 = add(&a.path("os-v2.img"), "3000");
    let served = Served::start(&r);
    let disk = repo.file("disk.img");
    sparse_disk(&disk, 300 << 20);
    let deploy = |name: &str, extra: &str| {
        let append = cmdline(
            &served.url,
            &format!("imprint.image=os:stable imprint.pubkey={public} {extra}"),
        );
        let (status, console) = boot(
            repo.dir.path(),
            name,
            Boot {
                append: Some(append),
                ..Boot::default()
            },
            &[&disk],
        );
        assert!(status.success(), "{name}: {status:?}\n{console}");
        console
    };
    // A blank disk has no record to refuse an old release by: the command
    // line's floor does it (a replayed v1 while v2 is current).
    std::fs::write(r.join("refs/os/stable"), &v1).unwrap();
    let c = deploy("fresh-floor", "imprint.min-issued=2500");
    assert_has(
        &c,
        "was issued at 2000 (Unix time), before 2500, the earliest this machine takes (imprint.min-issued): a newer release is wanted; nothing was written",
    );
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
        "the blank disk was written"
    );
    std::fs::write(r.join("refs/os/stable"), &v2).unwrap();
    let c = deploy("deploy-v2", "imprint.min-issued=2500");
    assert_has(&c, "handing off (reboot)");
    let record = read_state(&disk).0;
    assert_eq!(record.image_digest.to_string(), v2.trim());
    assert_eq!(record.release.as_ref().map(|r| r.issued), Some(3000));

    std::fs::write(r.join("refs/os/stable"), &v1).unwrap();
    let before = std::fs::read(&disk).unwrap();
    let c = deploy("replayed-v1", "");
    assert_has(
        &c,
        "refusing to go back to an older release; nothing was written",
    );
    assert!(std::fs::read(&disk).unwrap() == before, "the disk changed");

    let c = deploy("downgrade-v1", "imprint.allow-downgrade");
    assert_has(
        &c,
        "going back to the older release (imprint.allow-downgrade)",
    );
    assert_has(&c, "handing off (reboot)");
    let record = read_state(&disk).0;
    assert_eq!(record.image_digest.to_string(), v1.trim());
    assert_eq!(record.release.map(|r| r.issued), Some(2000));
}
