//! A stock Debian 12 image, built from Debian's packages with nothing of imprint
//! inside (boot/build-debian-os: debootstrap, systemd, Debian's kernel and
//! initrd, GRUB for BIOS and UEFI, root by filesystem UUID), boots straight from
//! its disk with SeaBIOS and with OVMF: the real distribution that deploys of
//! stock operating systems start from.

mod common;

use common::vm::*;

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
