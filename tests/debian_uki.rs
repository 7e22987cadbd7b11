//! A stock Debian 12 built the systemd way by Debian's mkosi
//! (boot/build-debian-uki): systemd-boot on the ESP starting a unified kernel
//! image, the root partition found by its Discoverable Partitions type, no
//! `root=` anywhere. The deploy environment starts it by kexec as systemd-boot
//! would: the UKI's own kernel, initrd and command line, with the root partition
//! named (`root=PARTUUID=`) since no boot loader tells systemd which disk it
//! came from.

mod common;

use common::machine::*;
use common::vm::*;
use common::*;
use imprint::format::dps;
use imprint::format::gpt;
use imprint::format::state::Mode;
use std::path::{Path, PathBuf};

/// The image's x86-64 root partition: its number and PARTUUID (as the kernel
/// command line names it).
fn dps_root(disk: &Path) -> (u32, String) {
    let mut f = std::fs::File::open(disk).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let roots: Vec<_> = layout
        .partitions
        .iter()
        .filter(|p| p.type_guid == dps::ROOT_X86_64)
        .collect();
    assert_eq!(roots.len(), 1, "{layout:?}");
    (
        roots[0].number,
        roots[0].unique_guid.to_string().to_ascii_lowercase(),
    )
}

/// The kernel command line a report line shows.
fn cmdline_of(line: &str) -> &str {
    line.split_once(" cmdline=").map_or("", |(_, c)| c)
}

/// The line the image's report unit prints once the system is up.
fn came_up<'a>(console: &'a str, version: &str, root: &str) -> &'a str {
    let prefix = format!("debian-uki: {version} booted, root={root} loader=");
    console
        .lines()
        .find(|l| l.contains(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{console}"))
}

/// A repository with the UKI image (by version, and others), served by
/// `imprint serve`, and a UEFI machine with blank disks.
struct Rig {
    repo: Repo,
    served: Served,
    machine: Machine,
}

impl Rig {
    fn new(images: &[(&str, PathBuf)], disks: usize) -> Rig {
        let repo = Repo::new();
        for (reference, image) in images {
            add(&repo, reference, image.to_str().unwrap());
        }
        let served = Served::start(&repo.path());
        let machine = Machine::new(repo.dir.path(), "uefi")
            .with_disks(blank_disks(&repo, disks))
            .repo(&served.url)
            .timeout(600);
        Rig {
            repo,
            served,
            machine,
        }
    }

    /// The UKI image's `versions` as `debian:VERSION`.
    fn versions(versions: &[&str], disks: usize) -> Rig {
        let images: Vec<(String, PathBuf)> = versions
            .iter()
            .map(|v| (format!("debian:{v}"), debian_image(v, Debian::Uki)))
            .collect();
        let images: Vec<(&str, PathBuf)> = images
            .iter()
            .map(|(r, i)| (r.as_str(), i.clone()))
            .collect();
        Rig::new(&images, disks)
    }

    /// One static boot script for every machine, with `args`: the machine's
    /// network boot.
    fn network(mut self, args: &str) -> Rig {
        let net = static_boot_script(&self.repo, &self.served.url, args);
        self.machine.net = net;
        self
    }

    /// A run that ends by itself, Debian never in its emergency mode.
    fn run(&self, name: &str, start: Start) -> String {
        let c = self.machine.run(name, start);
        assert!(!c.contains("emergency mode"), "{name}:\n{c}");
        c
    }

    fn disk(&self, i: usize) -> &Path {
        &self.machine.disks[i]
    }
}

/// A network-first machine: its empty disk deploys with
/// `imprint.handoff=kexec` and the deploy environment starts Debian at once by
/// kexec of the UKI systemd-boot would choose; on the next network boot the
/// disk already holds the image, so nothing is fetched and Debian starts the
/// same way (deploy-once). Then an upgrade to v2 on the second disk, from the
/// same build (the same partition GUIDs): the new disk's partitions get fresh
/// GUIDs, v2 starts by kexec on its own root (named by its new PARTUUID, which
/// only disk 2 has), commits, and from then on boots from disk 2 through the
/// firmware and systemd-boot, both disks attached (once in CI, three times in
/// the full matrix).
#[test]
fn systemd_boot_uki_image_starts_by_kexec_on_every_network_boot_and_after_an_upgrade() {
    require_qemu!();
    require_debian!();
    let image = debian_image("v1", Debian::Uki);
    let m = Rig::versions(&["v1", "v2"], 2).network(
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=uki-1 imprint.handoff=kexec",
    );
    let disk = m.disk(0).to_path_buf();
    let (root_number, partuuid) = dps_root(&image);
    let uki = "/EFI/Linux/mkosi-debian-";

    let c = m.run("deploy", Start::Network);
    assert_has(&c, "install step done: write-head");
    assert_has(&c, "installed imprint as the first-boot agent");
    assert_has(&c, "the ESP (/dev/vda1) boots systemd-boot");
    // Of kernel-install's entry and the UKI, systemd-boot starts the UKI.
    assert_has(&c, "systemd-boot would start mkosi-debian-");
    assert_has(&c, "(the first in its menu, 2 entries)");
    assert_has(&c, &format!("handing off (kexec {uki}"));
    let line = came_up(&c, "v1", &format!("/dev/vda{root_number}"));
    // No boot loader started it; the UKI's own command line, with the root
    // partition named by the deploy environment.
    assert!(line.contains(" loader=none "), "{line}");
    assert!(
        line.contains("console=ttyS0 testos.poweroff=1 rw"),
        "{line}"
    );
    assert!(
        line.contains(&format!("root=PARTUUID={partuuid}")),
        "{line}"
    );
    assert_has(&c, "imprint firstboot: committed");
    assert_has(&c, "debian-uki: status: mode        committed");
    assert_has(&c, "debian-uki: status: handoff     kexec at ");
    let record = read_state(&disk).0;
    assert_eq!(record.mode, Mode::Committed);
    assert_eq!(record.handoff.map(|h| h.done), Some("kexec".to_string()));
    assert_eq!(
        partition_file(&disk, root_number, "/etc/hostname"),
        "uki-1\n"
    );

    let c = m.run("again", Start::Network);
    assert_has(&c, "already holds debian sha256:");
    assert!(!c.contains("install step done"), "{c}");
    assert_has(&c, &format!("starting the installed OS by kexec of {uki}"));
    let line = came_up(&c, "v1", &format!("/dev/vda{root_number}"));
    assert!(line.contains(" loader=none "), "{line}");
    assert_has(&c, "imprint firstboot: nothing to do (committed)");

    let (_, image_partuuid) = dps_root(&debian_image("v2", Debian::Uki));
    let c = m.run(
        "upgrade-v2",
        Start::RamDisk("imprint.mode=upgrade imprint.image=debian:v2 imprint.disk=/dev/vdb imprint.handoff=kexec"),
    );
    assert_has(&c, "previous OS on /dev/vda");
    assert_has(
        &c,
        &format!(
            "partition {root_number} (Root Partition) of the new disk had the same GUID as one on the previous disk; it is now "
        ),
    );
    let (_, new_partuuid) = dps_root(m.disk(1));
    assert_ne!(new_partuuid, image_partuuid);
    assert_eq!(dps_root(m.disk(0)).1, image_partuuid, "disk 1 untouched");
    let line = came_up(&c, "v2", &format!("/dev/vdb{root_number}"));
    assert!(line.contains(" loader=none "), "{line}");
    assert!(
        line.contains(&format!("root=PARTUUID={new_partuuid}")),
        "{line}"
    );
    assert_has(&c, "imprint firstboot: mode=upgrade");
    // Started by kexec: disk 2's own entry goes first, not how the deploy
    // environment was booted.
    assert_has(&c, "is now the first disk in BootOrder");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(
        read_state(m.disk(1)).0.handoff.map(|h| h.done),
        Some("kexec".to_string())
    );

    let boots = if full_matrix() { 3 } else { 1 };
    for i in 1..=boots {
        let c = m.run(&format!("v2-{i}"), Start::Disks);
        let line = came_up(&c, "v2", &format!("/dev/vdb{root_number}"));
        // systemd-boot started it, and systemd found the root by its type.
        assert!(line.contains(" loader=systemd-boot-"), "{line}");
        assert!(!cmdline_of(line).contains("root="), "{line}");
        assert_has(&c, "debian-uki: status: mode        committed");
    }
    assert_eq!(read_state(m.disk(1)).0.mode, Mode::Committed);
    assert_eq!(
        partition_file(m.disk(1), root_number, "/etc/hostname"),
        "uki-1\n"
    );
}

/// A copy of the UKI image whose systemd-boot starts the UKI as an EFI program
/// (a type #1 `efi` entry, made the default in `loader.conf`): systemd-boot
/// boots it, but it is nothing the deploy environment starts by kexec. Returns
/// the image and the UKI's path on the ESP.
fn uki_image_with_an_efi_default(dir: &Path) -> (PathBuf, String) {
    let image = dir.join("debian-uki-efi-default.img");
    copy_sparse(&debian_image("v1", Debian::Uki), &image);
    let mut f = std::fs::File::open(&image).unwrap();
    let layout = gpt::read(&mut f).unwrap().unwrap();
    let esp = layout
        .partitions
        .iter()
        .find(|p| p.type_guid == gpt::ESP_TYPE)
        .unwrap();
    let at = format!("{}@@{}", image.display(), esp.first_lba * 512);
    let listed = std::process::Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i", &at, "::/EFI/Linux"])
        .output()
        .expect("mdir (mtools)");
    assert!(listed.status.success(), "{listed:?}");
    let uki = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|l| l.ends_with(".efi"))
        .map(|l| l.trim_start_matches(':').to_string())
        .expect("no UKI in /EFI/Linux");
    let entry = dir.join("by-efi.conf");
    std::fs::write(
        &entry,
        format!("title Debian, its UKI as an EFI program\nefi {uki}\n"),
    )
    .unwrap();
    let conf = dir.join("loader.conf");
    std::fs::write(&conf, "default by-efi.conf\n").unwrap();
    for (file, to) in [
        (&entry, "::/loader/entries/"),
        (&conf, "::/loader/loader.conf"),
    ] {
        let out = std::process::Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &at])
            .arg(file)
            .arg(to)
            .output()
            .expect("mcopy (mtools)");
        assert!(out.status.success(), "{out:?}");
    }
    (image, uki)
}

/// The deploy environment cannot start what systemd-boot would (an EFI
/// program), so it does not kexec: it says why on the console, in the hand-off
/// event and in the record, and reboots with the disk set to boot once
/// (`BootNext`), where systemd-boot starts Debian, which commits. The next
/// network boot (the disk already holding the image) does the same, writing
/// nothing.
#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in the unit tests of that choice (src/format/sdboot.rs, src/format/dps.rs) and of the BootNext fall-back's load options"]
fn an_entry_kexec_cannot_start_is_rebooted_into_through_the_firmware() {
    require_qemu!();
    require_debian!();
    let dir = tempfile::tempdir().unwrap();
    let (image, uki) = uki_image_with_an_efi_default(dir.path());
    let m = Rig::new(&[("debian:efi", image.clone())], 1)
        .network("imprint.image=debian:efi imprint.disk=/dev/vda imprint.handoff=kexec");
    let disk = m.disk(0).to_path_buf();
    let why = format!(
        "systemd-boot's entry by-efi.conf starts the EFI program {uki}, which kexec cannot start"
    );
    let why = why.as_str();
    let c = m.run("deploy", Start::Network);
    assert_has(&c, "install step done: write-head");
    assert_has(
        &c,
        "systemd-boot would start by-efi.conf (loader.conf's default, 3 entries)",
    );
    let refused = format!(
        "not starting the installed OS by kexec: {why}; rebooting through the firmware into /dev/vda instead"
    );
    assert_has(&c, &refused);
    assert_line(
        &c,
        &[
            "imprint-status: ",
            "\"handoff\":\"reboot\"",
            &format!("\"not_kexec\":\"{why}\""),
        ],
    );
    assert_has(&c, "boots /dev/vda once (BootNext), not the network");
    assert!(!c.contains("debian-uki: v1 booted"), "{c}");

    // The network is still first in the boot order; BootNext wins once.
    let c = m.run("disk-once", Start::Network);
    let (root_number, _) = dps_root(&image);
    let line = came_up(&c, "v1", &format!("/dev/vda{root_number}"));
    assert!(line.contains(" loader=systemd-boot-"), "{line}");
    assert_has(&c, "imprint firstboot: committed");
    // The record says how it was handed over, and why, as the OS's status does.
    let (record, generation) = read_state(&disk);
    assert_eq!(record.mode, Mode::Committed);
    let note = record.handoff.expect("no hand-off note in the record");
    assert_eq!((note.done.as_str(), note.why.as_str()), ("reboot", why));
    assert_has(
        &c,
        &format!(
            "debian-uki: status: handoff     reboot, not kexec, at {} (Unix time): {why}",
            note.at
        ),
    );

    // Deploy once: the disk holds the image; the same refusal, the same
    // BootNext, and nothing written (the record says so already).
    let c = m.run("again", Start::Network);
    assert_has(&c, "already holds debian sha256:");
    assert_has(&c, &refused);
    assert_has(&c, "boots /dev/vda once (BootNext), not the network");
    assert!(!c.contains("debian-uki: v1 booted"), "{c}");
    assert_eq!(read_state(&disk).1, generation, "the record was written");
}
