//! Power cuts at every phase of a deploy and of an upgrade, in QEMU. The VM is
//! killed (SIGKILL: whatever the guest had not written out is lost) at a point of
//! the deploy environment's run found on its console; then the disks are read,
//! booted, and the deploy environment runs again.
//!
//! - Deploy of os:v2 over a disk holding a committed os:v1: after every cut the
//!   disk is either not bootable (no boot signature, no GPT, and the firmware
//!   finds nothing to boot) or holds the whole of v2, which then boots. Run
//!   again, the deploy fetches exactly the chunks not yet on the disk, and v2
//!   boots and commits.
//! - Upgrade from v1 on disk 1 to v2 on disk 2, both attached: after every cut
//!   the machine boots v1, and v2 only when the boot switch had been made (then
//!   v2 migrates v1's configuration and commits). Run again, the upgrade seeds
//!   from disk 1 and fetches exactly what neither disk holds, and v2 boots,
//!   migrates and commits. Disk 1 changes only in its first sector, its state
//!   partition and v1's root (whose ext4 journal the kernel replays when the
//!   deploy environment mounts it read-only to capture v1's configuration).
//!
//! Each cut is checked to have landed where it was meant to: the console shows
//! the line it was cut on and not the one that ends the phase. The disks are
//! slowed to a few write requests a second during the cut run, so a synced write
//! lasts long enough for a cut to land before it.
//!
//! `IMPRINT_POWER_CUTS` chooses the points: unset or `sample`, the few that CI
//! runs, BIOS only; `all`, every point under BIOS and UEFI (`scripts/power-cuts`);
//! or a comma-separated list of point names, under both firmwares. Each point's
//! outcome goes to stderr as it ends.

mod common;

use common::machine::*;
use common::vm::*;
use common::*;
use imprint::format::gpt::{self, Guid, Layout};
use imprint::format::state::{self, Mode};
use imprint::statepart;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The deploy environment's console lines that mark its phases, in order.
const CAPTURING: &str = "previous OS on /dev/vda";
const CAPTURED: &str = "configuration entries from the previous OS";
const INVALIDATED: &str = "install step done: invalidate-boot-records";
const DATA_DONE: &str = "install step done: write-data";
const RECORD_DONE: &str = "install step done: write-state-record";
const BACKUP_DONE: &str = "install step done: write-backup-gpt";
const HEAD_DONE: &str = "install step done: write-head";
const SWITCHING: &str = "switching boot to ";
/// The line that says the boot switch is made: "BIOS: ..." or "UEFI: ..." (see
/// [`on_console`]).
const SWITCHED: &str = "<the boot switch made>";
const HANDOFF: &str = "handing off";
/// The end of the run: the machine restarts by itself. After the boot switch
/// only a sync and the status events are left, a few milliseconds; when the
/// restart comes before the cut, the disks are as a cut after the switch would
/// have left them, or better synced, and the point says so.
const RESTART: &str = "reboot: ";

/// The console text a marker stands for under `firmware`.
fn on_console(marker: &'static str, firmware: &str) -> &'static str {
    match (marker, firmware) {
        (SWITCHED, "uefi") => "imprint: info: UEFI: ",
        (SWITCHED, _) => "imprint: info: BIOS: ",
        _ => marker,
    }
}

/// What the firmware says when no disk boots: SeaBIOS, and OVMF falling through
/// to its shell.
const NOTHING_TO_BOOT: &[&str] = &["No bootable device", "\"EFI Internal Shell\""];

/// Write requests a second the disks take during a cut run. The deploy over v1
/// writes few chunks, so its data phase is stretched to seconds. The upgrade
/// writes all of v2 to disk 2, which needs less, but enough that its data phase
/// lasts well past the latest cut in it (3 s) on a fast machine too (at 20 a
/// second it took 2.6 s on one, 4.7 s on another); disk 1 sees a few writes only
/// (the captured configuration, the boot switch), each made to last.
const DEPLOY_WRITE_IOPS: &[u32] = &[5];
const UPGRADE_WRITE_IOPS: &[u32] = &[2, 10];

const DISK_SIZE: u64 = 200 << 20;
/// The chunk size `image add` uses by default.
const CHUNK: usize = 1 << 20;

/// A power cut: `after_ms` after the console line holding `on`, and before the
/// one holding `before`.
struct Point {
    name: &'static str,
    on: &'static str,
    after_ms: u64,
    /// Under UEFI, when it differs.
    uefi_after_ms: Option<u64>,
    before: &'static str,
    /// Part of the CI sample.
    sample: bool,
}

impl Point {
    const fn new(
        name: &'static str,
        on: &'static str,
        after_ms: u64,
        before: &'static str,
    ) -> Point {
        Point {
            name,
            on,
            after_ms,
            uefi_after_ms: None,
            before,
            sample: false,
        }
    }

    const fn under_uefi(self, after_ms: u64) -> Point {
        Point {
            uefi_after_ms: Some(after_ms),
            ..self
        }
    }

    fn after_ms(&self, firmware: &str) -> u64 {
        match (firmware, self.uefi_after_ms) {
            ("uefi", Some(ms)) => ms,
            _ => self.after_ms,
        }
    }

    const fn sampled(self) -> Point {
        Point {
            sample: true,
            ..self
        }
    }
}

const DEPLOY_POINTS: &[Point] = &[
    Point::new("data-start", INVALIDATED, 0, DATA_DONE),
    Point::new("data-mid", INVALIDATED, 1000, DATA_DONE),
    // (CI kills a deploy mid-data in tests/deploy_environment.rs.)
    Point::new("data-late", INVALIDATED, 2000, DATA_DONE),
    // The partition table rewritten in memory, the state record written.
    Point::new("state-record", DATA_DONE, 0, RECORD_DONE),
    Point::new("backup-gpt", RECORD_DONE, 0, BACKUP_DONE),
    Point::new("head", BACKUP_DONE, 0, HEAD_DONE).sampled(),
    // The agent noted in the state record; the BIOS chain kept.
    Point::new("finish", HEAD_DONE, 0, HANDOFF).sampled(),
];

const UPGRADE_POINTS: &[Point] = &[
    // v1's configuration captured into disk 1's state partition.
    Point::new("capture", CAPTURING, 0, CAPTURED),
    Point::new("capture-late", CAPTURING, 250, CAPTURED),
    Point::new("data-start", INVALIDATED, 0, DATA_DONE),
    Point::new("data-mid", INVALIDATED, 1500, DATA_DONE).sampled(),
    Point::new("data-late", INVALIDATED, 3000, DATA_DONE),
    Point::new("state-record", DATA_DONE, 0, RECORD_DONE),
    Point::new("backup-gpt", RECORD_DONE, 0, BACKUP_DONE),
    Point::new("head", BACKUP_DONE, 0, HEAD_DONE),
    // Fresh file system identities and the agent, on a disk 2 that is whole.
    // (CI cuts a stock Debian's upgrade here: tests/debian.rs.)
    Point::new("finish", HEAD_DONE, 0, SWITCHING),
    Point::new("switch", SWITCHING, 0, SWITCHED),
    // BIOS: disk 1's own boot record saved in its state record and its rescue
    // area, the stub not yet written. UEFI: the two variable writes take tens of
    // milliseconds in all.
    Point::new("switch-mid", SWITCHING, 300, SWITCHED).under_uefi(20),
    Point::new("after-switch", SWITCHED, 0, RESTART).sampled(),
];

/// Which points run under `firmware`, per IMPRINT_POWER_CUTS.
fn chosen<'a>(points: &'a [Point], firmware: &str) -> Vec<&'a Point> {
    let var = std::env::var("IMPRINT_POWER_CUTS").unwrap_or_default();
    match var.as_str() {
        "" | "sample" => points
            .iter()
            .filter(|p| p.sample && firmware == "bios")
            .collect(),
        "all" => points.iter().collect(),
        names => {
            let names: Vec<&str> = names.split(',').map(str::trim).collect();
            let known = |n: &&str| {
                DEPLOY_POINTS
                    .iter()
                    .chain(UPGRADE_POINTS)
                    .any(|p| p.name == *n)
            };
            let unknown: Vec<&&str> = names.iter().filter(|n| !known(n)).collect();
            assert!(
                unknown.is_empty(),
                "IMPRINT_POWER_CUTS names unknown points {unknown:?}"
            );
            points.iter().filter(|p| names.contains(&p.name)).collect()
        }
    }
}

/// Straight to the stderr handle: the test harness captures eprintln! output of
/// passing tests, and each point's outcome is the report.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs each point, reporting its outcome; fails at the end if any point did.
fn run_points(firmware: &str, scenario: &str, points: &[&Point], run: impl Fn(&Point) -> String) {
    if points.is_empty() {
        say(&format!(
            "skipped {firmware} {scenario} power cuts: none chosen (the CI sample is BIOS only; IMPRINT_POWER_CUTS=all, as scripts/power-cuts sets, runs every point)"
        ));
        return;
    }
    let mut failed = Vec::new();
    for p in points {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(p)));
        let what = format!(
            "power cut {firmware} {scenario} {} ({} ms after {:?})",
            p.name,
            p.after_ms(firmware),
            on_console(p.on, firmware)
        );
        let secs = started.elapsed().as_secs();
        match outcome {
            Ok(outcome) => say(&format!("{what}: {outcome} [{secs} s]")),
            Err(_) => {
                say(&format!("{what}: FAILED, see its panic [{secs} s]"));
                failed.push(p.name);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{firmware} {scenario}: power cuts that broke a promise: {failed:?} (each one's panic is above)"
    );
}

/// Checks that the power was cut, between the point's two console lines.
/// Returns a note for the report.
fn assert_cut(
    status: std::process::ExitStatus,
    console: &str,
    p: &Point,
    firmware: &str,
) -> &'static str {
    let (on, before) = (on_console(p.on, firmware), on_console(p.before, firmware));
    // QEMU ends at the guest's restart (-no-reboot); a kill racing that exit is
    // reported as a cut but came after the restart, with nothing left to write.
    let restarted = console.contains(on) && console.contains(before);
    if p.before == RESTART && restarted && (status.success() || status.code() == Some(CUT_STATUS)) {
        return "the machine restarted before the cut; ";
    }
    assert_eq!(
        status.code(),
        Some(CUT_STATUS),
        "{}: the run ended without a power cut ({status:?}):\n{console}",
        p.name
    );
    assert!(
        console.contains(on) && !console.contains(before),
        "{}: the cut was meant to come after {on:?} and before {before:?}:\n{console}",
        p.name,
    );
    ""
}

/// v1 deployed to disk 1 (a second, blank disk attached, as in an upgrade) and
/// booted once: it commits and captures its configuration. Built into `dir`
/// (the rig's own, for each test: tests run in processes of their own, at the
/// same time): disk1.img and, for UEFI, vars.fd.
fn installed_v1(firmware: &'static str, dir: PathBuf) -> PathBuf {
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    let served = Served::start(&repo.path());
    std::fs::create_dir_all(&dir).unwrap();
    let m = Machine::new(&dir, firmware)
        .blank_disk("disk1.img", DISK_SIZE)
        .blank_disk("disk2.img", DISK_SIZE)
        .repo(&served.url);
    let c = m.ramdisk(
        "deploy-v1",
        "imprint.image=os:v1 imprint.disk=/dev/vda imprint.hostname=node-7",
    );
    assert_has(&c, "handing off (reboot)");
    let c = m.boot_disks("v1");
    assert_has(&c, "test-os: v1 booted");
    assert_has(&c, "imprint firstboot: committed");
    assert_has(&c, "imprint prepare-upgrade: captured");
    assert_eq!(read_state(&m.disks[0]).0.mode, Mode::Committed);
    std::fs::remove_file(&m.disks[1]).unwrap();
    dir
}

/// The image, its digest and its partition table.
struct Image {
    bytes: Vec<u8>,
    digest: String,
    layout: Layout,
}

impl Image {
    fn add(repo: &Repo, version: &str) -> Image {
        let path = artifacts().path(&format!("os-{version}.img"));
        let digest = add(repo, &format!("os:{version}"), &path);
        let bytes = read_file(&path);
        let layout = gpt::read(&mut std::io::Cursor::new(&bytes))
            .unwrap()
            .unwrap();
        Image {
            bytes,
            digest,
            layout,
        }
    }

    /// The chunks a deploy fetches, seeds or skips: every chunk but the first
    /// (the head, always written fresh) that is not all zeros.
    fn data_chunks(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.bytes
            .chunks(CHUNK)
            .enumerate()
            .skip(1)
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
    }

    fn on(&self, disk: &[u8], index: usize, chunk: &[u8]) -> bool {
        disk.get(index * CHUNK..index * CHUNK + chunk.len()) == Some(chunk)
    }

    /// How many data chunks `disk` holds, of how many.
    fn held(&self, disk: &[u8]) -> (usize, usize) {
        let all: Vec<_> = self.data_chunks().collect();
        let held = all.iter().filter(|(i, c)| self.on(disk, *i, c)).count();
        (held, all.len())
    }

    /// What a deploy onto `disk` seeded from `seed` has to do: (seeded, fetched)
    /// chunks.
    fn work(&self, disk: &[u8], seed: Option<&[u8]>) -> (u64, u64) {
        let (mut seeded, mut fetched) = (0, 0);
        for (i, c) in self.data_chunks() {
            if self.on(disk, i, c) {
                continue;
            }
            if seed.is_some_and(|s| self.on(s, i, c)) {
                seeded += 1;
            } else {
                fetched += 1;
            }
        }
        (seeded, fetched)
    }

    /// The state record in `disk`'s state partition, where this image puts it.
    fn record(&self, disk: &[u8]) -> Option<state::Record> {
        let p = statepart::find(&self.layout)?;
        let (start, len) = statepart::byte_range(&self.layout, p);
        let window = disk.get(start as usize..(start + len) as usize)?;
        state::read(&mut std::io::Cursor::new(window))
            .ok()
            .map(|(r, _)| r)
    }

    /// Whether `disk` holds the whole image as a deploy leaves it: every byte
    /// outside the head and the state partition, the record, the backup GPT.
    fn whole(&self, disk: &[u8]) -> Result<(), String> {
        let p = statepart::find(&self.layout).unwrap();
        let (start, len) = statepart::byte_range(&self.layout, p);
        let (start, end) = (start as usize, (start + len) as usize);
        let data = 34 * 512..self.bytes.len();
        if disk.len() < self.bytes.len()
            || disk[data.start..start] != self.bytes[data.start..start]
            || disk[end..data.end] != self.bytes[end..data.end]
        {
            let (held, of) = self.held(disk);
            return Err(format!("{held} of {of} data chunks are the image's"));
        }
        match self.record(disk) {
            Some(r) if r.image_digest.to_string() == self.digest => {}
            Some(r) => return Err(format!("its state record is for {}", r.image_digest)),
            None => return Err("it has no state record".into()),
        }
        if !has_backup_gpt(disk) {
            return Err("it has no backup GPT at its end".into());
        }
        Ok(())
    }

    /// One line on what `disk` holds of this image.
    fn describe(&self, disk: &[u8]) -> String {
        let (held, of) = self.held(disk);
        let record = match self.record(disk) {
            Some(r) if r.image_digest.to_string() == self.digest => "the new",
            Some(_) => "an old",
            None => "no",
        };
        let head = if disk[510..512] == [0x55, 0xAA] {
            "a boot signature"
        } else {
            "no boot signature"
        };
        let primary = if &disk[512..520] == b"EFI PART" {
            "a primary GPT"
        } else {
            "no primary GPT"
        };
        let backup = if has_backup_gpt(disk) {
            "a backup GPT"
        } else {
            "no backup GPT"
        };
        format!("{held}/{of} data chunks, {record} state record, {backup}, {head}, {primary}")
    }
}

fn has_backup_gpt(disk: &[u8]) -> bool {
    &disk[disk.len() - 512..disk.len() - 504] == b"EFI PART"
}

/// Whether any firmware could take the disk for a bootable one.
fn looks_bootable(disk: &[u8]) -> bool {
    disk[510..512] == [0x55, 0xAA] || &disk[512..520] == b"EFI PART" || has_backup_gpt(disk)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What every point of one firmware's power cuts starts from: v1 installed
/// (each point boots a copy), and v2 in the repository, served.
struct Rig {
    firmware: &'static str,
    base: PathBuf,
    repo: Repo,
    served: Served,
    v2: Image,
}

impl Rig {
    fn new(firmware: &'static str) -> Rig {
        let repo = Repo::new();
        let base = installed_v1(firmware, repo.file("installed-v1"));
        let v2 = Image::add(&repo, "v2");
        let served = Served::start(&repo.path());
        Rig {
            firmware,
            base,
            repo,
            served,
            v2,
        }
    }

    /// A point's machine in `dir`: its own copy of the installed v1 (disk and
    /// firmware variables), deploying from the rig's repository.
    fn machine(&self, dir: &Path) -> Machine {
        std::fs::create_dir_all(dir).unwrap();
        let disk = dir.join("disk1.img");
        copy_sparse(&self.base.join("disk1.img"), &disk);
        let m = Machine::new(dir, self.firmware)
            .with_disks([disk])
            .repo(&self.served.url);
        if self.firmware == "uefi" {
            std::fs::copy(self.base.join("vars.fd"), &m.vars).unwrap();
        }
        m
    }
}

/// Boots the disks without a network; ends early when the firmware finds
/// nothing to boot.
fn boot_disks_if_any(m: &Machine, name: &str) -> String {
    let (status, c) = m.try_run_with(
        name,
        Boot {
            cut_on: NOTHING_TO_BOOT,
            ..m.spec(Start::Disks)
        },
    );
    let gave_up = NOTHING_TO_BOOT.iter().any(|m| c.contains(m));
    assert!(
        status.success() || (gave_up && status.code() == Some(CUT_STATUS)),
        "{name}: {status:?}\n{c}"
    );
    c
}

fn deploy_point(rig: &Rig, p: &Point) -> String {
    let m = rig.machine(&rig.repo.dir.path().join(format!("deploy-{}", p.name)));
    let disk = &m.disks[0];
    let before = read(disk);
    assert!(looks_bootable(&before) && rig.v2.whole(&before).is_err());
    let full = rig.v2.work(&before, None).1;
    let deploy = "imprint.image=os:v2 imprint.disk=/dev/vda";

    let (status, cut) = m.cut(
        "cut",
        Start::RamDisk(deploy),
        on_console(p.on, rig.firmware),
        p.after_ms(rig.firmware),
        DEPLOY_WRITE_IOPS,
    );
    let note = assert_cut(status, &cut, p, rig.firmware);
    let after = read(disk);
    let held = rig.v2.describe(&after);
    let whole = rig.v2.whole(&after);
    if looks_bootable(&after) {
        assert!(
            whole.is_ok(),
            "{}: the disk looks bootable ({held}) but {}",
            p.name,
            whole.unwrap_err()
        );
    }

    let c = boot_disks_if_any(&m, "after-cut");
    let booted = if c.contains("test-os: ") {
        assert_has(&c, "test-os: v2 booted");
        assert!(
            whole.is_ok(),
            "{}: a disk that is not the whole of v2 booted ({held}): {}\n{c}",
            p.name,
            whole.unwrap_err()
        );
        assert_has(&c, "imprint firstboot: committed");
        "v2 boots and commits"
    } else {
        "nothing boots"
    };

    // Run again: what is on the disk is hashed and skipped. (A disk the cut
    // left whole would be started as it is; the rerun is to show the resume.)
    let (_, fetch) = rig.v2.work(&read(disk), None);
    let (status, c) = m.try_run(
        "rerun",
        Start::RamDisk(&format!("{deploy} imprint.redeploy")),
    );
    assert!(status.success(), "deploying again: {status:?}\n{c}");
    assert_has(&c, "handing off (reboot)");
    let fetched = summary_figure(&c, "fetched_chunks");
    assert_eq!(
        fetched, fetch,
        "run again, the deploy fetched {fetched} chunks; {fetch} were not on the disk:\n{c}"
    );
    assert!(fetched <= full, "{}: fetched {fetched} of {full}", p.name);
    check_deployed_disk(disk, &rig.v2.bytes, &rig.v2.digest, None);
    let c = boot_disks_if_any(&m, "v2");
    assert_has(&c, "test-os: v2 booted");
    assert_has(&c, "imprint firstboot: committed");
    let _ = std::fs::remove_file(disk);
    format!(
        "{note}left {held}; {booted}; run again: fetched {fetched} of the {full} chunks a whole deploy fetches; v2 boots and commits"
    )
}

/// v2 came up on disks 1 and 2 after the upgrade: it migrated v1's
/// configuration and committed.
fn assert_upgraded(console: &str, disk2: &Path) {
    assert_has(console, "test-os: v2 booted");
    assert_has(console, "imprint firstboot: mode=upgrade");
    assert_has(console, "test-os: marker: written by v1");
    assert_has(console, "test-os: hostname: node-7");
    assert_has(console, "imprint firstboot: committed");
    let r = read_state(disk2).0;
    assert_eq!((r.mode, r.deployed_mode), (Mode::Committed, Mode::Upgrade));
}

/// What an upgrade leaves alone on disk 1: its bytes less its first sector and
/// its state partition (see `untouchable`), and less v1's root. The deploy
/// environment reads v1's configuration from that root, mounted read-only; v1
/// was powered off with its ext4 journal needing recovery, and the kernel
/// replays it even so. The replay is the file system's own, and v1 booting
/// after every cut is checked.
fn untouchable_but_root(disk: &Path) -> Vec<u8> {
    let mut bytes = untouchable(disk);
    let layout = gpt::read(&mut std::fs::File::open(disk).unwrap())
        .unwrap()
        .unwrap();
    let root = layout.partitions.iter().find(|p| p.name == "root").unwrap();
    let (start, len) = statepart::byte_range(&layout, root);
    bytes[start as usize..(start + len) as usize].fill(0);
    bytes
}

fn disk_guid(disk: &Path) -> Option<Guid> {
    gpt::read(&mut std::fs::File::open(disk).unwrap())
        .ok()
        .flatten()
        .map(|l| l.disk_guid)
}

fn upgrade_point(rig: &Rig, p: &Point, untouched: &[u8]) -> String {
    let dir = rig.repo.dir.path().join(format!("upgrade-{}", p.name));
    let m = rig.machine(&dir).blank_disk("disk2.img", DISK_SIZE);
    let (disk1, disk2) = (&m.disks[0], &m.disks[1]);
    let upgrade = "imprint.mode=upgrade imprint.image=os:v2 imprint.disk=/dev/vdb";

    let (status, cut) = m.cut(
        "cut",
        Start::RamDisk(upgrade),
        on_console(p.on, rig.firmware),
        p.after_ms(rig.firmware),
        UPGRADE_WRITE_IOPS,
    );
    let note = assert_cut(status, &cut, p, rig.firmware);
    assert!(
        untouchable_but_root(disk1) == untouched,
        "{}: disk 1's data changed",
        p.name
    );
    let new = read(disk2);
    let held = rig.v2.describe(&new);
    let agent = rig.v2.record(&new).map(|r| r.agent);
    // Disk 2 looks bootable only when the install is complete; after that, its
    // file systems get fresh identities, so its bytes are no longer the image's.
    if looks_bootable(&new) && !cut.contains(HEAD_DONE) {
        let whole = rig.v2.whole(&new);
        assert!(
            whole.is_ok(),
            "{}: disk 2 looks bootable ({held}) but {}",
            p.name,
            whole.unwrap_err()
        );
    }
    drop(new);
    let first: [u8; 512] = read(disk1)[..512].try_into().unwrap();
    let chain = imprint::format::mbr::chain_target(&first);
    let new_guid = disk_guid(disk2);

    let c = boot_disks_if_any(&m, "after-cut");
    if c.contains("test-os: v2 booted") {
        // Only the boot switch, the last thing the upgrade writes, leads to v2.
        assert!(
            cut.contains(SWITCHING),
            "{}: v2 booted, but the cut came before the boot switch:\n{cut}\n{c}",
            p.name
        );
        if rig.firmware == "bios" {
            assert!(
                chain.is_some() && chain == new_guid,
                "{}: v2 booted, but disk 1 does not chain to disk 2",
                p.name
            );
        }
        assert_upgraded(&c, disk2);
        return format!(
            "{note}left disk 2 with {held} (agent {agent:?}); v2 boots (the switch was made), migrates and commits"
        );
    }
    assert_has(&c, "test-os: v1 booted");
    let stub = match chain {
        Some(g) if Some(g) == new_guid => "a chain stub aimed at disk 2",
        Some(_) => "a chain stub",
        None => "its own boot code",
    };
    let saved = match read_state(disk1).0.saved_boot_record {
        Some(_) => " (saved in its record)",
        None => "",
    };

    // Run again: disk 2's chunks are skipped, disk 1's seed, the rest is fetched.
    let (seed, fetch) = rig.v2.work(&read(disk2), Some(&read(disk1)));
    let (status, c) = m.try_run("rerun", Start::RamDisk(upgrade));
    assert!(status.success(), "upgrading again: {status:?}\n{c}");
    assert_has(&c, "previous OS on /dev/vda");
    assert_has(&c, "handing off (reboot)");
    let (seeded, fetched) = (
        summary_figure(&c, "seeded_chunks"),
        summary_figure(&c, "fetched_chunks"),
    );
    assert_eq!(
        (seeded, fetched),
        (seed, fetch),
        "run again, the upgrade seeded {seeded} and fetched {fetched} chunks; (seeded, fetched) should be {:?}:\n{c}",
        (seed, fetch)
    );
    let c = boot_disks_if_any(&m, "v2");
    assert_upgraded(&c, disk2);
    let _ = std::fs::remove_file(disk1);
    let _ = std::fs::remove_file(disk2);
    format!(
        "{note}left disk 2 with {held}, disk 1 with {stub}{saved}; v1 boots; run again: seeded {seeded}, fetched {fetched} chunks; v2 boots, migrates and commits"
    )
}

fn deploy_power_cuts(firmware: &'static str) {
    let points = chosen(DEPLOY_POINTS, firmware);
    if points.is_empty() {
        return run_points(firmware, "deploy", &points, |_| String::new());
    }
    let rig = Rig::new(firmware);
    run_points(firmware, "deploy", &points, |p| deploy_point(&rig, p));
}

fn upgrade_power_cuts(firmware: &'static str) {
    let points = chosen(UPGRADE_POINTS, firmware);
    if points.is_empty() {
        return run_points(firmware, "upgrade", &points, |_| String::new());
    }
    let rig = Rig::new(firmware);
    let untouched = untouchable_but_root(&rig.base.join("disk1.img"));
    run_points(firmware, "upgrade", &points, |p| {
        upgrade_point(&rig, p, &untouched)
    });
}

#[test]
fn bios_deploy_survives_power_cuts() {
    require_qemu!();
    deploy_power_cuts("bios");
}

#[test]
fn bios_upgrade_survives_power_cuts() {
    require_qemu!();
    upgrade_power_cuts("bios");
}

#[test]
#[ignore = "power cuts under UEFI run in scripts/power-cuts; CI cuts under BIOS"]
fn uefi_deploy_survives_power_cuts() {
    require_qemu!();
    deploy_power_cuts("uefi");
}

#[test]
#[ignore = "power cuts under UEFI run in scripts/power-cuts; CI cuts under BIOS"]
fn uefi_upgrade_survives_power_cuts() {
    require_qemu!();
    upgrade_power_cuts("uefi");
}
