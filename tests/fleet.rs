//! `imprint serve --hosts`: the provisioning server, driven over HTTP as iPXE
//! and the deploy environment drive it (boot scripts, status events), with the
//! inventory edited and the server restarted under it.

mod common;

use common::rig::*;
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_machine_deploys_once_then_boots_its_disk_across_server_restarts() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);

    // DHCP may name the plain path: the script asks again with iPXE's values.
    let (status, bootstrap) = get(&served, "/boot.ipxe");
    assert_eq!(status, 200);
    assert!(
        bootstrap.contains("chain /boot.ipxe?mac=${net0/mac:hexhyp}&platform=${platform}"),
        "{bootstrap}"
    );

    let s = script(&served, NODE, "pcbios");
    assert!(is_deploy(&s), "{s}");
    let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
    for arg in [
        "kernel http://10.0.2.2:8080/boot/vmlinuz ",
        " imprint.repo=http://10.0.2.2:8080 ",
        " imprint.image=os:v1 ",
        " imprint.hostname=node-1 ",
        " imprint.disk=/dev/vda",
        " imprint.status=http://10.0.2.2:8080/status ",
        " BOOTIF=01-52-54-00-12-34-56 ",
        " imprint.user-data=hosts/52-54-00-12-34-56/user-data",
        " imprint.credential=",
    ] {
        assert!(kernel.contains(arg), "{arg:?} not in {kernel}");
    }
    // The operator's token is never in what the server generates.
    assert!(!s.contains(OPERATOR_TOKEN), "{s}");
    assert!(
        s.contains("\ninitrd http://10.0.2.2:8080/boot/initramfs.img\nboot\n"),
        "{s}"
    );
    let credential = credential_of(&s);
    // What the script names is served; the host's own file, to its deploy.
    assert_eq!(get(&served, "/boot/vmlinuz"), (200, "a kernel".into()));
    assert_eq!(
        get(&served, "/boot/initramfs.img"),
        (200, "an initramfs".into())
    );
    assert_eq!(
        get_as(&served, "/hosts/52-54-00-12-34-56/user-data", &credential),
        (200, "#cloud-config\nhostname: node-1\n".into())
    );
    assert_eq!(
        get_as(
            &served,
            "/hosts/52-54-00-00-00-02/user-data",
            OPERATOR_TOKEN
        )
        .0,
        404
    );

    report(
        &served,
        NODE,
        &credential,
        r#"{"phase":"complete","target":"MAC"}"#,
    );
    let s = script(&served, NODE, "pcbios");
    assert!(!is_deploy(&s), "{s}");
    assert!(s.contains("\nsanboot --no-describe --drive 0x80\n"), "{s}");
    let s = script(&served, NODE, "efi");
    assert!(s.contains("\nexit\n"), "{s}");
    let doc = machines(&served);
    let node = machine(&doc, NODE);
    assert_eq!(node["hostname"], "node-1");
    assert_eq!(node["next"], "local");
    assert_eq!(
        node["state"]["completed"],
        format!("sha256:{}", "ab".repeat(32))
    );
    assert_eq!(node["state"]["deploys"], 1);
    assert_eq!(node["state"]["committed"], false);
    // The installed OS's agent commits, and says so, with the deploy's credential.
    let committed = format!(
        r#"{{"phase":"complete","target":"{NODE}","committed":"deploy","image":"sha256:{}"}}"#,
        "ab".repeat(32)
    );
    assert_eq!(post(&served, "/status", &committed, None), 401);
    assert_eq!(post(&served, "/status", &committed, Some(&credential)), 204);
    assert_eq!(
        machine(&machines(&served), NODE)["state"]["committed"],
        true
    );
    // The server keeps the credential's hash only.
    let file = String::from_utf8(rig.machine_file(NODE).unwrap()).unwrap();
    assert!(!file.contains(&credential), "{file}");

    // The server restarts: what it knew of the machine is still there.
    drop(served);
    let served = rig.serve(&[]);
    assert!(!is_deploy(&script(&served, NODE, "pcbios")));
    assert_eq!(
        machine(&machines(&served), NODE)["state"]["committed"],
        true
    );

    // Reprovisioned from the command line, with the operator's token: one
    // more deploy, then local again. The old deploy's credential no longer counts.
    let out = imprint(&["host", "reprovision", NODE, "--server", &served.url]);
    assert!(!out.status.success(), "no token given, none found");
    assert_success(&reprovision(&served, NODE, &operator_token_file()));
    assert_eq!(post(&served, "/status", &committed, Some(&credential)), 403);
    let again = deploy(&served, NODE, r#"{"phase":"complete","target":"MAC"}"#);
    assert_ne!(again, credential);
    assert!(!is_deploy(&script(&served, NODE, "pcbios")));
    assert_eq!(machine(&machines(&served), NODE)["state"]["deploys"], 2);
}

/// Failures count from what deploy environments report: a `failed` event, or
/// a deploy environment that starts while its machine's last deploy never
/// reported an end.
#[test]
fn failed_deploys_are_retried_then_held_until_reprovisioned() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&["--attempts", "3"]);
    let attempt = |n: u32| {
        let s = script(&served, FLAKY, "pcbios");
        assert!(s.contains(&format!("(attempt {n} of 3)")), "{s}");
        credential_of(&s)
    };
    let first = attempt(1);
    report(
        &served,
        FLAKY,
        &first,
        r#"{"phase":"failed","target":"MAC","error":"no disk of 300 MB or more"}"#,
    );
    let second = attempt(2);
    assert_eq!(
        event(
            &served,
            FLAKY,
            r#"{"phase":"booted","target":"MAC"}"#,
            Some(&second)
        ),
        204
    );
    // Started again without reporting an end: the script says so at once
    // (changing nothing), and the next deploy environment's start counts it.
    let third = attempt(3);
    assert_eq!(machine(&machines(&served), FLAKY)["state"]["failures"], 1);
    report(
        &served,
        FLAKY,
        &third,
        r#"{"phase":"failed","target":"MAC","error":"chunk 7: \u001b[31m${evil} ; chain http://x/y #"}"#,
    );
    let state = machine(&machines(&served), FLAKY)["state"].clone();
    assert_eq!(state["failures"], 3, "{state}");
    let held = script(&served, FLAKY, "pcbios");
    assert!(!is_deploy(&held), "{held}");
    assert!(
        held.contains("failed 3 times in a row, last: chunk 7: "),
        "{held}"
    );
    assert!(
        !held.contains("${evil}") && !held.contains('\u{1b}') && !held.contains(" ; "),
        "{held}"
    );
    assert!(
        held.contains("imprint host reprovision 52:54:00:00:00:02"),
        "{held}"
    );
    assert!(held.contains("\nsleep 60\nchain "), "{held}");
    assert_eq!(machine(&machines(&served), FLAKY)["next"], "hold");
    let third_starts_again = |served: &Served| {
        event(
            served,
            FLAKY,
            r#"{"phase":"booted","target":"MAC"}"#,
            Some(&third),
        )
    };
    // Held, no credential given out before counts.
    assert_eq!(third_starts_again(&served), 403);
    // Held across a restart too; a reprovision lifts it.
    drop(served);
    let served = rig.serve(&[]);
    assert!(!is_deploy(&script(&served, FLAKY, "pcbios")));
    assert_eq!(
        post(
            &served,
            "/machines/52-54-00-00-00-02/reprovision",
            "",
            Some(OPERATOR_TOKEN)
        ),
        200
    );
    let s = script(&served, FLAKY, "pcbios");
    assert!(s.contains("(attempt 1 of 3)"), "{s}");
    // The held deploy's credentials are done with.
    assert_eq!(third_starts_again(&served), 403);
}

#[test]
fn unknown_machines_register_and_the_inventory_reloads() {
    let rig = Rig::new(INVENTORY);
    let (served, log) = {
        let (hosts, data) = (rig.path("hosts.toml"), rig.path("data"));
        let log = std::fs::File::create(rig.path("serve.log")).unwrap();
        let served = Served::start_with(
            &rig.repo.path(),
            &[
                "--hosts",
                hosts.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ],
            None,
            Stdio::from(log),
        );
        (served, rig.path("serve.log"))
    };
    let stranger = "52:54:00:99:99:99";
    let s = script(&served, stranger, "pcbios");
    assert!(s.contains("is not in the inventory (registered)"), "{s}");
    assert!(!is_deploy(&s));
    assert_eq!(
        machine(&machines(&served), stranger)["state"]["phase"],
        "registered"
    );

    // The operator adds it (and makes a mistake elsewhere): it deploys; the
    // broken entry is reported by line, the others keep working.
    rig.write_inventory(&format!(
        "{INVENTORY}\n[hosts.\"{stranger}\"]\nimage = \"os:v2\"\nhostname = \"new-1\"\n\n[hosts.\"52:54:00:00:00:03\"]\nhostname = \"bad name\"\n"
    ));
    let start = Instant::now();
    let s = loop {
        let s = script(&served, stranger, "pcbios");
        if is_deploy(&s) || start.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let words: Vec<&str> = s.split_whitespace().collect();
    assert!(words.contains(&"imprint.image=os:v2"), "{s}");
    assert!(words.contains(&"imprint.hostname=new-1"), "{s}");
    assert!(is_deploy(&script(&served, NODE, "pcbios")));
    let logged = wait_for_text(&log, "line 15: hosts.52:54:00:00:00:03: hostname");
    assert!(logged, "{}", std::fs::read_to_string(&log).unwrap());

    // A file that is no longer TOML: reported, and the last good one stays.
    rig.write_inventory("[hosts.\"52:54:00:12:34:56\"\nimage = ");
    assert!(wait_for_text(&log, "it stays as it was"));
    assert!(is_deploy(&script(&served, stranger, "pcbios")));
}

/// Actions need the operator's token, from any address; the status token
/// (for deploy environments this server did not boot) is not it.
#[test]
fn machine_actions_need_the_operators_token() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&["--status-token", "s3cret"]);
    let path = "/machines/52-54-00-12-34-56/reprovision";
    assert_eq!(post(&served, path, "", None), 401);
    assert_eq!(post(&served, path, "", Some("wrong")), 401);
    assert_eq!(post(&served, path, "", Some("s3cret")), 401);
    assert_eq!(post(&served, path, "", Some(OPERATOR_TOKEN)), 200);
    // A GET is no action.
    assert_eq!(get_as(&served, path, OPERATOR_TOKEN).0, 404);
    let out = imprint(&[
        "host",
        "reprovision",
        NODE,
        "--server",
        &served.url,
        "--token",
        "wrong-token-of-some-length",
    ]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("401"), "{}", stderr_of(&out));
    // Without --operator-token-file, --hosts makes one in the data
    // directory, for the operator alone; the command line reads it from there.
    drop(served);
    let (hosts, data) = (rig.path("hosts.toml"), rig.path("own-data"));
    let served = Served::start_with_own_token(
        &rig.repo.path(),
        &[
            "--hosts",
            hosts.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let made = data.join("operator-token");
    let token = std::fs::read_to_string(&made).unwrap();
    assert_eq!(token.trim().len(), 64, "{token}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&made).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(post(&served, path, "", Some(OPERATOR_TOKEN)), 401);
    assert_success(&reprovision(&served, NODE, &made));
    drop(served);
    // Without --hosts, none of this exists.
    let plain = Served::start(&rig.repo.path());
    assert_eq!(get(&plain, "/boot.ipxe?mac=52-54-00-12-34-56").0, 404);
    assert_eq!(post(&plain, path, "", Some(OPERATOR_TOKEN)), 404);
}

/// The page, in headless Chromium: a row per machine with its phase and
/// progress, and whatever a machine sent shown as text, never run. Without
/// the operator's token it names no machine; signed in (a link with the token
/// in its fragment, which never reaches the server), it shows them all.
#[test]
fn the_machines_page_shows_progress_and_never_runs_what_machines_send() {
    if !common::vm::chromium_available() {
        return;
    }
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    let node = credential_of(&script(&served, NODE, "pcbios"));
    let hardware = r#"{"phase":"hardware","target":"MAC","hardware":{"firmware":"bios","dmi":{"vendor":"QEMU","product":"<img src=x onerror=alert(2)>"},"cpu":{"count":2},"memory":536870912,"disks":[{"name":"vda","size":8589934592}],"nics":[{"name":"eth0","mac":"52:54:00:12:34:56"}]}}"#;
    for e in [
        r#"{"phase":"booted","target":"MAC"}"#,
        hardware,
        r#"{"phase":"writing","target":"MAC","done":40000000,"total":100000000}"#,
    ] {
        assert_eq!(event(&served, NODE, e, Some(&node)), 204);
    }
    let flaky = credential_of(&script(&served, FLAKY, "efi"));
    let failed = r#"{"phase":"failed","target":"MAC","error":"disk <b>gone</b> <img src=x onerror=alert(1)>"}"#;
    assert_eq!(
        event(
            &served,
            FLAKY,
            r#"{"phase":"booted","target":"MAC"}"#,
            Some(&flaky)
        ),
        204
    );
    assert_eq!(event(&served, FLAKY, failed, Some(&flaky)), 204);
    let hostile = r#"{"phase":"writing","target":"<script>document.title='pwned'</script>","done":1,"total":2}"#;
    assert_eq!(post(&served, "/status", hostile, None), 204);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    // The public view: phases and progress, no machine named.
    let png = artifacts.join("machines-page-public.png");
    let dom = chromium(&served.url, Some(&png), None);
    assert_eq!(dom.matches("<tr>").count(), 4, "{dom}");
    assert!(
        dom.contains(">writing<") && dom.contains(">failed<"),
        "{dom}"
    );
    assert!(dom.contains("40.0 MB of 100.0 MB"), "{dom}");
    for secret in [
        NODE, FLAKY, "node-1", "os:v1", "gone", "pwned", "10.0.2.2", "QEMU", "vda",
    ] {
        assert!(!dom.contains(secret), "{secret} shown to anyone: {dom}");
    }
    assert!(dom.contains("<form id=\"signin\">"), "{dom}");

    // Signed in.
    let png = artifacts.join("machines-page.png");
    let _ = std::fs::remove_file(&png);
    let dom = chromium(
        &format!("{}/#token={OPERATOR_TOKEN}", served.url),
        Some(&png),
        None,
    );
    assert!(dom.contains("<title>imprint: machines</title>"), "{dom}");
    // One row per machine: the two listed, the one that only reports.
    assert_eq!(dom.matches("<tr>").count(), 4, "{dom}");
    assert!(dom.contains(">node-1<"), "{dom}");
    assert!(dom.contains(">writing<"), "{dom}");
    assert!(dom.contains("40.0 MB of 100.0 MB"), "{dom}");
    assert!(dom.contains("<progress max=\"100000000\""), "{dom}");
    assert!(dom.contains(">failed<"), "{dom}");
    assert!(dom.contains(">deploy os:v1<"), "{dom}");
    // Its hardware in a line, every fact a click away, as text.
    assert!(
        dom.contains("<summary>QEMU &lt;img src=x onerror=alert(2)&gt;; bios; 2 CPUs; 512 MiB memory; disks vda 8 GiB; NICs 52:54:00:12:34:56</summary>"),
        "{dom}"
    );
    assert!(
        dom.contains("<li>disk vda: 8 GiB (8589934592 bytes); model unknown;"),
        "{dom}"
    );
    assert_eq!(dom.matches(">reprovision</button>").count(), 2, "{dom}");
    assert!(dom.contains("<form id=\"signin\" hidden=\"\">"), "{dom}");
    // Sent as markup, shown as text.
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "{dom}"
    );
    assert!(
        dom.contains("disk &lt;b&gt;gone&lt;/b&gt; &lt;img src=x onerror=alert(1)&gt;"),
        "{dom}"
    );
    assert!(
        !dom.contains("<b>gone</b>") && !dom.contains("pwned</title>"),
        "{dom}"
    );
    let shot = std::fs::read(&png).expect("the screenshot");
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "{} bytes",
        shot.len()
    );
}

/// The hardware a deploy environment reports (after its `booted`, with its
/// deploy's credential) is kept per machine, bounded and printable, across
/// restarts of the server, and `imprint host show` prints it.
#[test]
fn the_hardware_a_machine_reports_is_kept_and_shown() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    let node = credential_of(&script(&served, NODE, "pcbios"));
    let disks: Vec<String> = (0..100)
        .map(|i: u64| format!(r#"{{"name":"vd{i}","size":{}}}"#, (i + 1) << 30))
        .collect();
    let hardware = format!(
        r#"{{"phase":"hardware","target":"MAC","hardware":{{"firmware":"uefi","secure_boot":true,"dmi":{{"vendor":"\u001b[2JACME","product":"R1\nforged: line","serial":"S-1"}},"memory":1073741824,"disks":[{}],"nics":[{{"name":"eth0","mac":"{NODE}","driver":"e1000","speed":1000}}]}}}}"#,
        disks.join(",")
    );
    // Not before its deploy environment said it started.
    assert_ne!(event(&served, NODE, &hardware, Some(&node)), 204);
    assert_eq!(
        event(
            &served,
            NODE,
            r#"{"phase":"booted","target":"MAC"}"#,
            Some(&node)
        ),
        204
    );
    assert_eq!(event(&served, NODE, &hardware, Some(&node)), 204);
    let doc = machines(&served);
    let m = machine(&doc, NODE);
    assert_eq!(
        m["hardware"]["disks"].as_array().map(Vec::len),
        Some(32),
        "{m}"
    );
    assert_eq!(m["hardware"]["nics"][0]["speed"], 1000);
    assert!(
        !m["hardware"]["dmi"]["vendor"]
            .as_str()
            .unwrap()
            .contains('\u{1b}')
    );
    // Not a step of the deploy: the phase stays what the deploy said.
    assert_eq!(m["state"]["phase"], "booted", "{m}");

    drop(served);
    let served = rig.serve(&[]);
    let token = operator_token_file();
    let out = host_show(&served, NODE, &token);
    assert_success(&out);
    let shown = stdout_of(&out);
    for line in [
        "machine: 52:54:00:12:34:56",
        "host name: node-1",
        "firmware: uefi, Secure Boot on; architecture unknown",
        "system: \\u{1b}[2JACME R1\\nforged: line; serial S-1; UUID unknown",
        "  memory: 1 GiB",
        "  disk vd0: 1 GiB (1073741824 bytes); model unknown; serial unknown; sectors 0/0; solid state",
        "  NIC eth0: 52:54:00:12:34:56; driver e1000; 1000 Mbit/s",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }
    assert!(
        !shown.contains('\u{1b}') && !shown.contains("\nforged"),
        "{shown}"
    );
    // A machine not heard from yet says so; one not known at all is an error.
    let out = host_show(&served, FLAKY, &token);
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("hardware: not reported yet"),
        "{}",
        stdout_of(&out)
    );
    let out = host_show(&served, "52:54:00:99:99:99", &token);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("knows no machine 52:54:00:99:99:99"),
        "{}",
        stderr_of(&out)
    );
}

/// A machine whose reported hardware does not meet its image's requirements
/// is not sent a deploy: it is held with what the image needs (in its boot
/// script, `/machines` and `imprint host show`) until the inventory gives it
/// an image it meets.
#[test]
fn a_machine_that_does_not_meet_its_image_is_held_with_what_the_image_needs() {
    let rig = Rig::new(INVENTORY);
    let image = mixed_image(3, 4);
    rig.repo.add("os:v1", &image, &["--firmware", "uefi"]);
    rig.repo.add(
        "os:big",
        &image,
        &["--firmware", "bios", "--min-disk", "2G"],
    );
    rig.repo.add("os:fits", &image, &["--firmware", "bios"]);
    let served = rig.serve(&[]);
    // Nothing is known of it yet: it gets its deploy, and says what it has.
    let s = script(&served, NODE, "pcbios");
    assert!(is_deploy(&s), "{s}");
    let node = credential_of(&s);
    let hardware = r#"{"phase":"hardware","target":"MAC","hardware":{"arch":"x86_64","firmware":"bios","disks":[{"name":"vda","size":1073741824}]}}"#;
    for e in [
        r#"{"phase":"booted","target":"MAC"}"#,
        hardware,
        r#"{"phase":"failed","target":"MAC","error":"os:v1: the image boots with UEFI firmware only"}"#,
    ] {
        assert_eq!(event(&served, NODE, e, Some(&node)), 204, "{e}");
    }
    let held = |want: &str| {
        let s = script(&served, NODE, "pcbios");
        assert!(!is_deploy(&s), "{s}");
        // The script shows it with what iPXE could take for syntax replaced.
        let shown = want.split(';').next().unwrap_or(want);
        assert!(s.contains(shown), "{shown:?} not in:\n{s}");
        let doc = machines(&served);
        let m = machine(&doc, NODE);
        assert_eq!(m["next"], "hold", "{m}");
        assert!(m["held"].as_str().unwrap_or("").contains(want), "{m}");
    };
    held("boots with UEFI firmware only; this machine started with BIOS");
    let token = operator_token_file();
    let out = host_show(&served, NODE, &token);
    assert_success(&out);
    assert!(
        stdout_of(&out).contains("held: os:v1: the image boots with UEFI firmware only"),
        "{}",
        stdout_of(&out)
    );
    // Another image, which needs a larger disk than it has.
    let inventory =
        |image: &str| INVENTORY.replacen("image = \"os:v1\"", &format!("image = \"{image}\""), 1);
    rig.write_inventory(&inventory("os:big"));
    held("needs a disk of at least 2 GiB (2147483648 bytes); this machine's largest is 1 GiB");
    // Which machines an image fits: the one that said what it has, only
    // where it meets the image; the other has said nothing yet.
    let ls = |image: &str| {
        let out = imprint(&[
            "host",
            "ls",
            "--compatible",
            image,
            "--server",
            &served.url,
            "--token-file",
            token.to_str().unwrap(),
        ]);
        assert_success(&out);
        (stdout_of(&out), stderr_of(&out))
    };
    let (fits, others) = ls("os:fits");
    assert!(
        fits.lines()
            .any(|l| l.starts_with(NODE) && l.contains("disks vda 1 GiB")),
        "{fits}"
    );
    assert!(!fits.contains(FLAKY), "{fits}");
    assert!(
        others.contains("1 machines have not reported their hardware"),
        "{others}"
    );
    let (fits, others) = ls("os:v1");
    assert!(!fits.contains(NODE), "{fits}");
    assert!(
        others.contains(&format!(
            "does not meet os:v1: {NODE}: the image boots with UEFI firmware only"
        )),
        "{others}"
    );
    // One it meets: its deploy goes out.
    rig.write_inventory(&inventory("os:fits"));
    let s = script(&served, NODE, "pcbios");
    assert!(is_deploy(&s) && s.contains("imprint.image=os:fits"), "{s}");
}

/// `imprint report` in the installed OS: the first boot ran before the network
/// and left its report; once the network is up it goes to the server, and is
/// kept for the next boot while the server cannot be reached. Its unit, which
/// makes a boot wait for the network, stays enabled only while a report waits.
/// It goes with the deploy's credential; a report the server refuses (its
/// deploy was superseded) is dropped, not sent at every boot.
#[test]
fn the_installed_os_sends_the_report_its_first_boot_left() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    let credential = deploy(&served, NODE, r#"{"phase":"complete","target":"MAC"}"#);
    let root = rig.path("root");
    let pending = root.join("var/lib/imprint/report.json");
    std::fs::create_dir_all(pending.parent().unwrap()).unwrap();
    let units = root.join("etc/systemd/system");
    let wants = units.join("multi-user.target.wants/imprint-report.service");
    std::fs::create_dir_all(wants.parent().unwrap()).unwrap();
    std::fs::write(units.join("imprint-report.service"), "[Unit]\n").unwrap();
    std::os::unix::fs::symlink("/etc/systemd/system/imprint-report.service", &wants).unwrap();
    let event = format!(
        r#"{{"phase":"complete","target":"{NODE}","committed":"deploy","image":"sha256:{}"}}"#,
        "cd".repeat(32)
    );
    let write_as = |url: &str, credential: &str| {
        std::fs::write(
            &pending,
            format!(r#"{{"url":"{url}","event":{event},"credential":"{credential}"}}"#),
        )
        .unwrap()
    };
    let write = |url: &str| write_as(url, &credential);

    // Nowhere to send it: kept.
    write("http://127.0.0.1:9/status");
    let out = imprint(&[
        "report",
        "--root",
        root.to_str().unwrap(),
        "--patience",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept for the next boot"));
    assert!(pending.exists());
    assert!(
        wants.symlink_metadata().is_ok(),
        "the unit must stay enabled"
    );

    write(&format!("{}/status", served.url));
    let out = imprint(&["report", "--root", root.to_str().unwrap()]);
    assert_success(&out);
    assert!(!pending.exists());
    assert!(
        wants.symlink_metadata().is_err(),
        "the unit must be disabled"
    );
    assert!(units.join("imprint-report.service").exists());
    let (_, status) = get_as(&served, "/status", OPERATOR_TOKEN);
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc[NODE]["committed"], "deploy");
    assert_eq!(
        machine(&machines(&served), NODE)["state"]["committed"],
        true
    );
    let out = imprint(&["report", "--root", root.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to report"));

    // A credential the server does not take: dropped at once.
    write_as(&format!("{}/status", served.url), "A".repeat(40).as_str());
    std::os::unix::fs::symlink("/etc/systemd/system/imprint-report.service", &wants).unwrap();
    let out = imprint(&["report", "--root", root.to_str().unwrap()]);
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refused the first boot's report"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!pending.exists());
    assert!(wants.symlink_metadata().is_err());
}
