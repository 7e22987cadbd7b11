//! Commands of the installed OS: firstboot, status, rollback, prepare-upgrade.
//! The work and the reports come from [`imprint::installed`]; this prints them.

use super::exit::Exit;
use anyhow::Result;
use clap::Args;
use imprint::format::http::printable;
use imprint::format::state::Agent;
use imprint::installed::firstboot::Event;
use std::path::PathBuf;

#[derive(Args)]
pub struct FirstbootArgs {
    /// Root of the installed OS to apply settings to.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Args)]
pub struct PrepareUpgradeArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

pub fn firstboot(args: &FirstbootArgs) -> Result<Exit> {
    imprint::installed::firstboot::run(&args.root, &mut print_firstboot)?;
    Ok(Exit::Success)
}

/// One or more lines per event, printed as it happens so the console shows how
/// far an interrupted first boot got.
fn print_firstboot(event: Event) {
    let p = "imprint firstboot:";
    match event {
        Event::Found {
            device,
            found_by,
            generation,
            record,
        } => {
            println!(
                "{p} disk={device} generation={generation} ({})",
                found_by.as_str()
            );
            println!("{p} mode={}", record.mode.as_str());
            println!("{p} image={} {}", record.image_name, record.image_digest);
            for (k, v) in &record.settings {
                println!("{p} setting {k}={v}");
            }
        }
        Event::AbandonedUpgrade { device, record } => println!(
            "{p} the upgrade to {} {} on {device} never committed; marked rolled-back",
            record.image_name, record.image_digest
        ),
        Event::NothingToDo(mode) => println!("{p} nothing to do ({})", mode.as_str()),
        Event::NoBundle { device } => println!(
            "{p} {device} has no configuration bundle (none captured at the upgrade, prepare-upgrade not run); nothing to migrate"
        ),
        Event::Migrated {
            device,
            restored,
            total,
        } => {
            println!(
                "{p} migrated {} of {total} entries from {device}",
                restored.len()
            );
            for path in restored {
                println!("{p} migrated {path}");
            }
        }
        Event::BootOrder(n) => println!("{p} Boot{n:04X} is now the first disk in BootOrder"),
        Event::SshHostKeys => println!("{p} made new SSH host keys"),
        Event::Committed(record) => {
            println!("{p} committed");
            if let Some(t) = &record.timings {
                println!("{p} timings: {}", t.summary());
            }
        }
    }
}

pub fn status() -> Result<Exit> {
    let r = imprint::installed::status()?;
    println!("disk        {}", r.device);
    println!("generation  {}", r.generation);
    println!("mode        {}", r.record.mode.as_str());
    println!("deployed as {}", r.record.deployed_mode.as_str());
    println!(
        "image       {} {}",
        r.record.image_name, r.record.image_digest
    );
    println!("deployed at {} (Unix time)", r.record.deployed_at);
    for (k, v) in &r.record.settings {
        println!("setting     {k}={v}");
    }
    if let Some(release) = &r.record.release {
        println!(
            "release     {}:{} signed, issued at {} (Unix time)",
            r.record.image_name, release.tag, release.issued
        );
    }
    if let Some(b) = &r.record.bundle {
        println!("bundle      slot {} {} bytes {}", b.slot, b.len, b.sha256);
    }
    let agent = match &r.record.agent {
        Agent::NotChecked => "not checked at deploy".to_string(),
        Agent::Own => "the image's own".to_string(),
        Agent::Installed { format } => format!("installed by the deploy (format {format})"),
        Agent::Skipped(why) => format!("none installed: {why}"),
    };
    println!("agent       {agent}");
    if let Some(t) = &r.record.timings {
        println!("timings     {}", t.summary());
    }
    match &r.record.handoff {
        Some(h) if h.done == "kexec" => println!("handoff     kexec at {} (Unix time)", h.at),
        Some(h) => println!(
            "handoff     {}, not kexec, at {} (Unix time): {}",
            printable(&h.done),
            h.at,
            printable(&h.why)
        ),
        None => {}
    }
    Ok(Exit::Success)
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The installed OS's root.
    #[arg(long, default_value = "/")]
    root: std::path::PathBuf,
    /// Seconds to keep trying while the network comes up.
    #[arg(long, default_value_t = 120)]
    patience: u64,
}

/// Sends the report the first boot left for when the network is up.
pub fn report(args: &ReportArgs) -> Result<Exit> {
    use imprint::footprint::want_reporter;
    use imprint::installed::firstboot::{Reported, send_pending};
    let p = "imprint report:";
    match send_pending(&args.root, std::time::Duration::from_secs(args.patience))? {
        Reported::Nothing => println!("{p} nothing to report"),
        Reported::Sent(url) => println!("{p} sent the first boot's report to {url}"),
        Reported::Kept(why) => {
            println!("{p} not sent ({why}); kept for the next boot");
            return Ok(Exit::Failure);
        }
        Reported::Refused(why) => {
            println!("{p} the server refused the first boot's report ({why}); dropped");
        }
    }
    // Nothing waits: later boots need not wait for the network on its account.
    if let Err(e) = imprint::sys::Root::open(&args.root).and_then(|r| want_reporter(&r, false)) {
        println!("{p} could not disable its unit: {e}");
    }
    Ok(Exit::Success)
}

pub fn rollback() -> Result<Exit> {
    for line in imprint::installed::rollback()? {
        println!("imprint rollback: {line}");
    }
    Ok(Exit::Success)
}

pub fn prepare_upgrade(args: &PrepareUpgradeArgs) -> Result<Exit> {
    let r = imprint::installed::prepare_upgrade(&args.root)?;
    println!(
        "imprint prepare-upgrade: captured {} entries ({} bytes, {}) into {}",
        r.entries, r.bundle.len, r.bundle.sha256, r.device
    );
    Ok(Exit::Success)
}
