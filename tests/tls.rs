//! HTTPS repositories, served by Debian's nginx with a certificate authority
//! made in the test: the host's `imprint deploy` and the deploy environment in
//! QEMU fetch over TLS with the CA they are given; a server whose certificate
//! chains to another CA is refused with a message that says so, and nothing
//! is written. Content is still verified by the manifest as over plain HTTP.

mod common;

use common::vm::*;
use common::*;
use std::path::Path;

/// nginx serving `repo` over HTTPS with a certificate of `ca`.
fn over_https(repo: &Repo, ca: &TestCa) -> Nginx {
    Nginx::start_tls(&repo.path(), (&ca.cert, &ca.key))
}

fn deploy(
    url: &str,
    disk: &Path,
    ca: Option<&Path>,
    env: &[(&str, &Path)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_imprint"));
    cmd.args(["deploy", "--url", url, "--image", "os:v1", "--disk"])
        .arg(disk);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn the_host_deploys_from_an_https_repository_with_the_ca_it_is_given() {
    require_qemu!();
    if !nginx_available() {
        return;
    }
    let ca = TestCa::new("good");
    let other = TestCa::new("other");
    let repo = Repo::new();
    let image = mixed_image(7, 96);
    repo.add("os:v1", &image, &[]);
    let nginx = over_https(&repo, &ca);
    let disk = repo.file("target.img");

    // A CA that did not sign the server's certificate: refused, said so, and
    // the target is not touched.
    let before = vec![0x5a_u8; image.len()];
    std::fs::write(&disk, &before).unwrap();
    let out = deploy(&nginx.url, &disk, Some(&other.ca), &[]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("TLS: the server's certificate is not signed by a CA this machine trusts")
            && err.contains(&other.ca.display().to_string())
            && err.contains("--ca FILE"),
        "{err}"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), before);

    // The right CA, given on the command line, then by SSL_CERT_FILE.
    let out = deploy(&nginx.url, &disk, Some(&ca.ca), &[]);
    assert_success(&out);
    assert_eq!(std::fs::read(&disk).unwrap()[..image.len()], image[..]);
    std::fs::remove_file(&disk).unwrap();
    let out = deploy(&nginx.url, &disk, None, &[("SSL_CERT_FILE", &ca.ca)]);
    assert_success(&out);
    assert_eq!(std::fs::read(&disk).unwrap()[..image.len()], image[..]);
    assert!(
        nginx.requests().iter().any(|r| r.contains("/chunks/")),
        "{:?}",
        nginx.requests()
    );
    // Over TLS too, the next chunk's request waits on the connection while
    // the answer before it arrives.
    assert!(
        nginx.pipelined("/chunks/") > 0,
        "no chunk request over HTTPS was waiting when nginx finished the one before"
    );
}

/// The deploy environment with an initramfs built with `--ca`: it deploys
/// from the HTTPS repository; the initramfs that carries only the build
/// host's bundle refuses the same server, and the disk stays blank.
#[test]
fn the_deploy_environment_fetches_over_https_with_the_ca_of_its_initramfs() {
    require_qemu!();
    if !nginx_available() {
        return;
    }
    let a = artifacts();
    let ca = TestCa::new("rack");
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    let nginx = over_https(&repo, &ca);
    // As qemu/prepare builds the stock one, with this CA instead of the host's.
    let kernel = std::fs::read_link(a.path("vmlinuz")).unwrap();
    let release = kernel.file_name().unwrap().to_string_lossy();
    let initrd = repo.file("initramfs-ca.img");
    let out = std::process::Command::new(a.path("imprint"))
        .args(["initramfs", "build", "--out"])
        .arg(&initrd)
        .arg("--ca")
        .arg(&ca.ca)
        .args(["--kernel-release", release.trim_start_matches("vmlinuz-")])
        .output()
        .unwrap();
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CA certificates for https: 1 from"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let url = nginx.url.replace("127.0.0.1", "10.0.2.2");
    let dir = repo.dir.path();
    let disk = dir.join("disk.img");
    sparse_disk(&disk, 256 << 20);
    let append = format!(
        "console=ttyS0 quiet panic=-1 imprint.repo={url} imprint.image=os:v1 imprint.disk=/dev/vda imprint.handoff=poweroff imprint.on-error=poweroff"
    );

    // The stock initramfs: the build host's CAs do not include this one.
    let (_, c) = boot(
        dir,
        "wrong-ca",
        Boot {
            append: Some(append.clone()),
            ..Boot::default()
        },
        &[disk.as_path()],
    );
    assert_has(
        &c,
        "TLS: the server's certificate is not signed by a CA this machine trusts; checked against the",
    );
    assert_has(&c, "from /etc/imprint/ca.pem");
    assert!(!c.contains("install step done"), "{c}");
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
        "the disk must stay blank"
    );

    let (status, c) = boot(
        dir,
        "deploy",
        Boot {
            append: Some(append),
            initrd: Some(&initrd),
            ..Boot::default()
        },
        &[disk.as_path()],
    );
    assert!(status.success(), "{c}");
    assert_has(&c, "install step done: write-head");
    assert!(summary_figure(&c, "from_network") > 0, "{c}");
    assert_eq!(summary_figure(&c, "from_media"), 0, "{c}");
    assert!(
        nginx.requests().iter().any(|r| r.contains("/chunks/")),
        "{:?}",
        nginx.requests()
    );
}
