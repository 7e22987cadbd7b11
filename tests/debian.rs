//! A stock Debian 12 image, built from Debian's packages with nothing of imprint
//! inside (boot/build-debian-os: debootstrap, systemd, Debian's kernel and
//! initrd, GRUB for BIOS and UEFI, root by filesystem UUID), boots straight from
//! its disk with SeaBIOS and with OVMF: the real distribution that deploys of
//! stock operating systems start from.

mod common;

use common::machine::*;
use common::vm::*;
use common::*;
use imprint::format::state::{Agent, Mode};
use imprint::format::timing::Phase as Timed;
use imprint::statepart::StateDisk;
use std::io::Write;
use std::path::Path;
use std::process::ExitStatus;

/// Identities every version of the image shares (boot/build-debian-os).
const ROOT_UUID: &str = "0d5e6b1a-7c3f-4e29-9b8d-4a1f2c3e5d70";

fn boot_stock_debian(firmware: &'static str) {
    let image = debian_image("v1", Debian::Stock);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("debian.img");
    copy_sparse(&image, &disk);
    let console = Machine::new(dir.path(), firmware)
        .with_disks([disk])
        // About 30 s under TCG; the rest is slack for a loaded machine.
        .timeout(180)
        .boot_disks(&format!("debian-{firmware}"));
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
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in the stock Debian deploys, which boot it from its disk under SeaBIOS"]
fn stock_debian_boots_with_seabios() {
    require_qemu!();
    require_debian!();
    boot_stock_debian("bios");
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_from_a_usb_stick_then_an_upgrade_that_never_comes_up_falls_back, which boots it from its disk under OVMF"]
fn stock_debian_boots_with_ovmf() {
    require_qemu!();
    require_debian!();
    boot_stock_debian("uefi");
}

/// A repository serving the stock images, and a machine with blank disks
/// deploying from it.
struct Stock {
    repo: Repo,
    /// The repository's server, running as long as the machine.
    _served: Served,
    machine: Machine,
}

impl std::ops::Deref for Stock {
    type Target = Machine;

    fn deref(&self) -> &Machine {
        &self.machine
    }
}

impl Stock {
    fn new(firmware: &'static str, versions: &[&str], disks: usize) -> Stock {
        let images: Vec<(&str, Debian)> = versions.iter().map(|v| (*v, Debian::Stock)).collect();
        Stock::of(firmware, &images, disks)
    }

    /// A repository with `debian:VERSION` for each image given.
    fn of(firmware: &'static str, images: &[(&str, Debian)], disks: usize) -> Stock {
        let repo = Repo::new();
        for (v, kind) in images {
            let image = debian_image(v, *kind);
            add(&repo, &format!("debian:{v}"), image.to_str().unwrap());
        }
        let served = Served::start(&repo.path());
        let machine = Machine::new(repo.dir.path(), firmware)
            .with_disks(blank_disks(&repo, disks))
            .repo(&served.url)
            .timeout(400);
        Stock {
            repo,
            _served: served,
            machine,
        }
    }

    /// A run of the deploy environment with `extra`, whose power is cut on a
    /// console line (`qemu/run --cut-on`), disk 1's writes slowed so that one
    /// begun is still under way when the cut comes.
    fn cut(&self, name: &str, extra: &str, on: &str, after_ms: u64) -> (ExitStatus, String) {
        self.machine
            .cut(name, Start::RamDisk(extra), on, after_ms, &[2, 1_000_000])
    }

    /// After an upgrade to v2 on disk 2: v2 comes up on its own GRUB
    /// configuration and root `boots` times, the first migrating and
    /// committing; the host's name came over from v1 (v2's image says
    /// `debian`).
    fn upgraded_boots_every_time(&self, boots: usize, hostname: &str) {
        for i in 1..=boots {
            let c = self.boot_disks(&format!("v2-{i}"));
            came_up(&c, "v2", "/dev/vdb3", self.firmware);
            assert!(!c.contains(&format!("root=UUID={ROOT_UUID}")), "{c}");
            if i == 1 {
                assert_has(&c, "imprint firstboot: mode=upgrade");
                assert_has(&c, "imprint firstboot: migrated /etc/hostname");
                assert_has(&c, "imprint firstboot: committed");
            }
            status_says(&c, "committed");
        }
        assert_eq!(read_state(&self.disks[1]).0.mode, Mode::Committed);
        assert_eq!(
            partition_file(&self.disks[1], 3, "/etc/hostname"),
            format!("{hostname}\n")
        );
    }
}

/// The report line of the OS that came up: its version, root device and marker.
fn came_up(console: &str, version: &str, root: &str, firmware: &str) {
    assert_has(
        console,
        &format!("debian-os: {version} booted, root={root} marker={version} firmware={firmware}"),
    );
}

/// What `imprint status` printed in the OS once it was up.
fn status_says(console: &str, mode: &str) {
    assert_has(console, &format!("debian-os: status: mode        {mode}"));
    assert_has(console, "debian-os: status: image       debian sha256:");
}

/// The agent's footprint in Debian's root after a deploy: its units, and the
/// report unit enabled only where the first boot will have a report to send
/// (a status server was given), so that no boot waits for the network on its
/// account otherwise.
fn agent_installed(disk: &Path, reports: bool) {
    assert_eq!(
        read_state(disk).0.agent,
        Agent::Installed {
            format: imprint::footprint::FORMAT
        }
    );
    let unit = partition_file(disk, 3, "/etc/systemd/system/imprint-firstboot.service");
    assert!(
        unit.contains("ExecStart=/usr/lib/imprint/imprint firstboot"),
        "{unit}"
    );
    let report = partition_file(disk, 3, "/etc/systemd/system/imprint-report.service");
    assert!(report.contains("After=network-online.target"), "{report}");
    let wants = partition_debugfs(disk, 3, "ls /etc/systemd/system/multi-user.target.wants");
    assert_eq!(wants.contains("imprint-report"), reports, "{wants}");
}

/// The deploy's timings, completed by Debian's first boot (the hand-off
/// through the firmware, Debian's own start) and shown by its status.
fn timings_completed_by_first_boot(disk: &Path, console: &str) {
    let timings = read_state(disk)
        .0
        .timings
        .expect("no timings in the record");
    assert!(timings.get(Timed::Write) > Some(0), "{timings:?}");
    assert!(timings.get(Timed::Handoff).is_some(), "{timings:?}");
    let os_boot = timings.get(Timed::OsBoot).unwrap_or(0);
    assert!((1_000..300_000).contains(&os_boot), "{timings:?}");
    assert_line(
        console,
        &[
            "debian-os: status: timings     drivers ",
            " handoff ",
            " os-boot ",
        ],
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
    agent_installed(&m.disks[0], false);

    let c = m.boot_disks("v1");
    came_up(&c, "v1", "/dev/vda3", firmware);
    assert_has(&c, "imprint firstboot: mode=deploy");
    assert_has(&c, "imprint firstboot: committed");
    status_says(&c, "committed");
    assert_has(
        &c,
        &format!(
            "debian-os: status: agent       installed by the deploy (format {})",
            imprint::footprint::FORMAT
        ),
    );
    let record = read_state(&m.disks[0]).0;
    assert_eq!(record.mode, Mode::Committed);
    assert_eq!(partition_file(&m.disks[0], 3, "/etc/hostname"), "stock-1\n");
    timings_completed_by_first_boot(&m.disks[0], &c);
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_network_boot_deploys_and_commits (the agent's units, its commit and the deploy's timings)"]
fn stock_debian_deploy_gets_the_agent_and_commits_bios() {
    require_qemu!();
    require_debian!();
    stock_deploy_gets_the_agent_and_commits("bios");
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_network_boot_deploys_and_commits, and the UEFI stick deploy of the stock Debian"]
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

    // As if v1 had never shut down cleanly: no configuration bundle. The deploy
    // environment captures from v1's root itself, without writing v1's disk.
    let v1 = StateDisk::open(m.disks[0].to_str().unwrap()).unwrap();
    let (mut record, _) = v1.read_record().unwrap();
    assert!(
        record.bundle.take().is_some(),
        "v1 captured nothing at shutdown"
    );
    v1.write_record(&record).unwrap();
    let before = untouchable_digest(&m.disks[0]);
    let c = m.ramdisk(
        "upgrade-v2",
        "imprint.mode=upgrade imprint.image=debian:v2 imprint.disk=/dev/vdb",
    );
    assert_has(&c, "previous OS on /dev/vda");
    assert_has(
        &c,
        "configuration entries from the previous OS on /dev/vda3",
    );
    assert!(
        untouchable_digest(&m.disks[0]) == before,
        "the upgrade wrote to v1's file systems"
    );
    assert_has(&c, &format!("file system {ROOT_UUID} is now "));
    assert_has(&c, "rewrote the file system references in /etc/fstab");
    assert_has(
        &c,
        "rewrote the file system references in /boot/grub/grub.cfg",
    );
    m.upgraded_boots_every_time(3, "stock-2");
    let machine_id = partition_file(&m.disks[0], 3, "/etc/machine-id");
    assert_eq!(machine_id.trim().len(), 32, "{machine_id:?}");
    assert_eq!(
        partition_file(&m.disks[1], 3, "/etc/machine-id"),
        machine_id
    );
    // The previous disk still has its own identity and boots as it was.
    assert!(partition_file(&m.disks[0], 3, "/etc/fstab").contains(ROOT_UUID));
    // The previous disk taken out: v2 boots from its own disk alone.
    let c = m.only(&[1]).boot_disks("v2-alone");
    came_up(&c, "v2", "/dev/vda3", firmware);
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in the BIOS power-cut test, which ends in a whole BIOS upgrade of this image"]
fn stock_debian_upgrade_boots_the_new_os_every_time_bios() {
    require_qemu!();
    require_debian!();
    stock_upgrade_boots_the_new_os_every_time("bios");
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in the BIOS power-cut test, which ends in a whole upgrade of this image, and the UEFI upgrade of the systemd-boot image in tests/debian_uki.rs (both disks, three boots)"]
fn stock_debian_upgrade_boots_the_new_os_every_time_uefi() {
    require_qemu!();
    require_debian!();
    stock_upgrade_boots_the_new_os_every_time("uefi");
}

/// One machine's history, both disks attached throughout: v1 on disk 1; an
/// upgrade to v2 rolled back before it ran (v1 on every boot after); v2 again,
/// committed; v3 back onto disk 1, committed; v2 onto disk 2 once more, rolled
/// back: one step, to v3, not further. Each committed upgrade migrates the
/// host's files.
fn stock_upgrades_roll_back_one_step(firmware: &'static str) {
    let m = Stock::new(firmware, &["v1", "v2", "v3"], 2);
    let (one, two) = (m.disks[0].as_path(), m.disks[1].as_path());
    m.ramdisk(
        "deploy-v1",
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=history",
    );
    let c = m.boot_disks("v1");
    assert_has(&c, "imprint firstboot: committed");
    // At shutdown the agent captured v1's configuration itself.
    assert_has(&c, "imprint prepare-upgrade: captured ");

    let upgrade = |name: &str, version: &str, disk: &str| {
        m.ramdisk(
            name,
            &format!("imprint.mode=upgrade imprint.image=debian:{version} imprint.disk={disk}"),
        )
    };
    let before = untouchable_digest(one);
    let c = upgrade("upgrade-v2", "v2", "/dev/vdb");
    assert_has(&c, "the previous OS on /dev/vda captured its configuration");
    assert!(
        untouchable_digest(one) == before,
        "the upgrade wrote to v1's disk"
    );
    let c = m.ramdisk("rollback-v2", "imprint.mode=rollback");
    assert_has(&c, "rollback: marked the upgrade to debian sha256:");
    assert_eq!(read_state(two).0.mode, Mode::RolledBack);
    for i in 1..=2 {
        let c = m.boot_disks(&format!("v1-again-{i}"));
        came_up(&c, "v1", "/dev/vda3", firmware);
        assert_has(&c, "imprint firstboot: nothing to do (committed)");
    }

    upgrade("upgrade-v2-again", "v2", "/dev/vdb");
    let c = m.boot_disks("v2");
    came_up(&c, "v2", "/dev/vdb3", firmware);
    assert_has(&c, "imprint firstboot: migrated /etc/hostname");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(partition_file(two, 3, "/etc/hostname"), "history\n");

    // Back onto disk 1, over v1: v2 on disk 2 is the previous OS now.
    let c = upgrade("upgrade-v3", "v3", "/dev/vda");
    assert_has(&c, "previous OS on /dev/vdb");
    let c = m.boot_disks("v3");
    came_up(&c, "v3", "/dev/vda3", firmware);
    assert_has(&c, "entries from /dev/vdb");
    assert_has(&c, "imprint firstboot: migrated /etc/hostname");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(partition_file(one, 3, "/etc/hostname"), "history\n");

    // v2 onto disk 2 again, rolled back before it ran: v3, not v1 or v2.
    upgrade("upgrade-v2-third", "v2", "/dev/vdb");
    let c = m.ramdisk("rollback-v2-again", "imprint.mode=rollback");
    assert_has(&c, "rollback: marked the upgrade to debian sha256:");
    assert_eq!(read_state(two).0.mode, Mode::RolledBack);
    assert_eq!(read_state(one).0.mode, Mode::Committed);
    for i in 1..=2 {
        let c = m.boot_disks(&format!("v3-again-{i}"));
        came_up(&c, "v3", "/dev/vda3", firmware);
        assert_has(&c, "imprint firstboot: nothing to do (committed)");
        status_says(&c, "committed");
    }
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_upgrade_survives_power_cuts_bios (an upgrade cut, then committed), tests/upgrade.rs (a BIOS rollback) and tests/rollback.rs (one step back at a time, on file-backed disks)"]
fn stock_debian_upgrades_roll_back_one_step_bios() {
    require_qemu!();
    require_debian!();
    stock_upgrades_roll_back_one_step("bios");
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_upgrade_survives_power_cuts_bios, and stock_debian_from_a_usb_stick_then_an_upgrade_that_never_comes_up_falls_back"]
fn stock_debian_upgrades_roll_back_one_step_uefi() {
    require_qemu!();
    require_debian!();
    stock_upgrades_roll_back_one_step("uefi");
}

/// Debian with cloud-init: the deploy writes a NoCloud seed with the host's
/// name and the user-data the repository holds for it, and cloud-init itself
/// applies both on the first boot.
#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_network_boot_deploys_and_commits (cloud-init applies the user-data and host name of the seed)"]
fn stock_debian_cloud_init_applies_the_seed_imprint_wrote() {
    require_qemu!();
    require_debian!();
    let mut m = Stock::of("bios", &[("v1", Debian::CloudInit)], 1);
    // cloud-init's last stage waits for the network to be online (up to two
    // minutes without a link): the machines it runs on have one.
    m.machine.os_net = "user";
    let hosts = m.repo.path().join("hosts/ci-1");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("user-data"),
        "#cloud-config\nwrite_files:\n  - path: /etc/imprint-test/from-user-data\n    content: |\n      applied by cloud-init\n",
    )
    .unwrap();
    let c = m.ramdisk(
        "deploy-v1",
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=ci-1 imprint.user-data=hosts/ci-1/user-data",
    );
    assert_has(&c, "imprint.user-data: ");
    assert_has(&c, "wrote a NoCloud seed for the OS's cloud-init");
    let c = m.boot_disks("v1");
    came_up(&c, "v1", "/dev/vda3", "bios");
    assert_has(&c, "imprint firstboot: committed");
    let disk = &m.disks[0];
    assert_eq!(
        partition_file(disk, 3, "/etc/imprint-test/from-user-data"),
        "applied by cloud-init\n"
    );
    // cloud-init's own note of the host name it set.
    let set = partition_file(disk, 3, "/var/lib/cloud/data/set-hostname");
    assert!(set.contains("\"ci-1\""), "{set}");
}

/// Power cuts during the upgrade of a stock Debian, each followed by boots of
/// the disks as they were left: in the data, after the new disk's boot records
/// are written but before the boot switch (the new disk's file systems are then
/// visible and v1's own GRUB and initrd look for its root by UUID), and in the
/// switch. v1 comes up on its own root each time. Then the upgrade runs to its
/// end (under the full matrix, it is rolled back before it ran, v1 comes up,
/// and it runs again): v2 comes up, migrates and commits. (The test OS's power cuts are in
/// tests/power_cuts.rs, at every step.)
fn stock_upgrade_survives_power_cuts(
    firmware: &'static str,
    points: &[(&str, &str, u64, &str)],
    boots_after: usize,
) {
    let m = Stock::new(firmware, &["v1", "v2"], 2);
    m.ramdisk(
        "deploy-v1",
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=cut-1",
    );
    let c = m.boot_disks("v1");
    came_up(&c, "v1", "/dev/vda3", firmware);
    assert_has(&c, "imprint firstboot: committed");
    // At shutdown the agent captured v1's configuration itself.
    assert_has(&c, "imprint prepare-upgrade: captured ");
    let upgrade = "imprint.mode=upgrade imprint.image=debian:v2 imprint.disk=/dev/vdb";
    for (name, on, after_ms, before) in points {
        let untouched = untouchable_digest(&m.disks[0]);
        let (status, c) = m.cut(&format!("cut-{name}"), upgrade, on, *after_ms);
        assert_eq!(
            status.code(),
            Some(CUT_STATUS),
            "{name}: no power cut:\n{c}"
        );
        assert!(
            c.contains(on) && !c.contains(before),
            "{name}: the cut was meant to come after {on:?} and before {before:?}:\n{c}"
        );
        assert!(
            untouchable_digest(&m.disks[0]) == untouched,
            "{name}: the upgrade wrote to v1's file systems"
        );
        for i in 1..=boots_after {
            let c = m.boot_disks(&format!("after-{name}-{i}"));
            came_up(&c, "v1", "/dev/vda3", firmware);
            assert_has(&c, "imprint firstboot: nothing to do (committed)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "power cut {firmware} stock Debian upgrade {name} ({after_ms} ms after {on:?}): v1 came up on its own root, {boots_after} time(s)"
        );
    }
    let untouched = untouchable_digest(&m.disks[0]);
    let c = m.ramdisk("upgrade-v2", upgrade);
    assert_has(&c, "the previous OS on /dev/vda captured its configuration");
    assert!(
        untouchable_digest(&m.disks[0]) == untouched,
        "the upgrade wrote to v1's file systems"
    );
    // One image family: the same identities on both disks, renewed on the new
    // one, and what names them rewritten (on its root and its ESP).
    assert_has(&c, &format!("file system {ROOT_UUID} is now "));
    assert_has(
        &c,
        "partition 3 of the new disk had the same GUID as one on the previous disk; it is now ",
    );
    assert_has(&c, "rewrote the file system references in /etc/fstab");
    assert_has(&c, "ESP:/EFI/debian/grub.cfg");

    // Rolled back before it ran: v1 on the next boot, the upgrade marked; then
    // the upgrade again. (CI leaves this to the full power-cut matrix: the
    // rollback of the BIOS boot switch is shown in tests/upgrade.rs.)
    let c = if boots_after > 1 {
        let c = m.ramdisk("rollback-v2", "imprint.mode=rollback");
        assert_has(&c, "rollback: marked the upgrade to debian sha256:");
        assert_eq!(read_state(&m.disks[1]).0.mode, Mode::RolledBack);
        assert_eq!(read_state(&m.disks[0]).0.mode, Mode::Committed);
        let c = m.boot_disks("v1-after-rollback");
        came_up(&c, "v1", "/dev/vda3", firmware);
        assert_has(&c, "imprint firstboot: nothing to do (committed)");
        m.ramdisk("upgrade-v2-again", upgrade)
    } else {
        c
    };
    let (fetched, seeded) = (
        summary_figure(&c, "fetched_chunks"),
        summary_figure(&c, "seeded_chunks"),
    );
    m.upgraded_boots_every_time(boots_after, "cut-1");
    let _ = writeln!(
        std::io::stderr(),
        "stock Debian upgrade run to its end after the cuts: fetched {fetched} and seeded {seeded} chunks; v2 came up, migrated and committed"
    );
}

const INVALIDATED: &str = "install step done: invalidate-boot-records";
const DATA_DONE: &str = "install step done: write-data";
const HEAD_DONE: &str = "install step done: write-head";
const SWITCHING: &str = "switching boot to ";

/// BIOS: CI cuts the power at one point, before the switch (where v1's own
/// GRUB and initrd first see the new disk's file systems), with one boot after
/// it; IMPRINT_POWER_CUTS=all (scripts/power-cuts) cuts at every point, with
/// two boots after each.
#[test]
fn stock_debian_upgrade_survives_power_cuts_bios() {
    require_qemu!();
    require_debian!();
    if std::env::var("IMPRINT_POWER_CUTS").as_deref() == Ok("all") {
        stock_upgrade_survives_power_cuts(
            "bios",
            &[
                ("data", INVALIDATED, 1500, DATA_DONE),
                ("before-switch", HEAD_DONE, 0, SWITCHING),
                ("switch", SWITCHING, 0, "imprint: info: BIOS: "),
            ],
            2,
        );
    } else {
        stock_upgrade_survives_power_cuts("bios", &[("before-switch", HEAD_DONE, 0, SWITCHING)], 1);
    }
}

/// Under UEFI with the full power-cut matrix only.
#[test]
#[ignore = "power cuts under UEFI run in scripts/power-cuts; CI cuts under BIOS"]
fn stock_debian_upgrade_survives_power_cuts_uefi() {
    require_qemu!();
    require_debian!();
    stock_upgrade_survives_power_cuts(
        "uefi",
        &[
            ("data", INVALIDATED, 1500, DATA_DONE),
            ("before-switch", HEAD_DONE, 0, SWITCHING),
        ],
        2,
    );
}

/// A BIOS machine with a blank disk, room for the stock image, booting from
/// the network `net`: each run must end by itself within ten minutes.
fn network_machine(dir: &Path, net: &str) -> Machine {
    Machine::new(dir, "bios")
        .blank_disk("disk.img", 3 << 30)
        .network(net)
        .timeout(600)
}

/// A stock Debian (with cloud-init) provisioned by network boot: QEMU's iPXE
/// ROM and DHCP name `imprint serve --hosts`; the empty disk deploys, the next
/// network boot is sent to the disk, Debian comes up with the host name the
/// inventory gives it, commits, and reports the commit to the server once its
/// network (cloud-init's configuration, applied by systemd-networkd) is up.
#[test]
fn stock_debian_network_boot_deploys_and_commits() {
    require_qemu!();
    require_debian!();
    let repo = Repo::new();
    let image = debian_image("v1", Debian::CloudInit);
    let digest = add(&repo, "debian:v1", image.to_str().unwrap());
    let dir = repo.dir.path().to_path_buf();
    let mac = "52:54:00:12:34:56";
    std::fs::write(
        dir.join("deb-1.network"),
        "version: 2\nethernets:\n  wired:\n    match:\n      name: \"e*\"\n    dhcp4: true\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("deb-1.user-data"),
        "#cloud-config\nwrite_files:\n  - path: /etc/imprint-test/from-user-data\n    content: |\n      applied by cloud-init\n",
    )
    .unwrap();

    let (served, net) = provisioning_server(
        &repo,
        &format!(
            "[default]\ncmdline = [\"console=ttyS0\", \"quiet\", \"panic=-1\"]\n\n\
             [hosts.\"{mac}\"]\nhostname = \"deb-1\"\nimage = \"debian:v1\"\n\
             settings = {{ disk = \"/dev/vda\" }}\nnetwork-config = \"deb-1.network\"\n\
             user-data = \"deb-1.user-data\"\n"
        ),
        None,
    );
    let m = network_machine(&dir, &net);
    let disk = m.disks[0].clone();
    let run = |name: &str| m.netboot(name);
    let c = run("deploy");
    assert_has(&c, "imprint: deploying debian:v1 to deb-1 (attempt 1 of 3)");
    assert_has(&c, "installed imprint as the first-boot agent");
    assert_has(&c, "wrote a NoCloud seed for the OS's cloud-init");
    assert_has(&c, "handing off (reboot)");
    agent_installed(&disk, true);

    let c = run("local");
    assert_has(
        &c,
        &format!("imprint: {mac} is deployed; booting its own disk"),
    );
    came_up(&c, "v1", "/dev/vda3", "bios");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(partition_file(&disk, 3, "/etc/hostname"), "deb-1\n");
    // cloud-init applied the seed's user-data and the host name it gave.
    assert_eq!(
        partition_file(&disk, 3, "/etc/imprint-test/from-user-data"),
        "applied by cloud-init\n"
    );
    let set = partition_file(&disk, 3, "/var/lib/cloud/data/set-hostname");
    assert!(set.contains("\"deb-1\""), "{set}");
    status_says(&c, "committed");
    assert_has(
        &c,
        &format!(
            "debian-os: status: agent       installed by the deploy (format {})",
            imprint::footprint::FORMAT
        ),
    );
    timings_completed_by_first_boot(&disk, &c);
    let m = machine_entry(&served, mac);
    assert_eq!(m["state"]["completed"], digest, "{m}");
    assert_eq!(m["next"], "local");
    // The first boot ran before the network and left its report; the report
    // unit sent it once cloud-init's network configuration was up: "deployed"
    // on the server means booted and committed.
    assert_has(
        &c,
        "imprint report: sent the first boot's report to http://10.0.2.2:",
    );
    assert_eq!(m["state"]["committed"], true, "{m}");
    assert_eq!(
        partition_file(&disk, 3, "/var/lib/imprint/report.json"),
        "",
        "the sent report must be gone"
    );
    // And with nothing left to send, no later boot waits for the network on
    // the report's account.
    let wants = partition_debugfs(&disk, 3, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(!wants.contains("imprint-report"), "{wants}");
}

/// A stock Debian published as plain files by Debian's nginx, with one static
/// boot script for every machine (no inventory, no server state): the deploy
/// environment deploys the empty disk; on the next network boot the disk's
/// committed record names the image already, so no chunk is fetched and Debian
/// starts by kexec of the kernel and initrd its own GRUB configuration names.
#[test]
fn stock_debian_from_nginx_deploys_once_then_starts_by_kexec() {
    require_qemu!();
    require_debian!();
    if !nginx_available() {
        return;
    }
    let repo = Repo::new();
    add(
        &repo,
        "debian:v1",
        debian_image("v1", Debian::Stock).to_str().unwrap(),
    );
    let nginx = Nginx::start(&repo.path());
    let net = static_boot_script(
        &repo,
        &nginx.url,
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=static-1",
    );
    let dir = repo.dir.path().to_path_buf();
    let m = network_machine(&dir, &net);
    let disk = m.disks[0].clone();
    let run = |name: &str| m.netboot(name);
    let chunk_requests = || nginx.requested("/chunks/");
    let c = run("deploy");
    assert_has(&c, "install step done: write-head");
    assert_has(&c, "installed imprint as the first-boot agent");
    let deployed_with = chunk_requests();
    assert!(deployed_with > 0, "{:?}", nginx.requests());

    let started = std::time::Instant::now();
    let c = run("again");
    let took = started.elapsed();
    assert_has(&c, "already holds debian sha256:");
    assert!(!c.contains("install step done"), "{c}");
    assert_eq!(chunk_requests(), deployed_with, "no chunk may be fetched");
    // GRUB's default entry, read from the installed root: its kernel, initrd and
    // root=UUID= command line.
    assert_has(&c, "boot entry from /boot/grub/grub.cfg");
    assert_has(&c, "starting the installed OS by kexec of /boot/vmlinuz-");
    came_up(&c, "v1", "/dev/vda3", "bios");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(partition_file(&disk, 3, "/etc/hostname"), "static-1\n");
    let kexec_at = kexec_seconds(&c, "/boot/vmlinuz-");
    let _ = writeln!(
        std::io::stderr(),
        "stock Debian, network boot of a deployed machine from nginx: the deploy environment started Debian {kexec_at:.2} s after its kernel started; power-on to Debian powering off took {:.1} s under emulation",
        took.as_secs_f64()
    );
}

/// The stock Debian from a USB stick under UEFI, with no network device: the
/// stick deploys the blank disk; pulled out, the machine boots Debian from the
/// disk (the deploy put its entry after the stick's), which commits. Then an
/// upgrade whose kernel never finds its root (Debian's initrd gives up and
/// resets the machine) runs once, through BootNext; the reset after it comes
/// back to v1, whose agent marks the upgrade rolled back.
#[test]
fn stock_debian_from_a_usb_stick_then_an_upgrade_that_never_comes_up_falls_back() {
    require_qemu!();
    require_debian!();
    let a = artifacts();
    let m = Stock::of(
        "uefi",
        &[("v1", Debian::Stock), ("v2", Debian::BrokenRoot)],
        2,
    );
    let stick = m.repo.file("stick.img");
    let out = imprint(&[
        "media",
        "build",
        "--out",
        stick.to_str().unwrap(),
        "--repo",
        m.repo.path().to_str().unwrap(),
        "--image",
        "debian:v1",
        "--kernel",
        &a.path("vmlinuz"),
        "--initramfs",
        &a.path("initramfs.img"),
        "--cmdline",
        "imprint.disk=/dev/vda imprint.hostname=from-stick",
    ]);
    assert_success(&out);
    let (status, c) = m.try_run_with(
        "deploy",
        Boot {
            timeout: 600,
            usb: Some(&stick),
            ..m.spec(Start::Disks)
        },
    );
    assert!(status.success(), "deploy: {status:?}\n{c}");
    assert_has(&c, "medium labelled IMPRINT on /dev/sda1");
    assert_has(&c, "installed imprint as the first-boot agent");
    assert_eq!(summary_figure(&c, "from_network"), 0, "{c}");
    let c = m.boot_disks("v1");
    came_up(&c, "v1", "/dev/vda3", "uefi");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(
        partition_file(&m.disks[0], 3, "/etc/hostname"),
        "from-stick\n"
    );

    let c = m.ramdisk(
        "upgrade-v2",
        "imprint.mode=upgrade imprint.image=debian:v2 imprint.disk=/dev/vdb",
    );
    assert_has(&c, "(BootNext)");
    let (_, c) = m.try_run("v2-trial", Start::Disks);
    // v2's own GRUB configuration ran, and its root was not there.
    assert_has(&c, "testos.marker=v2");
    assert!(!c.contains("debian-os: "), "v2 came up:\n{c}");
    assert!(!c.contains("imprint firstboot: committed"), "{c}");
    // Once in CI; twice in the full matrix (it stays).
    let boots = if full_matrix() { 2 } else { 1 };
    for i in 1..=boots {
        let c = m.boot_disks(&format!("v1-again-{i}"));
        came_up(&c, "v1", "/dev/vda3", "uefi");
        if i == 1 {
            assert_has(&c, "on /dev/vdb never committed; marked rolled-back");
        }
    }
    assert_eq!(read_state(&m.disks[1]).0.mode, Mode::RolledBack);
    assert_eq!(read_state(&m.disks[0]).0.mode, Mode::Committed);
}
