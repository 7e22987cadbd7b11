//! The deploy environment: `imprint` running as PID 1 from the initramfs.
//!
//! It never exits and never panics out: every failure is reported on the console,
//! as a `failed` status event and in the kernel log, the disks are synced, and the
//! `imprint.on-error=` policy runs (power off by default, reboot, or retry).

mod console;
mod disks;
mod drivers;
mod net;

pub use drivers::modprobe_main;

use crate::bootswitch as upgrade;
use crate::engine::{self, DeployOptions, DiskTarget, Progress};
use crate::format::cmdline::{self, Config, ErrorPolicy, Handoff};
use crate::format::{gpt, state};
use crate::source::{HttpSource, RetryPolicy};
use crate::statepart::{self, StateDisk};
use crate::sys::{self, PowerAction};
use anyhow::{Context, Result, anyhow};
use console::Status;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static STATUS: OnceLock<Status> = OnceLock::new();
/// Size of the state partition imprint creates when an image has none.
const STATE_PARTITION_SIZE: u64 = 8 << 20;
static BOOTED: OnceLock<Instant> = OnceLock::new();

fn status() -> &'static Status {
    STATUS.get_or_init(|| Status::new("unknown"))
}

/// Seconds since PID 1 started, for the timing figures on the console.
fn uptime() -> f64 {
    // /proc/uptime counts from kernel start, which is what the figures compare.
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|t| t.parse().ok()))
        .unwrap_or_else(|| BOOTED.get().map_or(0.0, |b| b.elapsed().as_secs_f64()))
}

/// A failure and whether trying again could help.
struct Failure {
    error: anyhow::Error,
    retryable: bool,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            error: e.into(),
            retryable: true,
        }
    }
}

fn permanent(error: anyhow::Error) -> Failure {
    Failure {
        error,
        retryable: false,
    }
}

pub fn main() -> ! {
    let _ = BOOTED.set(Instant::now());
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        if let Err(e) = sys::mount(source, target, fstype, false) {
            eprintln!("imprint: mounting {target}: {e}");
        }
    }
    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    console::init_logger(
        cmdline_text
            .split_whitespace()
            .any(|w| w == "imprint.debug"),
    );
    std::panic::set_hook(Box::new(|info| {
        // Runs before the abort: report and follow the policy from here.
        let policy =
            cmdline::error_policy(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        give_up(&anyhow!("internal error: {info}"), policy)
    }));
    std::thread::spawn(|| {
        loop {
            if sys::reap_child().is_none() {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    log::info!(
        "imprint {} deploy environment, kernel {}, started at {:.2} s",
        env!("CARGO_PKG_VERSION"),
        sys::kernel_release(),
        uptime()
    );
    let policy = cmdline::error_policy(&cmdline_text);
    let mut delay = Duration::from_secs(10);
    loop {
        let failure = match run(&cmdline_text) {
            Ok(never) => match never {},
            Err(f) => f,
        };
        if policy == ErrorPolicy::Retry && failure.retryable {
            report_failure(&failure.error);
            log::error!("retrying in {} s (imprint.on-error=retry)", delay.as_secs());
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(300));
            continue;
        }
        let policy = if policy == ErrorPolicy::Retry {
            log::error!("this error does not go away by retrying; powering off instead");
            ErrorPolicy::Poweroff
        } else {
            policy
        };
        give_up(&failure.error, policy);
    }
}

fn report_failure(error: &anyhow::Error) {
    let text = crate::error_text(error);
    log::error!("deploy failed: {text}");
    status().send("failed", serde_json::json!({ "error": text }));
    sys::sync_all();
}

/// Reports, syncs and powers off or reboots. Never returns.
fn give_up(error: &anyhow::Error, policy: ErrorPolicy) -> ! {
    report_failure(error);
    let action = match policy {
        ErrorPolicy::Reboot => PowerAction::Reboot,
        _ => PowerAction::Poweroff,
    };
    let what = match action {
        PowerAction::Reboot => "rebooting",
        PowerAction::Poweroff => "powering off",
    };
    log::error!("{what} in 5 s (imprint.on-error= chooses poweroff, reboot or retry)");
    std::thread::sleep(Duration::from_secs(5));
    let e = sys::power(action);
    log::error!("{what} failed: {e}; halting here");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

enum Never {}

fn run(cmdline_text: &str) -> Result<Never, Failure> {
    let config = cmdline::parse(cmdline_text).map_err(|e| {
        permanent(anyhow!(
            "{e}; nothing was written. Fix the boot entry's kernel command line"
        ))
    })?;
    if let Some(name) = config.target.as_ref().or(config.hostname.as_ref()) {
        status().set_target(name);
    }
    status().send(
        "booted",
        serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "uptime": uptime() }),
    );

    let mut drivers = drivers::Drivers::open();
    let loaded = drivers.coldplug();
    log::info!(
        "loaded {} driver modules: {}",
        loaded.len(),
        loaded.join(" ")
    );
    if config.mode == cmdline::Mode::Rollback {
        return rollback(&config);
    }
    if config.mode == cmdline::Mode::Upgrade && config.disk.is_none() {
        return Err(permanent(anyhow!(
            "imprint.mode=upgrade needs imprint.disk= to name the new disk (the previous OS stays on its own); nothing was written"
        )));
    }

    let lease = net::bring_up(&config.ip, config.bootif, config.dhcp_timeout)
        .context("bringing up the network")?;
    let target_name = config
        .target
        .clone()
        .or(config.hostname.clone())
        .unwrap_or_else(|| {
            lease
                .nic
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        });
    if let Some(s) = STATUS.get() {
        s.set_target(&target_name);
    }
    let resolver: Arc<dyn crate::source::NameResolver> = Arc::new(crate::source::DnsResolver {
        servers: lease
            .dns
            .iter()
            .map(|ip| std::net::SocketAddr::from((*ip, 53)))
            .collect(),
    });
    if let Some(url) = &config.status {
        status().connect(url, resolver.clone());
    }
    log::info!(
        "network up on {}: {}/{} via {}",
        lease.nic.name,
        lease.address,
        lease.prefix,
        lease
            .router
            .map_or("no gateway".to_string(), |r| r.to_string())
    );
    status().send(
        "network-up",
        serde_json::json!({
            "interface": lease.nic.name,
            "address": format!("{}/{}", lease.address, lease.prefix),
        }),
    );
    deploy(&config, resolver)
}

fn deploy(
    config: &Config,
    resolver: Arc<dyn crate::source::NameResolver>,
) -> Result<Never, Failure> {
    let repo = config.repo.as_deref().unwrap_or_default();
    let image = config
        .image
        .as_ref()
        .ok_or_else(|| permanent(anyhow!("imprint.image is missing")))?;
    let source = HttpSource::new(repo, resolver, Duration::from_secs(30), config.jobs)
        .map_err(|e| permanent(e.into()))?;
    let pubkey = config
        .pubkey
        .as_deref()
        .map(crate::format::signature::parse_public_key)
        .transpose()
        .map_err(|e| permanent(e.into()))?;
    let retry = RetryPolicy::default();
    let resolved = engine::resolve(&source, image, pubkey.as_ref(), &retry).map_err(|e| {
        let retryable = matches!(e, engine::DeployError::Fetch(ref f) if f.is_transient() || matches!(f, crate::source::FetchError::GaveUp { .. }));
        Failure {
            error: anyhow::Error::from(e).context(format!("fetching the manifest of {image} from {repo}")),
            retryable,
        }
    })?;
    if resolved.trust == engine::Trust::Unverified {
        log::warn!(
            "{image} is trusted only because the repository says so; pin imprint.image=sha256:... or set imprint.pubkey="
        );
    }
    let manifest = &resolved.manifest;
    let Some(layout) = manifest.layout.as_ref() else {
        return Err(permanent(anyhow!(
            "image {} has no GPT partition table; imprint deploys GPT disk images (its state lives in a partition). Nothing was written",
            manifest.name
        )));
    };
    let has_state = layout.partitions.iter().any(statepart::is_state_partition);
    let mut needed = manifest.requirements.min_disk_size.max(manifest.size);
    if !has_state {
        // Room after the last partition for the state partition, 1 MiB aligned,
        // plus the backup GPT.
        let ss = layout.sector_size as u64;
        let end = layout
            .partitions
            .iter()
            .map(|p| p.last_lba + 1)
            .max()
            .unwrap_or(0)
            * ss;
        needed = needed.max(end.div_ceil(1 << 20) * (1 << 20) + STATE_PARTITION_SIZE + (64 << 10));
    }

    let disk = wait_for_disk(config, needed)?;
    log::info!("target disk {} ({} bytes)", disk.dev_path(), disk.size);
    status().send(
        "disk-selected",
        serde_json::json!({ "disk": disk.dev_path(), "size": disk.size, "serial": disk.serial }),
    );
    let disk_path = disk.dev_path();
    let previous = match config.mode {
        cmdline::Mode::Upgrade => Some(previous_os(config, &disk_path)?),
        _ => None,
    };
    let seed = match &previous {
        Some(p) => Some(
            DiskTarget::open_for_read(std::path::Path::new(&p.device))
                .map_err(|e| permanent(e.into()))?,
        ),
        None => None,
    };
    let target = DiskTarget::open_for_write(std::path::Path::new(&disk_path), needed)
        .map_err(|e| permanent(e.into()))?;
    let file = target.file();
    let io = |what: &'static str| {
        let disk_path = disk_path.clone();
        move |e: std::io::Error| anyhow!("{what} {disk_path}: {e}")
    };

    // Safety order: the old boot record and both GPT copies go first, so a
    // half-written disk never boots; the image's own come back last.
    let head_len = manifest.chunks[0].length as u64;
    let zeros = vec![0u8; 64 << 10];
    let head_zero = head_len.min(zeros.len() as u64) as usize;
    use std::os::unix::fs::FileExt;
    file.write_all_at(&zeros[..head_zero], 0)
        .and_then(|()| file.write_all_at(&zeros, disk.size - zeros.len() as u64))
        .and_then(|()| file.sync_all())
        .map_err(io("invalidating the old boot records of"))?;
    log::info!(
        "first write (old boot records invalidated) at {:.2} s",
        uptime()
    );
    log::info!(
        "deploying {} {} ({} bytes) to {}",
        manifest.name,
        resolved.digest,
        manifest.size,
        disk.dev_path()
    );
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
            status().send(
                "writing",
                serde_json::json!({ "done": p.done_bytes, "total": p.total_bytes, "fetched": p.fetched_bytes }),
            );
        }
    };
    let opts = DeployOptions {
        jobs: config.jobs,
        retry: retry.clone(),
        progress_interval: Duration::from_secs(2),
        first_chunk: 1,
    };
    let seed_target = seed.as_ref().map(|s| s as &dyn engine::Target);
    let p = engine::deploy_with_seed(&source, manifest, &target, seed_target, &opts, &on_progress)
        .with_context(|| format!("deploying to {}", disk.dev_path()))?;
    log::info!(
        "deploy complete: bytes={} written={} zeroed={} skipped={} fetched={} seeded={} fetched_chunks={} seeded_chunks={} retries={} seconds={:.1}",
        p.total_bytes,
        p.written_bytes,
        p.zeroed_bytes,
        p.skipped_bytes,
        p.fetched_bytes,
        p.seeded_bytes,
        p.chunks_fetched,
        p.chunks_seeded,
        p.retries,
        p.elapsed.as_secs_f64()
    );
    status().send(
        "writing",
        serde_json::json!({ "done": p.done_bytes, "total": p.total_bytes, "fetched": p.fetched_bytes }),
    );

    // Boot records last: state record, backup GPT at the real end, then the head
    // (protective MBR, boot code, primary GPT).
    let mut head = engine::fetch_chunk(&source, manifest, 0, &retry)
        .with_context(|| format!("fetching the first chunk of {}", manifest.name))?;
    let urandom = |e: std::io::Error| anyhow!("reading /dev/urandom: {e}");
    let new_state = if has_state {
        None
    } else {
        Some(gpt::NewPartition {
            type_guid: statepart::TYPE_GUID,
            unique_guid: random_guid().map_err(urandom)?,
            name: statepart::NAME.into(),
            size: STATE_PARTITION_SIZE,
        })
    };
    // Every deployed disk gets its own disk GUID: two disks deployed from one image
    // (an upgrade's old and new OS) must be told apart.
    let disk_guid = random_guid().map_err(urandom)?;
    if let Some(previous) = &previous {
        distinguish_from_previous(&mut head, layout, previous).map_err(permanent)?;
    }
    let relocated = gpt::relocate(&mut head, disk.size, new_state.as_ref(), Some(disk_guid))
        .map_err(|e| {
            permanent(anyhow!(
                "rewriting the partition table for {}: {e}",
                disk.dev_path()
            ))
        })?;
    if let Some(p) = &relocated.added {
        log::info!(
            "created the imprint-state partition ({} bytes) as partition {}",
            STATE_PARTITION_SIZE,
            p.number
        );
    }
    let ss = relocated.layout.sector_size as u64;
    let state_part = relocated
        .layout
        .partitions
        .iter()
        .find(|p| statepart::is_state_partition(p))
        .ok_or_else(|| anyhow!("no imprint-state partition after rewriting the GPT"))?;
    let record_mode = if previous.is_some() {
        state::Mode::Upgrade
    } else {
        state::Mode::Deploy
    };
    let mut settings = std::collections::BTreeMap::new();
    if let Some(h) = &config.hostname {
        settings.insert("hostname".to_string(), h.clone());
    }
    let record = state::Record {
        deployed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        previous: previous.as_ref().map(|p| state::PreviousOs {
            disk_guid: p.layout.disk_guid,
            partition_guids: p.layout.partitions.iter().map(|x| x.unique_guid).collect(),
        }),
        settings,
        status_url: config.status.clone(),
        target: STATUS.get().map(|s| s.target()),
        ..state::Record::new(record_mode, &manifest.name, resolved.digest)
    };
    let mut window = statepart::Window::new(
        file,
        state_part.first_lba * ss,
        (state_part.last_lba - state_part.first_lba + 1) * ss,
    );
    state::write(&mut window, &record)
        .map_err(|e| anyhow!("writing the state record on {}: {e}", disk.dev_path()))?;
    file.sync_all().map_err(io("syncing"))?;
    file.write_all_at(&relocated.backup, relocated.backup_offset)
        .and_then(|()| file.sync_all())
        .map_err(io("writing the backup GPT of"))?;
    file.write_all_at(&head, 0)
        .and_then(|()| file.sync_all())
        .map_err(io("writing the boot record and GPT of"))?;
    if let Err(e) = sys::reread_partitions(file) {
        log::warn!("re-reading the partition table of {}: {e}", disk.dev_path());
    }
    log::info!(
        "boot records written: GPT for {} bytes, state record mode={} image={}",
        disk.size,
        record_mode.as_str(),
        resolved.digest
    );
    if let Some(previous) = &previous {
        drop(seed);
        if sys::is_uefi() {
            // Loaded here rather than left to the kernel's request: it must be there.
            drivers::Drivers::open().load(&["efivarfs".to_string()]);
            let n =
                upgrade::uefi_trial_boot(&relocated.layout, &format!("imprint {}", manifest.name))
                    .map_err(|e| permanent(e.context("setting up the UEFI trial boot")))?;
            log::info!(
                "UEFI: Boot{n:04X} boots {} once (BootNext); BootOrder unchanged until the new OS commits",
                disk.dev_path()
            );
        } else {
            upgrade::bios_pass_over(previous, relocated.layout.disk_guid)
                .map_err(|e| permanent(e.context("switching the BIOS boot disk")))?;
            log::info!(
                "BIOS: boot record of {} saved in its state partition and replaced by a stub that boots {}",
                previous.device,
                disk.dev_path()
            );
        }
    }
    status().send(
        "boot-records",
        serde_json::json!({ "disk": disk.dev_path(), "image": resolved.digest.to_string() }),
    );
    drop(target);
    sys::sync_all();
    handoff(config, &disk, manifest.boot.as_ref())
}

/// Mounts the installed OS's boot partition read-only from the freshly written
/// disk and loads its kernel, initrd and command line for kexec.
fn load_installed_kernel(
    disk: &disks::DiskInfo,
    boot: &crate::format::manifest::BootFacts,
) -> Result<()> {
    let separator = if disk.name.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    let device = format!("/dev/{}{separator}{}", disk.name, boot.partition);
    let start = Instant::now();
    while !std::path::Path::new(&device).exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(anyhow!(
                "{device} did not appear after re-reading the partition table"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mnt = "/run/imprint/boot";
    // File system drivers, loaded up front rather than on the kernel's request.
    let fs_modules = [
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "nls_utf8",
        "ext4",
        "crc32c_generic",
        "isofs",
    ];
    drivers::Drivers::open().load(&fs_modules.map(String::from));
    let mut errors = Vec::new();
    let mounted = ["vfat", "ext4", "iso9660"]
        .into_iter()
        .find(|fs| match sys::mount(&device, mnt, fs, true) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("{fs}: {e}"));
                false
            }
        })
        .ok_or_else(|| anyhow!("mounting {device} read-only failed ({})", errors.join(", ")))?;
    let open = |p: &str| {
        std::fs::File::open(format!("{mnt}{p}")).with_context(|| format!("opening {p} on {device}"))
    };
    let result = (|| {
        let kernel = open(&boot.kernel)?;
        let initrd = boot.initrd.as_deref().map(open).transpose()?;
        sys::kexec_load(&kernel, initrd.as_ref(), &boot.cmdline)
            .with_context(|| format!("kexec_file_load of {}", boot.kernel))
    })();
    if let Err(e) = sys::unmount(mnt) {
        log::warn!("unmounting {device} ({mounted}): {e}");
    }
    result
}

/// The previous OS for an upgrade: imprint.previous= (a path or hints), or the one
/// other disk whose record says it is the committed OS.
fn previous_os(config: &Config, new_disk: &str) -> Result<StateDisk, Failure> {
    let wanted = match &config.previous {
        None => None,
        Some(sel) => Some(
            disks::choose(&disks::scan(), Some(sel), 0)
                .map_err(|e| permanent(anyhow!("imprint.previous: {e}")))?
                .dev_path(),
        ),
    };
    let all = statepart::state_disks();
    let found = statepart::find_previous(&all, wanted.as_deref(), new_disk).map_err(permanent)?;
    log::info!(
        "previous OS on {}: its chunks seed the new disk",
        found.device
    );
    Ok(found.clone())
}

/// `imprint.mode=rollback`: undo an upgrade that has not committed.
fn rollback(config: &Config) -> Result<Never, Failure> {
    let start = Instant::now();
    let disks = loop {
        let found = statepart::state_disks();
        if !found.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let done = upgrade::rollback(&disks).map_err(permanent)?;
    for line in &done {
        log::info!("rollback: {line}");
    }
    status().send("rolled-back", serde_json::json!({ "done": done }));
    sys::sync_all();
    let what = match config.handoff {
        Handoff::Poweroff => PowerAction::Poweroff,
        _ => PowerAction::Reboot,
    };
    log::info!("handing off after rollback at {:.2} s", uptime());
    let e = sys::power(what);
    Err(permanent(anyhow!("handing off failed: {e}")))
}

/// An upgrade's new disk may come from the same image family as the old one and
/// share partition GUIDs with it. Firmware boot entries name the ESP by its GUID,
/// so a shared ESP GUID is renewed on the new disk; other shared GUIDs (a root
/// named by PARTUUID) are reported, since changing them could break the OS.
fn distinguish_from_previous(
    head: &mut [u8],
    layout: &gpt::Layout,
    previous: &StateDisk,
) -> Result<()> {
    for p in &layout.partitions {
        if !previous
            .layout
            .partitions
            .iter()
            .any(|q| q.unique_guid == p.unique_guid)
        {
            continue;
        }
        if p.type_guid == gpt::ESP_TYPE {
            let guid = random_guid().map_err(|e| anyhow!("reading /dev/urandom: {e}"))?;
            gpt::renew_partition_guid(head, p.number, guid)
                .map_err(|e| anyhow!("renewing the ESP's GUID: {e}"))?;
            log::info!(
                "the new disk's ESP had the same GUID as the previous disk's; it is now {guid}"
            );
        } else {
            log::warn!(
                "partition {} ({:?}) of the new disk has the same GUID {} as one on the previous disk; anything that finds it by PARTUUID may find the old one",
                p.number,
                p.name,
                p.unique_guid
            );
        }
    }
    Ok(())
}

/// A random (version 4) GUID in on-disk byte order.
fn random_guid() -> std::io::Result<gpt::Guid> {
    let mut g = sys::random_bytes::<16>()?;
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Ok(gpt::Guid(g))
}

fn wait_for_disk(config: &Config, needed: u64) -> Result<disks::DiskInfo, Failure> {
    let start = Instant::now();
    let wait = Duration::from_secs(30);
    let mut said = false;
    loop {
        let found = disks::scan();
        match disks::choose(&found, config.disk.as_ref(), needed) {
            Ok(d) => return Ok(d.clone()),
            Err(e @ (disks::DiskError::NoDisks(_) | disks::DiskError::NoMatch { .. }))
                if start.elapsed() < wait =>
            {
                if !said {
                    log::info!(
                        "waiting up to {} s for the target disk ({e})",
                        wait.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(permanent(e.into())),
        }
    }
}

fn handoff(
    config: &Config,
    disk: &disks::DiskInfo,
    boot: Option<&crate::format::manifest::BootFacts>,
) -> Result<Never, Failure> {
    let what = match config.handoff {
        Handoff::Reboot => "reboot",
        Handoff::Poweroff => "poweroff",
        Handoff::Kexec => "kexec",
    };
    if config.handoff == Handoff::Kexec {
        match boot {
            None => log::warn!(
                "imprint.handoff=kexec, but the image carries no boot facts (image add --boot-partition --kernel); rebooting through the firmware instead"
            ),
            Some(boot) => match load_installed_kernel(disk, boot) {
                Ok(()) => {
                    log::info!("handing off (kexec {}) at {:.2} s", boot.kernel, uptime());
                    status().send(
                        "handoff",
                        serde_json::json!({ "handoff": what, "uptime": uptime() }),
                    );
                    status().send("complete", serde_json::json!({ "uptime": uptime() }));
                    let e = sys::kexec_reboot();
                    log::warn!("kexec failed: {e}; rebooting through the firmware instead");
                }
                Err(e) => log::warn!(
                    "loading the installed kernel for kexec: {}; rebooting through the firmware instead",
                    crate::error_text(&e)
                ),
            },
        }
    }
    log::info!("handing off ({what}) at {:.2} s", uptime());
    status().send(
        "handoff",
        serde_json::json!({ "handoff": what, "uptime": uptime() }),
    );
    let action = match config.handoff {
        Handoff::Poweroff => PowerAction::Poweroff,
        _ => PowerAction::Reboot,
    };
    status().send("complete", serde_json::json!({ "uptime": uptime() }));
    let e = sys::power(action);
    Err(permanent(anyhow!("{what} failed: {e}")))
}
