//! Duplicating a configured machine: a stock Debian (the cloud-init variant
//! of boot/build-debian-os, with Debian's sshd and the host keys its package
//! made, nothing of imprint inside) is deployed to machine A, configured, and
//! captured over the network by A's own deploy environment into `golden:1`;
//! `golden:1` then goes to machines B and C, each of which comes up with A's
//! configuration and an identity of its own.

mod common;

use common::capture::{TOKEN, repo_check, serve_capturing};
use common::machine::*;
use common::vm::*;
use common::*;
use std::path::Path;

/// A figure of the capture's summary line on a console (printed, with the
/// capture's status events, for the record).
fn captured(console: &str, key: &str) -> u64 {
    for line in console.lines().filter(|l| {
        l.contains("capture complete:")
            || l.contains("\"phase\":\"captured\"")
            || l.contains("\"phase\":\"capturing\"")
    }) {
        println!("{line}");
    }
    figure_of_line(console, "capture complete:", key)
}

fn capture_args(image: &str, handoff: &str) -> String {
    format!("imprint.mode=capture imprint.image={image} imprint.capture-token={TOKEN}{handoff}")
}

/// What makes a machine itself, read from its root (partition 3).
fn identity(disk: &Path) -> (String, String) {
    let id = partition_file(disk, 3, "/etc/machine-id")
        .trim()
        .to_string();
    assert_eq!(id.len(), 32, "a machine id: {id:?}");
    let key = partition_file(disk, 3, "/etc/ssh/ssh_host_ed25519_key.pub");
    assert!(key.starts_with("ssh-ed25519 "), "an SSH host key: {key:?}");
    (id, key)
}

fn machine(name: &str, served: &Served) -> (tempfile::TempDir, Machine) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join(format!("{name}.img"));
    sparse_disk(&disk, 4 << 30);
    let mut m = Machine::new(dir.path(), "bios")
        .with_disks([disk])
        .repo(&served.url)
        .timeout(900);
    // cloud-init's last stage waits for a network to be online.
    m.os_net = "user";
    (dir, m)
}

#[test]
fn a_configured_debian_is_captured_and_duplicated_with_identities_of_their_own() {
    require_qemu!();
    require_debian!();
    let repo = Repo::new();
    let image = debian_image("v1", Debian::CloudInit);
    add(&repo, "debian:v1", image.to_str().unwrap());
    let served = serve_capturing(&repo, &[]);

    // A: deployed, up once (it makes its machine id), then configured.
    let (_a_dir, a) = machine("a", &served);
    let c = a.ramdisk(
        "a-deploy",
        "imprint.image=debian:v1 imprint.disk=/dev/vda imprint.hostname=source",
    );
    assert_has(&c, "handing off (reboot)");
    let c = a.boot_disks("a-first-boot");
    assert_has(&c, "imprint firstboot: committed");
    let a_disk = &a.disks[0];
    let a_identity = identity(a_disk);
    partition_write(a_disk, 3, "/etc/golden.conf", "configured on the source\n");

    // The first capture, cut in its upload: no image, and A's disk as it was.
    let before = std::fs::read(a_disk).unwrap();
    let (status, c) = a.cut(
        "a-capture-cut",
        Start::RamDisk(&capture_args("golden:1", " imprint.handoff=poweroff")),
        "capturing: ",
        1500,
        &[],
    );
    assert_eq!(status.code(), Some(CUT_STATUS), "cut in its upload:\n{c}");
    assert!(!c.contains("capture complete:"), "{c}");
    assert!(!image_ls(&repo).contains("golden"), "no image after a cut");
    let stored_by_the_cut = chunk_files(&repo).len();
    assert!(
        std::fs::read(a_disk).unwrap() == before,
        "the source disk is read, never written"
    );
    drop(before);

    // Again: it completes, sending only what the cut one had not, and A is
    // handed back to its own OS.
    let c = a.ramdisk("a-capture", &capture_args("golden:1", ""));
    let uploaded = captured(&c, "uploaded");
    let already = captured(&c, "already_stored");
    assert!(already > 0, "the cut capture's chunks count:\n{c}");
    assert!(uploaded > 0, "{c}");
    assert_eq!(
        chunk_files(&repo).len() as u64,
        stored_by_the_cut as u64 + uploaded,
        "only the missing chunks were sent"
    );
    assert_line(&c, &["partition 3: ", "read as ext4"]);
    // Free blocks are neither read nor stored: the root's 1.1 GiB hold
    // about 0.8 GiB.
    let (read, used) = (captured(&c, "read"), captured(&c, "used"));
    assert!(read <= used, "{c}");
    assert!(
        used + (200 << 20) < captured(&c, "image"),
        "free blocks unread:\n{c}"
    );
    assert_has(&c, "debian-os: v1 booted");
    assert!(image_ls(&repo).contains("golden:1"), "{}", image_ls(&repo));
    let inspect = image_inspect(&repo, "golden:1");
    assert!(inspect.contains("format    v2"), "{inspect}");
    assert!(inspect.contains("generalized"), "{inspect}");
    assert!(inspect.contains("firmware bios"), "{inspect}");
    assert_success(&repo_check(&repo));

    // B and C from golden:1, side by side: A's configuration, their own names,
    // machine ids and SSH host keys.
    let (_b_dir, b) = machine("b", &served);
    let (_c_dir, c_machine) = machine("c", &served);
    let identities: Vec<(String, String)> = std::thread::scope(|s| {
        let runs: Vec<_> = [(&b, "node-b"), (&c_machine, "node-c")]
            .into_iter()
            .map(|(m, name)| {
                s.spawn(move || {
                    let c = m.ramdisk(
                        &format!("{name}-deploy"),
                        &format!(
                            "imprint.image=golden:1 imprint.disk=/dev/vda imprint.hostname={name}"
                        ),
                    );
                    assert_line(
                        &c,
                        &[
                            "generalized: removed the source machine's identity",
                            "/etc/machine-id",
                            "/etc/ssh/ssh_host_ed25519_key",
                        ],
                    );
                    let c = m.boot_disks(&format!("{name}-boot"));
                    assert_has(&c, "debian-os: v1 booted");
                    assert_has(&c, "imprint firstboot: made new SSH host keys");
                    assert_has(&c, "imprint firstboot: committed");
                    let disk = &m.disks[0];
                    assert_eq!(
                        partition_file(disk, 3, "/etc/golden.conf"),
                        "configured on the source\n"
                    );
                    assert_eq!(
                        partition_file(disk, 3, "/etc/hostname"),
                        format!("{name}\n")
                    );
                    identity(disk)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let [b_id, c_id] = [&identities[0], &identities[1]];
    for (x, y) in [(&a_identity, b_id), (&a_identity, c_id), (b_id, c_id)] {
        assert_ne!(x.0, y.0, "machine ids");
        assert_ne!(x.1, y.1, "SSH host keys");
    }

    // A recapture after one more change sends a few chunks.
    partition_write(
        a_disk,
        3,
        "/etc/golden-2.conf",
        "changed after the first capture\n",
    );
    let c = a.ramdisk(
        "a-recapture",
        &capture_args("golden:2", " imprint.handoff=poweroff"),
    );
    let uploaded = captured(&c, "uploaded");
    let already = captured(&c, "already_stored");
    assert!(
        uploaded > 0 && uploaded * 20 < already,
        "few chunks sent: {uploaded} of {}:\n{c}",
        uploaded + already
    );
    assert!(image_ls(&repo).contains("golden:2"));
}
