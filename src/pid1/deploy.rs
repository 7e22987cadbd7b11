//! Deploy and upgrade in the deploy environment, as a list of named steps. The
//! disk writes themselves are the engine's install sequence; this module decides
//! what goes into it (which disk, which previous OS, which record) and what
//! happens around it (status, the firmware's boot switch, the hand-off). What
//! it starts from (command line, media, network, manifest, disk, previous OS)
//! is gathered in `inputs.rs`.

use super::inputs::{
    fetch_host_data, fetch_manifest, load_drivers, media_and_network, media_inventory_choice,
    mount_media, network_if_wanted, parse_config, previous_os, refuse_downgrade, refuse_stale,
    refuse_unmet, report_hardware, wait_for_disk,
};
use super::{Never, agent, disks, drivers, handoff, identity, osroot, rollback, status, uptime};
use crate::bootswitch;
use crate::engine::install::{self, Installed, Plan, Step};
use crate::engine::{DeployOptions, DiskTarget, Progress, Resolved, Target};
use crate::format::cmdline::{self, Config};
use crate::format::gpt::{self, Guid, Layout};
use crate::format::http::printable;
use crate::format::state::{self, Record};
use crate::format::status::Event;
use crate::format::timing::{ByteSources, DataWork, Phase as Timed, Timings};
use crate::source::{RetryPolicy, Source};
use crate::statepart::{self, StateDisk};
use crate::sys;
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One run of the deploy environment, from the command line to the hand-off.
pub(super) fn run(cmdline_text: &str) -> Result<Never> {
    let mut clock = Clock::start();
    let mut config = parse_config(cmdline_text)?;
    load_drivers();
    clock.lap(Timed::Drivers);
    let hardware = report_hardware();
    if config.mode == cmdline::Mode::Rollback {
        return rollback::run(&config);
    }
    if config.mode == cmdline::Mode::Capture {
        return super::capture::run(&config, &hardware);
    }
    if config.mode == cmdline::Mode::Upgrade && config.disk.is_none() {
        bail!(
            "imprint.mode=upgrade needs imprint.disk= to name the new disk (the previous OS stays on its own); nothing was written"
        );
    }
    let media = mount_media(&config)?;
    if let Some(chosen) = media_inventory_choice(cmdline_text, &media)? {
        config = chosen;
    }
    if media.iter().any(Option::is_some) {
        clock.lap(Timed::Media);
    }
    let resolver = network_if_wanted(&config, &media)?;
    if resolver.is_some() {
        clock.lap(Timed::Network);
    }
    let (source, resolved) = fetch_manifest(&config, resolver, &media)?;
    refuse_stale(&config, &resolved)?;
    let host_data = fetch_host_data(&config, &source)?;
    clock.lap(Timed::Manifest);
    let manifest = &resolved.manifest;
    refuse_unmet(manifest, &hardware)?;
    let needed = install::required_size(manifest)?;
    let disk = wait_for_disk(&config, needed)?;
    clock.lap(Timed::Disk);
    if config.mode == cmdline::Mode::Deploy
        && !config.redeploy
        && let Some(target) = already_deployed(&disk, &resolved)
    {
        return handoff::start_installed(&disk, &target.layout, manifest.boot.as_ref());
    }
    let previous = match config.mode {
        cmdline::Mode::Upgrade => Some(previous_os(&config, &disk.dev_path())?),
        _ => None,
    };
    refuse_downgrade(&config, &resolved, &disk, previous.as_ref())?;
    if let Some(previous) = &previous {
        capture_previous(previous);
        clock.lap(Timed::Capture);
    }
    let record = state_record(&config, &resolved, previous.as_ref(), &clock);
    let (installed, replaced, renames) = install_image(
        &config,
        &source,
        &resolved,
        &disk,
        previous.as_ref(),
        &record,
        &mut clock,
    )?;
    let agent = finish_os(
        &disk,
        &installed,
        &record,
        &renames,
        host_data,
        resolved.manifest.generalized,
    );
    match &previous {
        Some(previous) => switch_boot(previous, &installed, &disk, &manifest.name)?,
        None => {
            keep_chain(replaced, &installed)?;
            let from_medium = media.iter().any(Option::is_some);
            boot_disk_after_current(&disk, &installed, &manifest.name, from_medium);
        }
    }
    clock.lap(Timed::BootRecords);
    let timings = clock.finish(&installed.progress, media_and_network(&source));
    // For the installed OS to add its own, and `imprint status` to show.
    note_in_record(&disk, "the timings", |r| r.timings = Some(timings.clone()));
    log::info!("timings: {}", timings.summary());
    status().send(Event::BootRecords {
        disk: disk.dev_path(),
        image: resolved.digest.to_string(),
        agent: agent::describe(&agent),
        timings: timings.to_json(),
    });
    sys::sync_all();
    handoff::handoff(&config, &disk, &installed.layout, manifest.boot.as_ref())
}

/// Where the deploy's time goes: each lap gives the time since the last one
/// to a phase.
struct Clock {
    last: Instant,
    timings: Timings,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            last: Instant::now(),
            timings: Timings {
                started_ms: (uptime() * 1000.0) as u64,
                ..Timings::default()
            },
        }
    }

    fn lap(&mut self, phase: Timed) {
        let now = Instant::now();
        let ms = u64::try_from((now - self.last).as_millis()).unwrap_or(u64::MAX);
        self.timings.add(phase, ms);
        self.last = now;
    }

    /// The figures at the start of the hand-off, with the data pass's worker
    /// time and where its bytes came from.
    fn finish(&self, p: &Progress, (media, network): (u64, u64)) -> Timings {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timings {
            data: DataWork {
                fetch_ms: ms(p.fetch_time),
                verify_ms: ms(p.verify_time),
                disk_ms: ms(p.disk_time),
            },
            bytes: ByteSources {
                target: p.skipped_bytes,
                previous: p.seeded_bytes,
                media,
                network,
            },
            handoff_at_ms: sys::unix_ms(),
            ..self.timings.clone()
        }
    }
}

/// Notes `what` in the new disk's state record, by `change`. A failure loses
/// only the note: it is said, and the deploy goes on.
fn note_in_record(disk: &disks::DiskInfo, what: &str, change: impl FnOnce(&mut Record)) {
    let noted = StateDisk::open(&disk.dev_path())
        .ok_or_else(|| anyhow!("no state partition on {}", disk.dev_path()))
        .and_then(|d| d.update_record(change));
    if let Err(e) = noted {
        log::warn!(
            "noting {what} in the state record: {}",
            crate::error_text(&e)
        );
    }
}

/// Deploy-once: the target's state record names this very manifest, deployed
/// (not yet booted) or committed, and its partition table is the one this
/// image's deploy writes. Then a deploy would only rewrite what the installed OS
/// changed since, and, with the network first in the boot order, start again at
/// every boot; the OS on the disk is started instead.
fn already_deployed(disk: &disks::DiskInfo, resolved: &Resolved) -> Option<StateDisk> {
    // The head (boot record and primary GPT) is the install's last write: with
    // it missing, a deploy was cut short and resumes.
    let mut mbr = [0u8; 512];
    std::fs::File::open(disk.dev_path())
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut mbr, 0))
        .ok()?;
    if mbr[510..512] != [0x55, 0xAA] {
        return None;
    }
    let target = StateDisk::open(&disk.dev_path())?;
    let (record, _) = target.read_record().ok()?;
    if record.image_digest != resolved.digest
        || !matches!(record.mode, state::Mode::Deploy | state::Mode::Committed)
    {
        return None;
    }
    let image = resolved.manifest.layout.as_ref()?;
    let same_table = image.partitions.iter().all(|p| {
        target.layout.partitions.iter().any(|q| {
            q.number == p.number
                && q.first_lba == p.first_lba
                && q.last_lba == p.last_lba
                && q.type_guid == p.type_guid
        })
    });
    if !same_table {
        log::info!(
            "{} has a record of {} but not its partitions; deploying",
            disk.dev_path(),
            resolved.digest
        );
        return None;
    }
    log::info!(
        "{} already holds {} {} ({}, deployed {}); starting it without writing (imprint.redeploy deploys again)",
        disk.dev_path(),
        resolved.manifest.name,
        resolved.digest,
        record.mode.as_str(),
        record.deployed_at
    );
    status().send(Event::DiskSelected {
        disk: disk.dev_path(),
        size: None,
        serial: None,
        image: Some(resolved.digest.to_string()),
        unchanged: true,
    });
    Some(target)
}

/// Upgrades: the previous OS's configuration for the new OS to migrate: the
/// bundle the previous OS captured itself, or else one captured here from its
/// root.
fn capture_previous(previous: &StateDisk) {
    if let Ok((record, _)) = previous.read_record()
        && let Some(bundle) = &record.bundle
    {
        log::info!(
            "the previous OS on {} captured its configuration ({} bytes); the new OS migrates it",
            previous.device,
            bundle.len
        );
        return;
    }
    match osroot::capture_previous(previous) {
        Ok((device, entries)) => log::info!(
            "captured {entries} configuration entries from the previous OS on {device}, for the new OS to migrate"
        ),
        Err(e) => log::warn!(
            "capturing the previous OS's configuration on {}: {}; the new OS migrates nothing",
            previous.device,
            crate::error_text(&e)
        ),
    }
}

/// The record the installed OS's first boot reads.
fn state_record(
    config: &Config,
    resolved: &Resolved,
    previous: Option<&StateDisk>,
    clock: &Clock,
) -> Record {
    let mode = if previous.is_some() {
        state::Mode::Upgrade
    } else {
        state::Mode::Deploy
    };
    let mut settings = std::collections::BTreeMap::new();
    if let Some(h) = &config.hostname {
        settings.insert("hostname".to_string(), h.clone());
    }
    Record {
        deployed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        previous: previous.map(|p| state::PreviousOs {
            disk_guid: p.layout.disk_guid,
            partition_guids: p.layout.partitions.iter().map(|x| x.unique_guid).collect(),
        }),
        settings,
        status_url: config.status.clone(),
        target: Some(status().target()),
        release: resolved.release.as_ref().map(|r| state::ReleaseStamp {
            tag: r.tag.clone(),
            issued: r.issued,
        }),
        // So far; the hand-off writes them whole.
        timings: Some(clock.timings.clone()),
        credential: config.credential.clone(),
        ..Record::new(mode, &resolved.manifest.name, resolved.digest)
    }
}

/// A random (version 4) GUID in on-disk byte order.
fn random_guid() -> Result<Guid> {
    let mut g = sys::random_bytes::<16>().context("reading /dev/urandom")?;
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Ok(Guid(g))
}

/// The engine's install sequence onto `disk`, with progress on the console and
/// as status events. Returns what was installed and the GPT disk GUID the disk
/// had before, if it had one.
fn install_image(
    config: &Config,
    source: &dyn Source,
    resolved: &Resolved,
    disk: &disks::DiskInfo,
    previous: Option<&StateDisk>,
    record: &Record,
    clock: &mut Clock,
) -> Result<(Installed, Option<Guid>, Vec<identity::Rename>)> {
    let manifest = &resolved.manifest;
    let needed = install::required_size(manifest)?;
    let disk_path = disk.dev_path();
    let seed = previous
        .map(|p| DiskTarget::open_for_read(Path::new(&p.device)))
        .transpose()?;
    let target = DiskTarget::open_for_write(Path::new(&disk_path), needed)?;
    let replaced = gpt::read(&mut target.file())
        .ok()
        .flatten()
        .map(|l| l.disk_guid);
    // Upgrades: fresh identities before the head makes the new disk's file
    // systems findable, so that whatever boots before the switch (a power cut)
    // finds only the previous OS's by UUID.
    let renames = std::sync::Mutex::new(Vec::new());
    let refresh = |layout: &Layout| {
        if let Some(previous) = previous {
            *renames.lock().unwrap_or_else(|e| e.into_inner()) =
                fresh_identities(&disk_path, layout, previous);
        }
    };
    // One fresh GUID for each partition that could share its GUID with one of
    // the previous disk's.
    let fresh_guids = match previous {
        Some(p) => p
            .layout
            .partitions
            .iter()
            .map(|_| random_guid())
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let plan = Plan {
        disk_guid: random_guid()?,
        state_guid: random_guid()?,
        previous: previous.map(|p| &p.layout),
        fresh_guids: &fresh_guids,
        record,
        seed: seed.as_ref().map(|s| s as &dyn Target),
        before_head: previous
            .is_some()
            .then_some(&refresh as &(dyn Fn(&Layout) + Sync)),
        opts: DeployOptions {
            jobs: config.jobs,
            retry: RetryPolicy::default(),
            progress_interval: Duration::from_secs(2),
        },
    };
    let last_event = AtomicU64::new(0);
    let on_progress = |p: &Progress| {
        let pct = p.done_bytes as f64 * 100.0 / p.total_bytes.max(1) as f64;
        log::info!(
            "{pct:5.1}% written {} MB, skipped {} MB, fetched {} MB, {:.1} MB/s",
            (p.written_bytes + p.zeroed_bytes) / 1_000_000,
            p.skipped_bytes / 1_000_000,
            p.fetched_bytes / 1_000_000,
            p.rate_mb_s()
        );
        let secs = p.elapsed.as_secs();
        if secs >= last_event.load(Ordering::Relaxed) + 5 {
            last_event.store(secs, Ordering::Relaxed);
            send_progress(p);
        }
    };
    let mut after = |step: Step| {
        log::info!("install step done: {}", step.name());
        if step == Step::WriteData {
            clock.lap(Timed::Write);
        }
        if step == Step::InvalidateBootRecords {
            log::info!(
                "first write (old boot records invalidated) at {:.2} s",
                uptime()
            );
            log::info!(
                "deploying {} {} ({} bytes) to {disk_path}",
                manifest.name,
                resolved.digest,
                manifest.size,
            );
        }
        true
    };
    let available = sys::available_memory().unwrap_or(0);
    let installed = install::install(source, manifest, &target, &plan, &on_progress, &mut after)
        .with_context(|| format!("deploying to {disk_path}"))?;
    let p = &installed.progress;
    let (from_media, from_network) = media_and_network(source);
    log::info!(
        "deploy complete: bytes={} written={} zeroed={} skipped={} fetched={} seeded={} fetched_chunks={} seeded_chunks={} from_media={from_media} from_network={from_network} retries={} seconds={:.1} memory_peak={} memory_available={available}",
        p.total_bytes,
        p.written_bytes,
        p.zeroed_bytes,
        p.skipped_bytes,
        p.fetched_bytes,
        p.seeded_bytes,
        p.chunks_fetched,
        p.chunks_seeded,
        p.retries,
        p.elapsed.as_secs_f64(),
        sys::peak_rss().unwrap_or(0),
    );
    send_progress(p);
    if let Some(p) = &installed.added_state {
        log::info!(
            "created the imprint-state partition ({} bytes) as partition {}",
            statepart::CREATE_SIZE,
            p.number
        );
    }
    // "partition 2 (Root Partition)", or without a name where it has none.
    let named = |p: &gpt::Partition| match p.name.as_str() {
        "" => format!("partition {}", p.number),
        name => format!("partition {} ({})", p.number, printable(name)),
    };
    for (p, guid) in &installed.renewed {
        log::info!(
            "{} of the new disk had the same GUID as one on the previous disk; it is now {guid}",
            named(p)
        );
    }
    for p in &installed.shared_guids {
        log::warn!(
            "{} of the new disk has the same GUID {} as one on the previous disk; anything that finds it by PARTUUID may find the old one",
            named(p),
            p.unique_guid
        );
    }
    log::info!(
        "boot records written: GPT for {} bytes, state record mode={} image={}",
        disk.size,
        record.mode.as_str(),
        resolved.digest
    );
    let mut renames = renames.into_inner().unwrap_or_else(|e| e.into_inner());
    // What names a renewed partition by its GUID (root=PARTUUID=, fstab's
    // PARTUUID=) follows it.
    renames.extend(installed.renewed.iter().map(|(p, guid)| identity::Rename {
        partition: p.number,
        old: p.unique_guid.to_string(),
        new: guid.to_string(),
    }));
    Ok((installed, replaced, renames))
}

fn send_progress(p: &Progress) {
    status().send(Event::Writing {
        done: p.done_bytes,
        total: p.total_bytes,
        fetched: p.fetched_bytes,
    });
}

/// Upgrades: the firmware boots the new disk next (UEFI: once, until the new OS
/// commits; BIOS: through a stub in the previous disk's boot code).
fn switch_boot(
    previous: &StateDisk,
    installed: &Installed,
    disk: &disks::DiskInfo,
    image_name: &str,
) -> Result<()> {
    log::info!("switching boot to {}", disk.dev_path());
    if sys::is_uefi() {
        // Loaded here rather than left to the kernel's request: it must be there.
        drivers::Drivers::open().load(&["efivarfs".to_string()]);
        let n = bootswitch::uefi_trial_boot(&installed.layout, &format!("imprint {image_name}"))
            .context("setting up the UEFI trial boot")?;
        log::info!(
            "UEFI: Boot{n:04X} boots {} once (BootNext); BootOrder unchanged until the new OS commits",
            disk.dev_path()
        );
    } else {
        let disks = statepart::state_disks();
        let done = bootswitch::bios_switch(&disks, previous, installed.layout.disk_guid)
            .context("switching the BIOS boot disk")?;
        log::info!("BIOS: {done}; the new OS on {} boots next", disk.dev_path());
    }
    Ok(())
}

/// Upgrades: the new disk's file systems that share an identity with the
/// previous disk's get fresh ones, so nothing that finds them by UUID can find
/// the previous disk's. A failure is reported; the upgrade goes on.
fn fresh_identities(device: &str, layout: &Layout, previous: &StateDisk) -> Vec<identity::Rename> {
    match identity::refresh(device, layout, previous) {
        Ok(renames) => {
            for r in &renames {
                log::info!(
                    "partition {} of {}: file system {} is now {} (the previous disk has {})",
                    r.partition,
                    device,
                    r.old,
                    r.new,
                    r.old
                );
            }
            renames
        }
        Err(e) => {
            log::warn!(
                "giving the new disk's file systems fresh identities: {}",
                crate::error_text(&e)
            );
            Vec::new()
        }
    }
}

/// The installed OS made ready to boot on this machine: references to renamed
/// file systems rewritten, a first-boot agent if it has none (noted in the
/// state record), a NoCloud seed if it has cloud-init. What could not be done is
/// reported, never fatal: the disk boots either way.
fn finish_os(
    disk: &disks::DiskInfo,
    installed: &Installed,
    record: &Record,
    renames: &[identity::Rename],
    host_data: agent::HostData,
    generalize: bool,
) -> state::Agent {
    let seed = agent::Seed {
        instance_id: format!(
            "imprint-{}-{}",
            &record.image_digest.hex()[..16],
            record.deployed_at
        ),
        hostname: record.settings.get("hostname").cloned(),
        data: host_data,
        reports: record.status_url.is_some(),
        generalize,
    };
    let provided = agent::ensure(disk, &installed.layout, &seed, renames);
    match &provided.generalized {
        Some(Ok(changed)) => log::info!(
            "generalized: removed the source machine's identity ({})",
            if changed.is_empty() {
                "it had none to remove".to_string()
            } else {
                changed.join(" ")
            }
        ),
        Some(Err(e)) => log::error!(
            "generalized image: removing the source machine's identity failed: {e}; this machine may share its machine id or SSH host keys with others"
        ),
        None if generalize => log::error!(
            "generalized image: its root could not be opened, so the source machine's identity was not removed"
        ),
        None => {}
    }
    for file in &provided.rewritten {
        log::info!("rewrote the file system references in {file}");
    }
    if provided.cloud_init_seed {
        log::info!(
            "wrote a NoCloud seed for the OS's cloud-init (instance-id {})",
            seed.instance_id
        );
    } else if seed.data.user_data.is_some() || seed.data.network_config.is_some() {
        log::warn!(
            "the installed OS has no cloud-init: imprint.user-data and imprint.network-config are not applied"
        );
    }
    let agent = provided.agent;
    match &agent {
        state::Agent::Skipped(_) => log::warn!("{}", agent::describe(&agent)),
        _ => log::info!("{}", agent::describe(&agent)),
    }
    note_in_record(disk, "the agent", |r| r.agent = agent.clone());
    agent
}

/// UEFI, network- or medium-booted: the new disk's boot entry comes right
/// after the entry this boot came through, so the next network boot's
/// hand-over (`exit`), or a boot with the medium pulled out, reaches it.
fn boot_disk_after_current(
    disk: &disks::DiskInfo,
    installed: &Installed,
    image_name: &str,
    from_medium: bool,
) {
    if !sys::is_uefi() {
        return;
    }
    drivers::Drivers::open().load(&["efivarfs".to_string()]);
    let description = format!("imprint {image_name}");
    match bootswitch::uefi_disk_after_current(&installed.layout, &description, from_medium) {
        Ok(Some(n)) => log::info!(
            "UEFI: Boot{n:04X} boots {}, right after the {} entry this boot came through in BootOrder",
            disk.dev_path(),
            if from_medium { "medium's" } else { "network" }
        ),
        Ok(None) => {}
        Err(e) => log::warn!(
            "adding {} to the UEFI boot order: {}; the firmware may not find it after a network boot",
            disk.dev_path(),
            crate::error_text(&e)
        ),
    }
}

/// BIOS, after a deploy over a disk that an upgrade's chain stub boots: the stub
/// follows the disk's fresh GUID, so the machine still boots it.
fn keep_chain(replaced: Option<Guid>, installed: &Installed) -> Result<()> {
    let Some(old) = replaced else {
        return Ok(());
    };
    if sys::is_uefi() {
        return Ok(());
    }
    let disks = statepart::state_disks();
    if let Some(done) = bootswitch::bios_rechain(&disks, old, installed.layout.disk_guid)
        .context("aiming the BIOS chain stub at the redeployed disk")?
    {
        log::info!("BIOS: {done}");
    }
    Ok(())
}
