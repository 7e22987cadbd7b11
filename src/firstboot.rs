//! `imprint firstboot`, run early by the installed OS: finds the disk it booted
//! from, reads the state record the deploy environment left in that disk's
//! `imprint-state` partition, and reports it.

use crate::engine::Window;
use crate::format::state::{self, Record};
use crate::statedisk::{own_disk, state_disks};
use anyhow::{Context, Result, anyhow};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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

pub fn run(root: &Path) -> Result<()> {
    let disk = own_disk()?;
    let (mut record, generation) = disk.read_record()?;
    println!(
        "imprint firstboot: disk={} generation={generation}",
        disk.device
    );
    println!("imprint firstboot: mode={}", record.mode.as_str());
    println!(
        "imprint firstboot: image={} {}",
        record.image_name, record.image_digest
    );
    for (k, v) in &record.settings {
        println!("imprint firstboot: setting {k}={v}");
    }
    match record.mode {
        state::Mode::Committed | state::Mode::RolledBack => {
            // Back in an old OS after a trial boot of an upgrade fell back to it?
            let disks = state_disks();
            for other in crate::upgrade::abandoned_upgrades(&disks, &disk) {
                let (mut r, _) = other.read_record()?;
                r.mode = state::Mode::RolledBack;
                other.write_record(&r)?;
                println!(
                    "imprint firstboot: the upgrade to {} {} on {} never committed; marked rolled-back",
                    r.image_name, r.image_digest, other.device
                );
                report(
                    &record,
                    "rolled-back",
                    serde_json::json!({ "image": r.image_digest.to_string(), "disk": other.device }),
                );
            }
            println!(
                "imprint firstboot: nothing to do ({})",
                record.mode.as_str()
            );
            return Ok(());
        }
        state::Mode::Deploy => {
            apply_settings(root, &record, root == Path::new("/"))?;
        }
        state::Mode::Upgrade => migrate_from_previous(root, &record, &disk.device)?,
    }
    if crate::sys::is_uefi() {
        match crate::upgrade::uefi_commit() {
            Ok(Some(n)) => println!("imprint firstboot: Boot{n:04X} is now first in BootOrder"),
            Ok(None) => {}
            Err(e) => log::warn!("updating BootOrder: {}", crate::error_text(&e)),
        }
    }
    let deployed = record.mode;
    record.mode = state::Mode::Committed;
    record.deployed_mode = deployed;
    disk.write_record(&record)?;
    println!("imprint firstboot: committed");
    report(
        &record,
        "complete",
        serde_json::json!({ "committed": deployed.as_str() }),
    );
    Ok(())
}

/// Upgrade: restore the previous OS's captured configuration, as far as this OS's
/// own migration list allows.
fn migrate_from_previous(root: &Path, record: &Record, own_device: &str) -> Result<()> {
    let previous = record
        .previous
        .as_ref()
        .ok_or_else(|| anyhow!("the record says upgrade but names no previous OS"))?;
    let disks = state_disks();
    let old = disks
        .iter()
        .find(|d| d.device != own_device && d.layout.disk_guid == previous.disk_guid)
        .ok_or_else(|| {
            anyhow!(
                "the previous OS disk (GUID {}) is not attached; attach it and run imprint firstboot again",
                previous.disk_guid
            )
        })?;
    let (old_record, _) = old.read_record()?;
    let Some(reference) = old_record.bundle else {
        println!(
            "imprint firstboot: {} has no configuration bundle (prepare-upgrade was not run); nothing to migrate",
            old.device
        );
        return Ok(());
    };
    let file = File::open(&old.device).with_context(|| format!("opening {}", old.device))?;
    let (start, len) = old.state_range();
    let bundle = crate::migrate::load(&mut Window::new(&file, start, len), len, &reference)
        .with_context(|| format!("reading the configuration bundle on {}", old.device))?;
    let accept = crate::migrate::read_list(root)?;
    let restored = crate::migrate::restore(root, &bundle, &accept)?;
    println!(
        "imprint firstboot: migrated {} of {} entries from {}",
        restored.len(),
        bundle.entries.len(),
        old.device
    );
    for path in &restored {
        println!("imprint firstboot: migrated {path}");
    }
    if root == Path::new("/")
        && let Ok(name) = std::fs::read_to_string("/etc/hostname")
        && let Err(e) = crate::sys::set_hostname(name.trim())
    {
        log::warn!("setting the host name: {e}");
    }
    Ok(())
}

/// Best effort: a status event to the URL the deploy recorded, if the network is up.
fn report(record: &Record, phase: &str, extra: serde_json::Value) {
    let Some(url) = &record.status_url else {
        return;
    };
    let mut event = serde_json::json!({
        "target": record.target.clone().unwrap_or_default(),
        "phase": phase,
        "image": record.image_digest.to_string(),
    });
    if let (Some(map), serde_json::Value::Object(more)) = (event.as_object_mut(), extra) {
        map.extend(more);
    }
    let agent = crate::source::small_agent(
        std::sync::Arc::new(crate::source::SystemResolver),
        std::time::Duration::from_secs(5),
    );
    if let Err(e) = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(event.to_string().as_bytes())
    {
        log::warn!("status event to {url}: {e}");
    }
}

/// `imprint status`: what the state record of this system's disk says.
pub fn status() -> Result<()> {
    let disk = own_disk()?;
    let (record, generation) = disk.read_record()?;
    println!("disk        {}", disk.device);
    println!("generation  {generation}");
    println!("mode        {}", record.mode.as_str());
    println!("deployed as {}", record.deployed_mode.as_str());
    println!("image       {} {}", record.image_name, record.image_digest);
    println!("deployed at {} (Unix time)", record.deployed_at);
    for (k, v) in &record.settings {
        println!("setting     {k}={v}");
    }
    if let Some(b) = &record.bundle {
        println!("bundle      slot {} {} bytes {}", b.slot, b.len, b.sha256);
    }
    Ok(())
}

/// `imprint rollback` on a running system: undo an upgrade that has not
/// committed (BIOS: restore the previous disk's boot record).
pub fn rollback() -> Result<()> {
    for line in crate::upgrade::rollback(&state_disks())? {
        println!("imprint rollback: {line}");
    }
    Ok(())
}

/// `imprint prepare-upgrade`: captures this OS's configuration into its state
/// partition, for the next OS to migrate.
pub fn prepare_upgrade(root: &Path) -> Result<()> {
    let disk = own_disk()?;
    let list = crate::migrate::read_list(root)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bundle = crate::migrate::capture(root, &list, now)?;
    let file = disk.open_rw()?;
    let (start, len) = disk.state_range();
    let (_, reference) =
        crate::migrate::store(&mut Window::new(&file, start, len), len, &bundle)
            .with_context(|| format!("storing the configuration bundle on {}", disk.device))?;
    println!(
        "imprint prepare-upgrade: captured {} entries ({} bytes, {}) into {}",
        bundle.entries.len(),
        reference.len,
        reference.sha256,
        disk.device
    );
    Ok(())
}
