//! `imprint serve --hosts` driven over HTTP as iPXE and deploy environments
//! drive it: boot scripts per MAC, status events with each deploy's
//! credential, the operator's reads and actions.

use super::*;
use std::path::PathBuf;
use std::process::Stdio;

pub const NODE: &str = "52:54:00:12:34:56";
pub const FLAKY: &str = "52:54:00:00:00:02";

pub const INVENTORY: &str = r#"
[hosts."52:54:00:12:34:56"]
hostname = "node-1"
image = "os:v1"
settings = { disk = "/dev/vda" }
user-data = "node-1.yaml"

[hosts."52:54:00:00:00:02"]
image = "os:v1"
"#;

pub struct Rig {
    pub repo: Repo,
    pub dir: tempfile::TempDir,
}

impl Rig {
    pub fn new(inventory: &str) -> Rig {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_inventory(&self, text: &str) {
        // Renamed into place, as editors do, so a reload never sees half a file.
        std::fs::write(self.path("hosts.toml.new"), text).unwrap();
        std::fs::rename(self.path("hosts.toml.new"), self.path("hosts.toml")).unwrap();
    }

    pub fn serve(&self, extra: &[&str]) -> Served {
        self.serve_logging(extra, Stdio::null())
    }

    pub fn serve_logging(&self, extra: &[&str], log: Stdio) -> Served {
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
        Served::start_with(&self.repo.path(), &options, None, log)
    }

    /// What the server remembers of `mac`, as it wrote it down.
    pub fn machine_file(&self, mac: &str) -> Option<Vec<u8>> {
        std::fs::read(
            self.path("data/machines")
                .join(format!("{}.json", mac.replace(':', "-"))),
        )
        .ok()
    }

    /// How many machines the server has written down.
    pub fn machine_files(&self) -> usize {
        std::fs::read_dir(self.path("data/machines"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// A GET from nobody in particular.
pub fn get(served: &Served, path: &str) -> (u16, String) {
    let (status, _, body) = raw_request(
        &served.addr(),
        &format!("GET {path} HTTP/1.1\r\nHost: 10.0.2.2:8080\r\nConnection: close\r\n\r\n"),
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A GET with `Authorization: Bearer TOKEN`.
pub fn get_as(served: &Served, path: &str, token: &str) -> (u16, String) {
    let (status, _, body) = raw_request(
        &served.addr(),
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 10.0.2.2:8080\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The boot script iPXE gets for `mac`, with the colons escaped as iPXE may.
pub fn script(served: &Served, mac: &str, platform: &str) -> String {
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

/// The credential a deploy script gives its deploy environment.
pub fn credential_of(script: &str) -> String {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("imprint.credential="))
        .unwrap_or_else(|| panic!("no credential in {script}"))
        .to_string()
}

/// A POST with `Authorization: Bearer TOKEN` when given.
pub fn post(served: &Served, path: &str, body: &str, token: Option<&str>) -> u16 {
    post_with(served, path, body, token, "").0
}

/// A POST with more header lines; the whole answer.
pub fn post_with(
    served: &Served,
    path: &str,
    body: &str,
    token: Option<&str>,
    headers: &str,
) -> (u16, Vec<(String, String)>, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (status, headers, body) = raw_request(
        &served.addr(),
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 10.0.2.2:8080\r\n{auth}{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A status event of `mac`'s deploy, with `credential`.
pub fn event(served: &Served, mac: &str, json: &str, credential: Option<&str>) -> u16 {
    post(served, "/status", &json.replace("MAC", mac), credential)
}

/// The events a deploy environment sends for a deploy that ends as `end`,
/// each with `credential`; every one taken.
pub fn report(served: &Served, mac: &str, credential: &str, end: &str) {
    let events = [
        r#"{"phase":"booted","target":"MAC"}"#.to_string(),
        r#"{"phase":"writing","target":"MAC","done":10,"total":100}"#.to_string(),
        format!(
            r#"{{"phase":"boot-records","target":"MAC","image":"sha256:{}"}}"#,
            "ab".repeat(32)
        ),
        end.to_string(),
    ];
    for e in events {
        assert_eq!(event(served, mac, &e, Some(credential)), 204, "{e}");
    }
}

/// Asks for `mac`'s script, and runs its deploy to `end` with its credential.
pub fn deploy(served: &Served, mac: &str, end: &str) -> String {
    let s = script(served, mac, "pcbios");
    assert!(is_deploy(&s), "{s}");
    let credential = credential_of(&s);
    report(served, mac, &credential, end);
    credential
}

pub fn is_deploy(script: &str) -> bool {
    script.lines().any(|l| l.starts_with("kernel "))
}

pub fn machine<'a>(doc: &'a serde_json::Value, mac: &str) -> &'a serde_json::Value {
    doc["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac)
        .unwrap_or_else(|| panic!("{mac} not in {doc}"))
}

/// `/machines` as the operator sees it.
pub fn machines(served: &Served) -> serde_json::Value {
    let (status, body) = get_as(served, "/machines", OPERATOR_TOKEN);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub fn wait_for_text(log: &Path, text: &str) -> bool {
    let start = std::time::Instant::now();
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

/// Headless Chromium on `url`: the page's document once its script ran, and
/// a screenshot written to `png` when given. `profile` keeps the browser's
/// cookies from one call to the next; without it each call starts afresh.
pub fn chromium(url: &str, png: Option<&Path>, profile: Option<&Path>) -> String {
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ];
    let fresh = tempfile::tempdir().unwrap();
    let profile = profile.unwrap_or(fresh.path());
    let user_dir = format!("--user-data-dir={}", profile.display());
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
    if let Some(png) = png {
        run(&[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,420",
        ]);
    }
    dom
}
