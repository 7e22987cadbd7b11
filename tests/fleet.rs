//! `imprint serve --hosts`: the provisioning server, driven over HTTP as iPXE
//! and the deploy environment drive it (boot scripts, status events), with the
//! inventory edited and the server restarted under it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const NODE: &str = "52:54:00:12:34:56";
const FLAKY: &str = "52:54:00:00:00:02";

struct Rig {
    repo: Repo,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new(inventory: &str) -> Rig {
        let rig = Rig {
            repo: Repo::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(rig.repo.path()).unwrap();
        rig.write_inventory(inventory);
        std::fs::write(rig.path("vmlinuz"), b"a kernel").unwrap();
        std::fs::write(rig.path("initramfs.img"), b"an initramfs").unwrap();
        std::fs::write(rig.path("node-1.yaml"), "#cloud-config\nhostname: node-1\n").unwrap();
        rig
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_inventory(&self, text: &str) {
        // Renamed into place, as editors do, so a reload never sees half a file.
        std::fs::write(self.path("hosts.toml.new"), text).unwrap();
        std::fs::rename(self.path("hosts.toml.new"), self.path("hosts.toml")).unwrap();
    }

    fn serve(&self, extra: &[&str]) -> Served {
        let (hosts, data, kernel, initrd) = (
            self.path("hosts.toml"),
            self.path("data"),
            self.path("vmlinuz"),
            self.path("initramfs.img"),
        );
        let mut options = vec![
            "--hosts",
            hosts.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ];
        options.extend_from_slice(extra);
        Served::start_with(&self.repo.path(), &options, None, Stdio::null())
    }
}

fn get(served: &Served, path: &str) -> (u16, String) {
    let (status, _, body) = raw_request(
        &served.addr(),
        &format!("GET {path} HTTP/1.1\r\nHost: 10.0.2.2:8080\r\nConnection: close\r\n\r\n"),
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The boot script iPXE gets for `mac`, with the colons escaped as iPXE may.
fn script(served: &Served, mac: &str, platform: &str) -> String {
    let (status, body) = get(
        served,
        &format!(
            "/boot.ipxe?mac={}&platform={platform}",
            mac.replace(':', "%3A")
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    body
}

fn post(served: &Served, path: &str, body: &str, token: Option<&str>) -> u16 {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw_request(
        &served.addr(),
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .0
}

/// The events a deploy environment sends for a deploy that ends as `end`.
fn report(served: &Served, mac: &str, end: &str) {
    let events = [
        format!(r#"{{"phase":"booted","target":"{mac}"}}"#),
        format!(r#"{{"phase":"writing","target":"{mac}","done":10,"total":100}}"#),
        format!(
            r#"{{"phase":"boot-records","target":"{mac}","image":"sha256:{}"}}"#,
            "ab".repeat(32)
        ),
        end.replace("MAC", mac),
    ];
    for e in events {
        assert_eq!(post(served, "/status", &e, None), 204, "{e}");
    }
}

fn is_deploy(script: &str) -> bool {
    script.lines().any(|l| l.starts_with("kernel "))
}

fn machine<'a>(doc: &'a serde_json::Value, mac: &str) -> &'a serde_json::Value {
    doc["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac)
        .unwrap_or_else(|| panic!("{mac} not in {doc}"))
}

fn machines(served: &Served) -> serde_json::Value {
    let (status, body) = get(served, "/machines");
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

const INVENTORY: &str = r#"
[hosts."52:54:00:12:34:56"]
hostname = "node-1"
image = "os:v1"
settings = { disk = "/dev/vda" }
user-data = "node-1.yaml"

[hosts."52:54:00:00:00:02"]
image = "os:v1"
"#;

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
    ] {
        assert!(kernel.contains(arg), "{arg:?} not in {kernel}");
    }
    assert!(
        s.contains("\ninitrd http://10.0.2.2:8080/boot/initramfs.img\nboot\n"),
        "{s}"
    );
    // What the script names is served.
    assert_eq!(get(&served, "/boot/vmlinuz"), (200, "a kernel".into()));
    assert_eq!(
        get(&served, "/boot/initramfs.img"),
        (200, "an initramfs".into())
    );
    assert_eq!(
        get(&served, "/hosts/52-54-00-12-34-56/user-data"),
        (200, "#cloud-config\nhostname: node-1\n".into())
    );
    assert_eq!(get(&served, "/hosts/52-54-00-00-00-02/user-data").0, 404);

    report(&served, NODE, r#"{"phase":"complete","target":"MAC"}"#);
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
    // The installed OS's agent commits, and says so.
    let committed = format!(
        r#"{{"phase":"complete","target":"{NODE}","committed":"deploy","image":"sha256:{}"}}"#,
        "ab".repeat(32)
    );
    assert_eq!(post(&served, "/status", &committed, None), 204);
    assert_eq!(
        machine(&machines(&served), NODE)["state"]["committed"],
        true
    );

    // The server restarts: what it knew of the machine is still there.
    drop(served);
    let served = rig.serve(&[]);
    assert!(!is_deploy(&script(&served, NODE, "pcbios")));
    assert_eq!(
        machine(&machines(&served), NODE)["state"]["committed"],
        true
    );

    // Reprovisioned from the command line: one more deploy, then local again.
    let out = imprint(&["host", "reprovision", NODE, "--server", &served.url]);
    assert_success(&out);
    let s = script(&served, NODE, "pcbios");
    assert!(is_deploy(&s), "{s}");
    report(&served, NODE, r#"{"phase":"complete","target":"MAC"}"#);
    assert!(!is_deploy(&script(&served, NODE, "pcbios")));
    assert_eq!(machine(&machines(&served), NODE)["state"]["deploys"], 2);
}

#[test]
fn failed_deploys_are_retried_then_held_until_reprovisioned() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&["--attempts", "3"]);
    let attempt = |n: u32| {
        let s = script(&served, FLAKY, "pcbios");
        assert!(s.contains(&format!("(attempt {n} of 3)")), "{s}");
    };
    attempt(1);
    report(
        &served,
        FLAKY,
        r#"{"phase":"failed","target":"MAC","error":"no disk of 300 MB or more"}"#,
    );
    attempt(2);
    // Started again without reporting an end: a failure too.
    attempt(3);
    report(
        &served,
        FLAKY,
        r#"{"phase":"failed","target":"MAC","error":"chunk 7: \u001b[31m${evil}"}"#,
    );
    let held = script(&served, FLAKY, "pcbios");
    assert!(!is_deploy(&held), "{held}");
    assert!(
        held.contains("failed 3 times in a row, last: chunk 7: "),
        "{held}"
    );
    assert!(
        !held.contains("${evil}") && !held.contains('\u{1b}'),
        "{held}"
    );
    assert!(
        held.contains("imprint host reprovision 52:54:00:00:00:02"),
        "{held}"
    );
    assert!(held.contains("\nsleep 60\nchain "), "{held}");
    assert_eq!(machine(&machines(&served), FLAKY)["next"], "hold");
    // Held across a restart too; a reprovision lifts it.
    drop(served);
    let served = rig.serve(&[]);
    assert!(!is_deploy(&script(&served, FLAKY, "pcbios")));
    assert_eq!(
        post(&served, "/machines/52-54-00-00-00-02/reprovision", "", None),
        200
    );
    let s = script(&served, FLAKY, "pcbios");
    assert!(s.contains("(attempt 1 of 3)"), "{s}");
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

fn wait_for_text(log: &Path, text: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(text)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn machine_actions_need_the_token_when_there_is_one() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&["--status-token", "s3cret"]);
    let path = "/machines/52-54-00-12-34-56/reprovision";
    assert_eq!(post(&served, path, "", None), 401);
    assert_eq!(post(&served, path, "", Some("wrong")), 401);
    assert_eq!(post(&served, path, "", Some("s3cret")), 200);
    let out = imprint(&["host", "reprovision", NODE, "--server", &served.url]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("401"), "{}", stderr_of(&out));
    let out = imprint(&[
        "host",
        "reprovision",
        NODE,
        "--server",
        &served.url,
        "--token",
        "s3cret",
    ]);
    assert_success(&out);
    // Without --hosts, none of this exists.
    let plain = Served::start(&rig.repo.path());
    assert_eq!(get(&plain, "/boot.ipxe?mac=52-54-00-12-34-56").0, 404);
    assert_eq!(post(&plain, path, "", None), 404);
}

/// Headless Chromium on `url`: the page's document once its script ran, and a
/// screenshot written to `png`.
fn chromium(url: &str, png: &Path) -> String {
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ];
    let profile = tempfile::tempdir().unwrap();
    let user_dir = format!("--user-data-dir={}", profile.path().display());
    let run = |extra: &[&str]| {
        let out = std::process::Command::new("/usr/bin/chromium")
            .args(base)
            .arg(&user_dir)
            .args(extra)
            .arg(url)
            .output()
            .expect("running chromium");
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    run(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1280,420",
    ]);
    dom
}

/// The page, in headless Chromium: a row per machine with its phase and
/// progress, and whatever a machine sent shown as text, never run.
#[test]
fn the_machines_page_shows_progress_and_never_runs_what_machines_send() {
    if !common::vm::chromium_available() {
        return;
    }
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    assert!(is_deploy(&script(&served, NODE, "pcbios")));
    for e in [
        format!(r#"{{"phase":"booted","target":"{NODE}"}}"#),
        format!(r#"{{"phase":"writing","target":"{NODE}","done":40000000,"total":100000000}}"#),
    ] {
        assert_eq!(post(&served, "/status", &e, None), 204);
    }
    assert!(is_deploy(&script(&served, FLAKY, "efi")));
    let failed = format!(
        r#"{{"phase":"failed","target":"{FLAKY}","error":"disk <b>gone</b> <img src=x onerror=alert(1)>"}}"#
    );
    assert_eq!(post(&served, "/status", &failed, None), 204);
    let hostile = r#"{"phase":"writing","target":"<script>document.title='pwned'</script>","done":1,"total":2}"#;
    assert_eq!(post(&served, "/status", hostile, None), 204);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("machines-page.png");
    let _ = std::fs::remove_file(&png);
    let dom = chromium(&served.url, &png);

    assert!(dom.contains("<title>imprint: machines</title>"), "{dom}");
    // One row per machine: the two listed, the one that only reports.
    assert_eq!(dom.matches("<tr>").count(), 4, "{dom}");
    assert!(dom.contains(">node-1<"), "{dom}");
    assert!(dom.contains(">writing<"), "{dom}");
    assert!(dom.contains("40.0 MB of 100.0 MB"), "{dom}");
    assert!(dom.contains("<progress max=\"100000000\""), "{dom}");
    assert!(dom.contains(">failed<"), "{dom}");
    assert!(dom.contains(">deploy os:v1<"), "{dom}");
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

/// `imprint report` in the installed OS: the first boot ran before the network
/// and left its report; once the network is up it goes to the server, and is
/// kept for the next boot while the server cannot be reached. Its unit, which
/// makes a boot wait for the network, stays enabled only while a report waits.
#[test]
fn the_installed_os_sends_the_report_its_first_boot_left() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
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
    let write = |url: &str| {
        std::fs::write(&pending, format!(r#"{{"url":"{url}","event":{event}}}"#)).unwrap()
    };

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
    let (_, status) = get(&served, "/status");
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc[NODE]["committed"], "deploy");
    let out = imprint(&["report", "--root", root.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to report"));
}
