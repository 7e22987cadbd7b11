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
