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

use crate::engine::{self, DeployOptions, DiskTarget, Progress};
use crate::format::cmdline::{self, Config, ErrorPolicy, Handoff};
use crate::source::{HttpSource, RetryPolicy};
use crate::sys::{self, PowerAction};
use anyhow::{Context, Result, anyhow};
use console::Status;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

static STATUS: OnceLock<Status> = OnceLock::new();
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

    let lease = net::bring_up(&config.ip, config.bootif, config.dhcp_timeout)
        .context("bringing up the network")?;
    let target_name = config.target.clone().unwrap_or_else(|| {
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
    let resolver: Arc<dyn crate::source::NameResolver> = Arc::new(net::DnsResolver {
        servers: lease.dns.clone(),
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
    let needed = manifest.requirements.min_disk_size.max(manifest.size);

    let disk = wait_for_disk(config, needed)?;
    log::info!("target disk {} ({} bytes)", disk.dev_path(), disk.size);
    status().send(
        "disk-selected",
        serde_json::json!({ "disk": disk.dev_path(), "size": disk.size, "serial": disk.serial }),
    );
    let target = DiskTarget::open_for_write(std::path::Path::new(&disk.dev_path()), needed)
        .map_err(|e| permanent(e.into()))?;

    let first_write = uptime();
    log::info!(
        "deploying {} {} ({} bytes) to {} at {:.2} s",
        manifest.name,
        resolved.digest,
        manifest.size,
        disk.dev_path(),
        first_write
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
        retry,
        progress_interval: Duration::from_secs(2),
    };
    let p = engine::deploy(&source, manifest, &target, &opts, &on_progress)
        .with_context(|| format!("deploying to {}", disk.dev_path()))?;
    log::info!(
        "deploy complete: bytes={} written={} zeroed={} skipped={} fetched={} fetched_chunks={} retries={} seconds={:.1}",
        p.total_bytes,
        p.written_bytes,
        p.zeroed_bytes,
        p.skipped_bytes,
        p.fetched_bytes,
        p.chunks_fetched,
        p.retries,
        p.elapsed.as_secs_f64()
    );
    status().send(
        "writing",
        serde_json::json!({ "done": p.done_bytes, "total": p.total_bytes, "fetched": p.fetched_bytes }),
    );
    drop(target);
    sys::sync_all();
    handoff(config)
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

fn handoff(config: &Config) -> Result<Never, Failure> {
    let what = match config.handoff {
        Handoff::Reboot => "reboot",
        Handoff::Poweroff => "poweroff",
        Handoff::Kexec => "kexec",
        Handoff::Shell => "shell",
    };
    log::info!("handing off ({what}) at {:.2} s", uptime());
    status().send(
        "handoff",
        serde_json::json!({ "handoff": what, "uptime": uptime() }),
    );
    let action = match config.handoff {
        Handoff::Poweroff => PowerAction::Poweroff,
        _ => PowerAction::Reboot,
    };
    let e = sys::power(action);
    Err(permanent(anyhow!("{what} failed: {e}")))
}
