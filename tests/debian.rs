//! A stock Debian 12 image, built from Debian's packages with nothing of imprint
//! inside (boot/build-debian-os: debootstrap, systemd, Debian's kernel and
//! initrd, GRUB for BIOS and UEFI, root by filesystem UUID), boots straight from
//! its disk with SeaBIOS and with OVMF: the real distribution that deploys of
//! stock operating systems start from.

mod common;

use common::vm::*;
use common::*;
use imprint::format::state::{Agent, Mode};
use std::path::{Path, PathBuf};

/// Identities every version of the image shares (boot/build-debian-os).
const ROOT_UUID: &str = "0d5e6b1a-7c3f-4e29-9b8d-4a1f2c3e5d70";

fn boot_stock_debian(firmware: &str) {
    let image = debian_image("v1", false);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("debian.img");
    copy_sparse(&image, &disk);
    let vars = dir.path().join("vars.fd");
    let (status, console) = boot(
        dir.path(),
        &format!("debian-{firmware}"),
        Boot {
            firmware,
            vars: (firmware == "uefi").then_some(vars.as_path()),
            net: "none",
            // About 30 s under TCG; the rest is slack for a loaded machine.
            timeout: 180,
            ..Boot::default()
        },
        &[&disk],
    );
    assert!(status.success(), "{firmware} boot: {status:?}\n{console}");
    // GRUB from the image's own boot record or ESP read the root's grub.cfg:
    // its command line, with this version's marker, reached the kernel.
    assert_has(
        &console,
        &format!("root=UUID={ROOT_UUID} ro console=ttyS0 testos.marker=v1 testos.poweroff=1"),
    );
    // systemd brought the system up on that root and the report unit ran.
    assert_has(
        &console,
        &format!("debian-os: v1 booted, root=/dev/vda3 marker=v1 firmware={firmware}"),
    );
    assert_has(&console, "debian-os: powering off");
}

#[test]
fn stock_debian_boots_with_seabios() {
    require_qemu!();
    require_debian!();
    boot_stock_debian("bios");
}

#[test]
fn stock_debian_boots_with_ovmf() {
    require_qemu!();
    require_debian!();
    boot_stock_debian("uefi");
}

/// A repository serving the stock images, and blank disks for a machine.
struct Stock {
    repo: Repo,
    served: Served,
    disks: Vec<PathBuf>,
    firmware: &'static str,
    vars: PathBuf,
}

impl Stock {
    fn new(firmware: &'static str, versions: &[&str], disks: usize) -> Stock {
        let repo = Repo::new();
        for v in versions {
            let image = debian_image(v, false);
            add(&repo, &format!("debian:{v}"), image.to_str().unwrap());
        }
        let served = Served::start(&repo.path());
        let disks = (1..=disks)
            .map(|i| {
                let d = repo.file(&format!("disk{i}.img"));
                sparse_disk(&d, 3 << 30);
                d
            })
            .collect();
        let vars = repo.file("vars.fd");
        Stock {
            repo,
            served,
            disks,
            firmware,
            vars,
        }
    }

    fn run(&self, name: &str, append: Option<String>, disks: &[&Path]) -> String {
        let (status, console) = boot(
            self.repo.dir.path(),
            name,
            Boot {
                firmware: self.firmware,
                vars: (self.firmware == "uefi").then_some(self.vars.as_path()),
                net: if append.is_some() { "user" } else { "none" },
                append,
                timeout: 400,
            },
            disks,
        );
        assert!(status.success(), "{name}: {status:?}\n{console}");
        console
    }

    fn ramdisk(&self, name: &str, extra: &str) -> String {
        let append = cmdline(&self.served.url, extra);
        let disks: Vec<&Path> = self.disks.iter().map(|d| d.as_path()).collect();
        self.run(name, Some(append), &disks)
    }

    fn boot_disks(&self, name: &str) -> String {
        let disks: Vec<&Path> = self.disks.iter().map(|d| d.as_path()).collect();
        self.run(name, None, &disks)
    }
}

/// The report line of the OS that came up: its version, root device and marker.
fn came_up(console: &str, version: &str, root: &str, firmware: &str) {
    assert_has(
        console,
        &format!("debian-os: {version} booted, root={root} marker={version} firmware={firmware}"),
    );
}

fn stock_deploy_gets_the_agent_and_commits(firmware: &'static str) {
    let m = Stock::new(firmware, &["v1"], 1);
    let c = m.ramdisk(
        "deploy-v1",
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=stock-1",
    );
    assert_has(&c, "installed imprint as the first-boot agent");
    assert_has(&c, "handing off (reboot)");
    let record = read_state(&m.disks[0]).0;
    assert_eq!(record.agent, Agent::Installed { format: 1 });
    let unit = partition_file(
        &m.disks[0],
        3,
        "/etc/systemd/system/imprint-firstboot.service",
    );
    assert!(
        unit.contains("ExecStart=/usr/lib/imprint/imprint firstboot"),
        "{unit}"
    );

    let c = m.boot_disks("v1");
    came_up(&c, "v1", "/dev/vda3", firmware);
    assert_has(&c, "imprint firstboot: mode=deploy");
    assert_has(&c, "imprint firstboot: committed");
    let record = read_state(&m.disks[0]).0;
    assert_eq!(record.mode, Mode::Committed);
    assert_eq!(partition_file(&m.disks[0], 3, "/etc/hostname"), "stock-1\n");
}

#[test]
fn stock_debian_deploy_gets_the_agent_and_commits_bios() {
    require_qemu!();
    require_debian!();
    stock_deploy_gets_the_agent_and_commits("bios");
}

#[test]
fn stock_debian_deploy_gets_the_agent_and_commits_uefi() {
    require_qemu!();
    require_debian!();
    stock_deploy_gets_the_agent_and_commits("uefi");
}

/// v1 on disk 1, then an upgrade to v2 on disk 2 (same file system UUIDs in the
/// images): every boot comes up on v2's kernel command line and v2's root, until
/// a rollback brings back v1's, on every boot.
fn stock_upgrade_boots_the_new_os_every_time(firmware: &'static str) {
    let m = Stock::new(firmware, &["v1", "v2"], 2);
    m.ramdisk(
        "deploy-v1",
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=stock-2",
    );
    let c = m.boot_disks("v1");
    came_up(&c, "v1", "/dev/vda3", firmware);
    assert_has(&c, "imprint firstboot: committed");

    let c = m.ramdisk(
        "upgrade-v2",
        "imprint.mode=upgrade imprint.image=debian:v2 imprint.disk=/dev/vdb",
    );
    assert_has(&c, "previous OS on /dev/vda");
    assert_has(&c, &format!("file system {ROOT_UUID} is now "));
    assert_has(&c, "rewrote the file system references in /etc/fstab");
    assert_has(
        &c,
        "rewrote the file system references in /boot/grub/grub.cfg",
    );
    for i in 1..=3 {
        let c = m.boot_disks(&format!("v2-{i}"));
        // v2's GRUB configuration (its marker) and v2's root file system.
        came_up(&c, "v2", "/dev/vdb3", firmware);
        assert!(!c.contains(&format!("root=UUID={ROOT_UUID}")), "{c}");
        if i == 1 {
            assert_has(&c, "imprint firstboot: mode=upgrade");
            assert_has(&c, "imprint firstboot: committed");
        }
    }
    assert_eq!(read_state(&m.disks[1]).0.mode, Mode::Committed);
    // The previous disk still has its own identity and boots as it was.
    assert!(partition_file(&m.disks[0], 3, "/etc/fstab").contains(ROOT_UUID));
    // The previous disk taken out: v2 boots from its own disk alone.
    let c = m.run("v2-alone", None, &[m.disks[1].as_path()]);
    came_up(&c, "v2", "/dev/vda3", firmware);
}

#[test]
fn stock_debian_upgrade_boots_the_new_os_every_time_bios() {
    require_qemu!();
    require_debian!();
    stock_upgrade_boots_the_new_os_every_time("bios");
}

#[test]
fn stock_debian_upgrade_boots_the_new_os_every_time_uefi() {
    require_qemu!();
    require_debian!();
    stock_upgrade_boots_the_new_os_every_time("uefi");
}

/// An upgrade that never ran is rolled back (BIOS): v1's kernel command line and
/// v1's root on every boot after, with v2's disk still attached.
#[test]
fn stock_debian_bios_rollback_brings_back_v1() {
    require_qemu!();
    require_debian!();
    let m = Stock::new("bios", &["v1", "v2"], 2);
    m.ramdisk("deploy-v1", "imprint.image=debian:v1 imprint.disk=/dev/vda");
    let c = m.boot_disks("v1");
    assert_has(&c, "imprint firstboot: committed");
    m.ramdisk(
        "upgrade-v2",
        "imprint.mode=upgrade imprint.image=debian:v2 imprint.disk=/dev/vdb",
    );
    let c = m.ramdisk("rollback", "imprint.mode=rollback");
    assert_has(&c, "rollback: restored the boot record of /dev/vda");
    assert_eq!(read_state(&m.disks[1]).0.mode, Mode::RolledBack);
    for i in 1..=2 {
        let c = m.boot_disks(&format!("v1-again-{i}"));
        came_up(&c, "v1", "/dev/vda3", "bios");
        assert_has(&c, "imprint firstboot: nothing to do (committed)");
    }
}
