//! `imprint firstboot`, run early by the installed OS: finds the disk it booted
//! from, reads the state record the deploy environment left in that disk's
//! `imprint-state` partition, applies the per-host settings (deploy) or migrates
//! the previous OS's configuration (upgrade), and commits. Run again, it ends the
//! same.

use crate::bootswitch;
use crate::footprint::{PENDING_REPORT, REPORT_UNIT_NAME, REPORT_WANTS_DIR, want_reporter};
use crate::format::state::{Mode, Record};
use crate::format::status;
use crate::migrate;
use crate::statepart::{FoundBy, StateDisk, abandoned_upgrades, own_disk, state_disks};
use anyhow::{Context, Result, anyhow, bail};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What first boot finds and does, in order, as it happens (so a console shows
/// how far an interrupted first boot got).
pub enum Event<'a> {
    /// The record on this system's disk.
    Found {
        device: &'a str,
        found_by: FoundBy,
        generation: u64,
        record: &'a Record,
    },
    /// An upgrade from this OS whose trial boot fell back here, now rolled back.
    AbandonedUpgrade { device: &'a str, record: &'a Record },
    /// The record was already committed or rolled back.
    NothingToDo(Mode),
    /// The previous OS left no configuration bundle.
    NoBundle { device: &'a str },
    /// Entries of the previous OS's bundle restored into this root.
    Migrated {
        device: &'a str,
        restored: &'a [String],
        total: usize,
    },
    /// This boot's UEFI entry went first in BootOrder.
    BootOrder(u16),
    /// The OS had sshd and no host keys (a generalized copy): new ones made.
    SshHostKeys,
    /// The record now says committed (and has the first boot's timings).
    Committed(&'a Record),
}

/// Writes `content` to `path` under `root` atomically (temporary name, rename).
fn write_atomic(root: &Path, path: &str, content: &[u8], mode: u32) -> Result<()> {
    let full = root.join(path.trim_start_matches('/'));
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = full.with_extension("imprint-tmp");
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &full).with_context(|| format!("replacing {}", full.display()))?;
    Ok(())
}

/// Applies the per-host settings of a deploy: the host name (file and kernel),
/// and every setting as a file under /etc/imprint/settings/ for the OS's own
/// services to read.
pub fn apply_settings(root: &Path, record: &Record, set_kernel_hostname: bool) -> Result<()> {
    for (key, value) in &record.settings {
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            log::warn!("ignoring setting {key:?}: not a plain name");
            continue;
        }
        write_atomic(
            root,
            &format!("/etc/imprint/settings/{key}"),
            format!("{value}\n").as_bytes(),
            0o644,
        )?;
    }
    if let Some(hostname) = record.settings.get("hostname") {
        write_atomic(
            root,
            "/etc/hostname",
            format!("{hostname}\n").as_bytes(),
            0o644,
        )?;
        if set_kernel_hostname && let Err(e) = crate::sys::set_hostname(hostname) {
            log::warn!("setting the host name: {e}");
        }
    }
    Ok(())
}

/// First boot of the OS rooted at `root`; `on` hears each step as it happens.
pub fn run(root: &Path, on: &mut dyn FnMut(Event)) -> Result<()> {
    let (disk, found_by) = own_disk()?;
    let (mut record, generation) = disk.read_record()?;
    on(Event::Found {
        device: &disk.device,
        found_by,
        generation,
        record: &record,
    });
    match record.mode {
        Mode::Committed | Mode::RolledBack => {
            // Back in an old OS after a trial boot of an upgrade fell back to it?
            let disks = state_disks();
            for other in abandoned_upgrades(&disks, &disk) {
                let r = other.mark_rolled_back()?;
                on(Event::AbandonedUpgrade {
                    device: &other.device,
                    record: &r,
                });
                report(
                    root,
                    &record,
                    status::Event::RolledBack {
                        done: None,
                        image: Some(r.image_digest.to_string()),
                        disk: Some(other.device.clone()),
                    },
                );
            }
            on(Event::NothingToDo(record.mode));
            return Ok(());
        }
        Mode::Deploy => apply_settings(root, &record, root == Path::new("/"))?,
        Mode::Upgrade => migrate_from_previous(root, &record, &disk, on)?,
    }
    // A duplicate of another machine's OS comes without SSH host keys (see
    // `generalize`): made now, before sshd starts.
    match make_ssh_host_keys(root) {
        Ok(true) => on(Event::SshHostKeys),
        Ok(false) => {}
        Err(e) => log::warn!("making SSH host keys: {e:#}; sshd may not start"),
    }
    if crate::sys::is_uefi() {
        // Started by kexec, as the deploy environment noted: BootCurrent is
        // how the deploy environment was booted, not this OS.
        let by_kexec = record.handoff.as_ref().is_some_and(|h| h.done == "kexec");
        match bootswitch::uefi_commit(&disk.layout, by_kexec) {
            Ok(Some(n)) => on(Event::BootOrder(n)),
            Ok(None) => {}
            Err(e) => log::warn!("updating BootOrder: {}", crate::error_text(&e)),
        }
    }
    // The hand-off and this OS's own start, measured now that it runs.
    if let (Some(timings), Some(up)) = (record.timings.as_mut(), crate::sys::uptime()) {
        timings.add_first_boot(
            crate::sys::unix_ms(),
            u64::try_from(up.as_millis()).unwrap_or(u64::MAX),
        );
    }
    let deployed = disk.commit(&mut record)?;
    on(Event::Committed(&record));
    let committed = status::Event::Complete {
        uptime: None,
        unchanged: false,
        committed: Some(deployed.as_str().to_string()),
        image: None,
        timings: record.timings.as_ref().map(|t| t.to_json()),
    };
    report(root, &record, committed);
    Ok(())
}

/// Whether the OS at `root` has sshd but no SSH host key: what a generalized
/// image is on its first boot.
fn needs_ssh_host_keys(root: &Path) -> bool {
    let has_sshd = ["usr/sbin/sshd", "sbin/sshd"]
        .iter()
        .any(|p| root.join(p).exists());
    let has_key = std::fs::read_dir(root.join("etc/ssh"))
        .map(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("ssh_host_") && name.ends_with("_key")
            })
        })
        .unwrap_or(false);
    has_sshd && !has_key
}

/// Makes the OS's SSH host keys when it has sshd and none (`ssh-keygen -A`,
/// under `root`); whether it made them.
fn make_ssh_host_keys(root: &Path) -> Result<bool> {
    if !needs_ssh_host_keys(root) {
        return Ok(false);
    }
    let keygen = ["usr/bin/ssh-keygen", "bin/ssh-keygen"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("sshd is installed, ssh-keygen is not"))?;
    let mut command = std::process::Command::new(keygen);
    command.arg("-A");
    if root != Path::new("/") {
        command.arg("-f").arg(root);
    }
    let out = command.output().context("running ssh-keygen -A")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen -A: {}",
            crate::format::http::printable(String::from_utf8_lossy(&out.stderr).trim())
        );
    }
    Ok(true)
}

/// Upgrade: restore the previous OS's captured configuration, as far as this OS's
/// own migration list allows.
fn migrate_from_previous(
    root: &Path,
    record: &Record,
    own: &StateDisk,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let previous = record
        .previous
        .as_ref()
        .ok_or_else(|| anyhow!("the record says upgrade but names no previous OS"))?;
    let disks = state_disks();
    let old = disks
        .iter()
        .find(|d| d.device != own.device && d.layout.disk_guid == previous.disk_guid)
        .ok_or_else(|| {
            anyhow!(
                "the previous OS disk (GUID {}) is not attached; attach it and run imprint firstboot again",
                previous.disk_guid
            )
        })?;
    let (old_record, _) = old.read_record()?;
    let Some(reference) = old_record.bundle else {
        on(Event::NoBundle {
            device: &old.device,
        });
        return Ok(());
    };
    let bundle = old.load_bundle(&reference)?;
    let accept = migrate::read_list(root)?;
    let restored = migrate::restore(root, &bundle, &accept)?;
    on(Event::Migrated {
        device: &old.device,
        restored: &restored,
        total: bundle.entries.len(),
    });
    if root == Path::new("/")
        && let Ok(name) = std::fs::read_to_string("/etc/hostname")
        && let Err(e) = crate::sys::set_hostname(name.trim())
    {
        log::warn!("setting the host name: {e}");
    }
    Ok(())
}

/// Largest pending report read back.
const MAX_PENDING: u64 = 64 << 10;

/// A status event to the URL the deploy recorded. The first boot usually runs
/// before the network is up, so the event is also left in the root for
/// `imprint report` (run once the network is online) to send.
fn report(root: &Path, record: &Record, mut event: status::Event) {
    let Some(url) = &record.status_url else {
        return;
    };
    event.name_image(&record.image_digest.to_string());
    let event = status::Envelope {
        target: record.target.clone().unwrap_or_default(),
        event,
    }
    .to_value();
    let credential = record.credential.as_ref().map(|c| c.0.as_str());
    match post(url, &event, credential) {
        Ok(()) => return,
        Err(Unsent::Refused(why)) => {
            // Sending it again would get the same answer.
            log::warn!("the report was refused: {why}");
            return;
        }
        Err(Unsent::Failed(_)) => {}
    }
    let pending = serde_json::json!({ "url": url, "event": event, "credential": credential });
    let written = crate::sys::Root::open(root).and_then(|r| {
        r.write_file(
            "var/lib/imprint",
            "report.json",
            pending.to_string().as_bytes(),
            0o600,
        )
    });
    if let Err(e) = written {
        log::warn!("keeping the report for later: {e}");
        return;
    }
    // Sent once the network is online: at every boot until it went (the link),
    // and at this one, if the link was not there when it began (a start job:
    // this boot's units were chosen already).
    let enabled = crate::sys::Root::open(root).and_then(|r| {
        let before = r.exists(&format!("{REPORT_WANTS_DIR}/{REPORT_UNIT_NAME}"));
        Ok(want_reporter(&r, true)? && !before)
    });
    match enabled {
        Ok(true) if root == Path::new("/") => {
            let started = std::process::Command::new("systemctl")
                .args(["--no-block", "start", REPORT_UNIT_NAME])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if !started.is_ok_and(|s| s.success()) {
                log::warn!("could not start {REPORT_UNIT_NAME}: the report goes at the next boot");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("enabling {REPORT_UNIT_NAME}: {e}"),
    }
}

/// Why a report did not go.
enum Unsent {
    /// The server said no (4xx): sending it again changes nothing.
    Refused(String),
    /// It could not be sent now.
    Failed(String),
}

fn post(url: &str, event: &serde_json::Value, credential: Option<&str>) -> Result<(), Unsent> {
    // The installed OS's own CA bundle, for a server that speaks only HTTPS.
    let roots = match url.starts_with("https://") {
        true => match crate::source::CaRoots::system() {
            Some(Ok(roots)) => Some(roots),
            Some(Err(e)) => return Err(Unsent::Failed(e.to_string())),
            None => {
                return Err(Unsent::Failed(
                    "no CA bundle in this OS to check the server with".into(),
                ));
            }
        },
        false => None,
    };
    let client = crate::source::Client::new(
        std::sync::Arc::new(crate::source::SystemResolver),
        std::time::Duration::from_secs(5),
        roots,
        0,
    );
    use crate::source::Delivery;
    match client.post_event(url, credential, event.to_string().as_bytes()) {
        Delivery::Taken => Ok(()),
        Delivery::Refused(status) => Err(Unsent::Refused(format!("the server answered {status}"))),
        Delivery::Failed(why) => Err(Unsent::Failed(why)),
    }
}

/// What `imprint report` did with the report the first boot left.
#[derive(Debug, PartialEq, Eq)]
pub enum Reported {
    Nothing,
    Sent(String),
    /// Still there, for the next boot: why.
    Kept(String),
    /// The server refused it (it would again): dropped, and why.
    Refused(String),
}

/// Sends the report the first boot left in `root` (see [`report`]), retrying
/// for up to `patience` while the network comes up; removes it once sent.
pub fn send_pending(root: &Path, patience: std::time::Duration) -> Result<Reported> {
    let r = crate::sys::Root::open(root).context("opening the root")?;
    let bytes = match r.read(PENDING_REPORT, MAX_PENDING + 1) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reported::Nothing),
        Err(e) => return Err(e).context("reading the pending report"),
    };
    let parsed: Option<(String, serde_json::Value, Option<String>)> = (bytes.len() as u64
        <= MAX_PENDING)
        .then(|| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .flatten()
        .and_then(|v| {
            Some((
                v["url"].as_str()?.to_string(),
                v["event"].clone(),
                v["credential"].as_str().map(str::to_string),
            ))
        });
    let Some((url, event, credential)) = parsed else {
        let _ = std::fs::remove_file(root.join(PENDING_REPORT));
        return Ok(Reported::Kept(
            "the pending report was unreadable; removed".into(),
        ));
    };
    let start = std::time::Instant::now();
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match post(&url, &event, credential.as_deref()) {
            Ok(()) => {
                std::fs::remove_file(root.join(PENDING_REPORT))
                    .context("removing the sent report")?;
                return Ok(Reported::Sent(url));
            }
            Err(Unsent::Refused(why)) => {
                std::fs::remove_file(root.join(PENDING_REPORT))
                    .context("removing the refused report")?;
                return Ok(Reported::Refused(format!("{url}: {why}")));
            }
            Err(Unsent::Failed(e)) if start.elapsed() + wait > patience => {
                return Ok(Reported::Kept(format!("{url}: {e}")));
            }
            Err(Unsent::Failed(_)) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with sshd and Debian's ssh-keygen (the host's, linked in).
    fn root_with_sshd() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["usr/sbin", "usr/bin", "etc/ssh"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("usr/sbin/sshd"), b"").unwrap();
        std::os::unix::fs::symlink("/usr/bin/ssh-keygen", dir.path().join("usr/bin/ssh-keygen"))
            .unwrap();
        dir
    }

    #[test]
    fn a_generalized_os_gets_ssh_host_keys_of_its_own_once() {
        let dir = root_with_sshd();
        assert!(needs_ssh_host_keys(dir.path()));
        assert!(make_ssh_host_keys(dir.path()).unwrap());
        let key = std::fs::read_to_string(dir.path().join("etc/ssh/ssh_host_ed25519_key.pub"))
            .expect("an ed25519 host key (ssh-keygen: Debian's openssh-client)");
        assert!(key.starts_with("ssh-ed25519 "), "{key}");
        // Made once: the next boot keeps them.
        assert!(!make_ssh_host_keys(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
            key
        );
        // Without sshd nothing is made.
        let bare = tempfile::tempdir().unwrap();
        assert!(!make_ssh_host_keys(bare.path()).unwrap());
        assert!(!bare.path().join("etc/ssh").exists());
    }
}
