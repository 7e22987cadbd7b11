//! Boot media: `imprint media build` makes a USB stick image (GPT, FAT32,
//! SYSLINUX and GRUB from Debian's packages) or a hybrid ISO (ISOLINUX, an El
//! Torito EFI image with GRUB); QEMU boots them under SeaBIOS and OVMF with no
//! network device at all, as a USB stick (xHCI, usb-storage) and as a CD. The
//! deploy reads the repository from the medium, never writes the medium, and
//! the installed OS then boots from its disk and commits.

mod common;

use common::vm::*;
use common::*;
use std::path::{Path, PathBuf};

/// SHA-256 of a whole file, read in pieces.
fn file_digest(path: &Path) -> [u8; 32] {
    use sha2::Digest as _;
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// `imprint media build` from `repo` with the deploy environment the QEMU
/// tier boots; returns its output.
fn build_medium(repo: &Path, out: &Path, args: &[&str]) -> String {
    let a = artifacts();
    let (kernel, initramfs) = (a.path("vmlinuz"), a.path("initramfs.img"));
    let mut all = vec![
        "media",
        "build",
        "--out",
        out.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
        "--kernel",
        &kernel,
        "--initramfs",
        &initramfs,
        "--cmdline",
        "imprint.disk=/dev/vda",
        "--image",
        "os:v1",
    ];
    all.extend_from_slice(args);
    let out = imprint(&all);
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Usb,
    Cd,
}

/// A machine with a blank disk and a medium, and no NIC unless `net` says.
struct Machine {
    dir: PathBuf,
    disk: PathBuf,
    vars: PathBuf,
    firmware: &'static str,
}

impl Machine {
    fn new(dir: &Path, firmware: &'static str) -> Machine {
        let disk = dir.join("disk.img");
        sparse_disk(&disk, 512 << 20);
        Machine {
            dir: dir.to_path_buf(),
            disk,
            vars: dir.join("vars.fd"),
            firmware,
        }
    }

    /// Boots with `medium` attached as `kind` (or none); returns the console
    /// and whether QEMU ended by itself.
    fn boot(&self, name: &str, medium: Option<(&Path, Kind)>, net: &str) -> (bool, String) {
        let (status, console) = boot(
            &self.dir,
            name,
            Boot {
                firmware: self.firmware,
                vars: (self.firmware == "uefi").then_some(self.vars.as_path()),
                net,
                timeout: 300,
                usb: medium.filter(|(_, k)| *k == Kind::Usb).map(|(p, _)| p),
                cdrom: medium.filter(|(_, k)| *k == Kind::Cd).map(|(p, _)| p),
                ..Boot::default()
            },
            &[self.disk.as_path()],
        );
        (status.success(), console)
    }

    fn run(&self, name: &str, medium: Option<(&Path, Kind)>, net: &str) -> String {
        let (ok, console) = self.boot(name, medium, net);
        assert!(ok, "{name}:\n{console}");
        console
    }
}

/// An empty machine boots the medium with no network device, deploys from it,
/// and its OS comes up from the disk and commits; the medium is unchanged.
fn deploys_from_medium(firmware: &'static str, kind: Kind, iso: bool) {
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    let dir = repo.dir.path();
    let medium = dir.join(if iso { "media.iso" } else { "stick.img" });
    let mut args = vec![];
    if iso {
        args.push("--iso");
    }
    let built = build_medium(&repo.path(), &medium, &args);
    assert!(built.contains("label IMPRINT"), "{built}");
    let before = file_digest(&medium);
    let m = Machine::new(dir, firmware);

    let c = m.run("deploy", Some((&medium, kind)), "none");
    let device = match (kind, iso) {
        (Kind::Cd, _) => "/dev/sr0",
        (Kind::Usb, false) => "/dev/sda1",
        (Kind::Usb, true) => "/dev/sda",
    };
    assert_has(&c, &format!("medium labelled IMPRINT on {device} ("));
    assert_has(&c, "the repository is on the medium: no network needed");
    assert_has(&c, "install step done: write-head");
    assert_eq!(summary_figure(&c, "from_network"), 0, "{c}");
    assert!(summary_figure(&c, "from_media") > 0, "{c}");
    assert_has(&c, "handing off (reboot)");
    if firmware == "uefi" {
        assert_has(
            &c,
            "right after the medium's entry this boot came through in BootOrder",
        );
    }

    // The stick pulled out: the machine boots its disk.
    let c = m.run("installed", None, "none");
    assert_has(&c, "test-os: v1 booted");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(
        file_digest(&medium),
        before,
        "the medium must not be written"
    );
}

#[test]
fn a_usb_stick_deploys_with_no_network_bios() {
    require_qemu!();
    deploys_from_medium("bios", Kind::Usb, false);
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_from_a_usb_stick_then_an_upgrade_that_never_comes_up_falls_back in tests/debian.rs, a UEFI stick deploy"]
fn a_usb_stick_deploys_with_no_network_uefi() {
    require_qemu!();
    deploys_from_medium("uefi", Kind::Usb, false);
}

#[test]
fn a_cd_deploys_with_no_network_bios() {
    require_qemu!();
    deploys_from_medium("bios", Kind::Cd, true);
}

#[test]
fn a_cd_deploys_with_no_network_uefi() {
    require_qemu!();
    deploys_from_medium("uefi", Kind::Cd, true);
}

/// The hybrid ISO written to a stick boots as one too.
#[test]
fn the_iso_on_a_usb_stick_deploys_uefi() {
    require_qemu!();
    deploys_from_medium("uefi", Kind::Usb, true);
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A CD whose copy of one chunk is damaged: with the network allowed
/// (`--network-repo`), that chunk alone comes from the network repository and
/// the deploy completes; with no network the deploy fails saying which chunk,
/// and the disk is left without a boot record. With no `imprint.repo=` the
/// medium labelled IMPRINT is the repository; naming it as the target is
/// refused.
#[test]
fn a_damaged_chunk_on_the_medium_comes_from_the_network_or_fails_clearly() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    let served = Served::start(&repo.path());
    let dir = repo.dir.path();
    let medium = dir.join("media.iso");
    let network = served.url.replace("127.0.0.1", "10.0.2.2");
    build_medium(
        &repo.path(),
        &medium,
        &[
            "--iso",
            "--network-repo",
            &network,
            "--cmdline",
            "imprint.on-error=poweroff",
        ],
    );
    // The largest chunk: its bytes on the CD, one of them flipped.
    let chunk = chunk_files(&repo)
        .into_iter()
        .max_by_key(|c| std::fs::metadata(c).unwrap().len())
        .unwrap();
    let stored = std::fs::read(&chunk).unwrap();
    let mut iso = std::fs::read(&medium).unwrap();
    let at = find(&iso, &stored[..4096]).expect("the chunk on the ISO");
    iso[at + stored.len() / 2] ^= 0xff;
    std::fs::write(&medium, &iso).unwrap();
    let name = chunk.file_name().unwrap().to_string_lossy().into_owned();

    let m = Machine::new(dir, "bios");
    let (_, c) = m.boot("no-network", Some((&medium, Kind::Cd)), "none");
    assert_has(&c, "going on with the medium alone");
    assert_has(&c, &name);
    assert_has(&c, "deploy failed");
    assert!(!c.contains("install step done: write-head"), "{c}");
    let mut mbr = [0u8; 512];
    use std::io::Read;
    std::fs::File::open(&m.disk)
        .unwrap()
        .read_exact(&mut mbr)
        .unwrap();
    assert_ne!(mbr[510..], [0x55, 0xAA], "the disk must not boot");

    let c = m.run("network", Some((&medium, Kind::Cd)), "user");
    assert_has(&c, "trying the next source after media:IMPRINT");
    assert_has(&c, "install step done: write-head");
    assert_eq!(
        summary_figure(&c, "from_network"),
        stored.len() as u64,
        "{c}"
    );
    let c = m.run("installed", None, "none");
    assert_has(&c, "test-os: v1 booted");

    // A command line with no imprint.repo= (here a RAM-disk boot): the
    // documented default, the medium labelled IMPRINT, is found. Naming that
    // medium as the target is refused before anything is written.
    let stick = dir.join("stick.img");
    build_medium(&repo.path(), &stick, &[]);
    let (_, c) = boot(
        dir,
        "medium-as-target",
        Boot {
            append: Some(
                "console=ttyS0 quiet panic=-1 imprint.image=os:v1 imprint.disk=/dev/sda imprint.on-error=poweroff"
                    .into(),
            ),
            net: "none",
            usb: Some(&stick),
            ..Boot::default()
        },
        &[m.disk.as_path()],
    );
    assert_has(&c, "medium labelled IMPRINT on /dev/sda1");
    assert_has(
        &c,
        "deploy failed: /dev/sda is the boot medium or in use; it is never a target",
    );
}

/// A stick built with `--hosts`: the machine whose NIC the inventory lists
/// gets its own image and name from it, with no network to ask anyone.
#[test]
fn the_medium_s_inventory_chooses_the_machine_s_image_and_name() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    add(&repo, "os:v2", &a.path("os-v2.img"));
    let dir = repo.dir.path();
    let hosts = dir.join("hosts.toml");
    std::fs::write(
        &hosts,
        "[hosts.\"52:54:00:12:34:56\"]\nimage = \"os:v2\"\nhostname = \"rack-7\"\n\n\
         [hosts.\"52:54:00:ab:cd:ef\"]\nimage = \"os:v1\"\nhostname = \"other\"\n",
    )
    .unwrap();
    let stick = dir.join("stick.img");
    let built = build_medium(&repo.path(), &stick, &["--hosts", hosts.to_str().unwrap()]);
    // Only os:v1 is a boot entry; os:v2 is on the medium for the inventory.
    assert!(built.contains("image os:v1:"), "{built}");
    let m = Machine::new(dir, "bios");
    // A NIC whose link leads nowhere: there to be recognised, not to be used.
    let c = m.run("deploy", Some((&stick, Kind::Usb)), "dead");
    assert_has(
        &c,
        "52:54:00:12:34:56 is listed in the medium's inventory: imprint.image=os:v2 imprint.hostname=rack-7",
    );
    assert_has(&c, "the repository is on the medium: no network needed");
    assert_has(&c, "install step done: write-head");
    let c = m.run("installed", None, "none");
    assert_has(&c, "test-os: v2 booted");
    assert_has(&c, "imprint firstboot: committed");
    assert_eq!(root_file(&m.disk, "/etc/hostname"), "rack-7\n");
}

/// A medium that holds v1 only, and a network repository that holds v2: the
/// upgrade to v2 takes what v1 shares from the previous disk (and the
/// medium), and fetches from the network only the chunks v2 alone has.
#[test]
fn an_upgrade_fetches_from_the_network_only_what_neither_medium_nor_disk_has() {
    require_qemu!();
    let a = artifacts();
    let old = Repo::new();
    add(&old, "os:v1", &a.path("os-v1.img"));
    let new = Repo::new();
    add(&new, "os:v1", &a.path("os-v1.img"));
    add(&new, "os:v2", &a.path("os-v2.img"));
    let served = Served::start(&new.path());
    let dir = new.dir.path();
    let stick = dir.join("stick.img");
    build_medium(&old.path(), &stick, &[]);
    let m = Machine::new(dir, "bios");
    let second = dir.join("disk2.img");
    sparse_disk(&second, 512 << 20);
    let disks = [m.disk.as_path(), second.as_path()];
    let c = m.run("deploy-v1", Some((&stick, Kind::Usb)), "none");
    assert_has(&c, "install step done: write-head");
    let c = m.run("installed", None, "none");
    assert_has(&c, "imprint firstboot: committed");
    // One chunk v1 and v2 share is no longer on the previous disk as it was
    // (as if the OS had rewritten it): only the medium and the network have it.
    let at = shared_esp_chunk(
        Path::new(&a.path("os-v1.img")),
        Path::new(&a.path("os-v2.img")),
    );
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut d = std::fs::OpenOptions::new()
            .write(true)
            .open(&m.disk)
            .unwrap();
        d.seek(SeekFrom::Start(at)).unwrap();
        d.write_all(&noise(9, 1 << 20)).unwrap();
    }
    let scribbled_stored = {
        let image = std::fs::read(a.path("os-v1.img")).unwrap();
        let content = &image[at as usize..at as usize + (1 << 20)];
        let hex = imprint::format::digest::Digest::of(content).hex();
        std::fs::metadata(
            old.path()
                .join(format!("chunks/sha256/{}/{hex}", &hex[..2])),
        )
        .unwrap()
        .len()
    };

    // The upgrade: a RAM-disk boot naming the medium (by its file system's
    // UUID, as blkid shows it), then the network.
    let url = served.url.replace("127.0.0.1", "10.0.2.2");
    let head = std::fs::read(&stick).unwrap();
    let fat = &head[1 << 20..(1 << 20) + imprint::format::fstype::HEAD_LEN];
    let uuid = imprint::format::fstype::volume(fat).unwrap().uuid;
    let (status, c) = boot(
        dir,
        "upgrade",
        Boot {
            append: Some(format!(
                "console=ttyS0 quiet panic=-1 imprint.repo=media:UUID={uuid},{url} imprint.image=os:v2 \
                 imprint.mode=upgrade imprint.disk=/dev/vdb"
            )),
            usb: Some(&stick),
            ..Boot::default()
        },
        &disks,
    );
    assert!(status.success(), "{c}");
    assert_has(&c, &format!("medium with UUID {uuid} on /dev/sda1"));
    assert_has(&c, "install step done: write-head");
    let only_v2: Vec<PathBuf> = chunk_files(&new)
        .into_iter()
        .filter(|c| {
            !old.path()
                .join(c.strip_prefix(new.path()).unwrap())
                .exists()
        })
        .collect();
    let only_v2_bytes: u64 = only_v2
        .iter()
        .map(|c| std::fs::metadata(c).unwrap().len())
        .sum();
    assert!(!only_v2.is_empty());
    // At most the chunks only v2 has come from the network (one may match
    // what the first boot wrote on the previous disk), with v2's ref and
    // manifest, which the medium lacks.
    let fetched = summary_figure(&c, "fetched_chunks");
    assert!(fetched >= 1 && fetched <= only_v2.len() as u64, "{c}");
    let from_network = summary_figure(&c, "from_network");
    assert!(
        from_network <= only_v2_bytes + (64 << 10),
        "{from_network} bytes from the network, {only_v2_bytes} in chunks only v2 has\n{c}"
    );
    // What v1 and v2 share came from the previous disk, and the one shared
    // chunk the previous disk no longer holds from the medium.
    assert!(summary_figure(&c, "seeded_chunks") > 0, "{c}");
    assert_eq!(summary_figure(&c, "from_media"), scribbled_stored, "{c}");
}

/// A 1 MiB chunk of the ESP (kernel bytes, which a running OS never changes)
/// that v1 and v2 share: its offset in the image.
fn shared_esp_chunk(v1: &Path, v2: &Path) -> u64 {
    const CHUNK: u64 = 1 << 20;
    let mut f = std::fs::File::open(v1).unwrap();
    let layout = imprint::format::gpt::read(&mut f).unwrap().unwrap();
    let esp = layout
        .partitions
        .iter()
        .find(|p| p.type_guid == imprint::format::gpt::ESP_TYPE)
        .expect("the test OS has an ESP");
    let (v1, v2) = (std::fs::read(v1).unwrap(), std::fs::read(v2).unwrap());
    let start = (esp.first_lba * 512).div_ceil(CHUNK) + 1;
    let end = (esp.last_lba + 1) * 512 / CHUNK;
    (start..end)
        .map(|i| i * CHUNK)
        .find(|&at| {
            let r = at as usize..(at + CHUNK) as usize;
            v1[r.clone()] == v2[r.clone()] && v1[r].iter().filter(|&&b| b != 0).count() > 4096
        })
        .expect("v1 and v2 share kernel bytes in their ESPs")
}
