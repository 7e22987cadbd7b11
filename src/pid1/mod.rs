//! The deploy environment: `imprint` running as PID 1 from the initramfs.
//!
//! It never exits and never panics out: every failure is reported on the console,
//! as a `failed` status event and in the kernel log, the disks are synced, and the
//! `imprint.on-error=` policy runs (power off by default, reboot, or retry).
//!
//! PID 1 itself only supervises: the deploy runs in a child process (this same
//! binary, called `imprint-deploy`), so whatever happens to the deploy (the
//! kernel's out-of-memory killer, an allocation failure, which aborts a Rust
//! process without its panic hook, a crash), PID 1 is still there to report it
//! and follow the policy. The child reports its own failures and tells PID 1 by
//! its exit code whether retrying could help.
//!
//! - this file: start-up (mounts, logger, panic hook), the supervisor and its
//!   retry loop, the deploy process's entry, and the one place that decides
//!   whether a failure is worth retrying;
//! - [`deploy`] — deploy and upgrade, as a list of named steps;
//! - [`agent`] — the first-boot agent for stock images that carry none;
//! - [`rollback`] — `imprint.mode=rollback`;
//! - [`handoff`] — reboot, power off or kexec into the installed OS.

mod agent;
mod bootentry;
mod capture;
mod console;
mod deploy;
mod disks;
mod drivers;
mod handoff;
mod identity;
mod inputs;
mod media;
mod net;
mod osroot;
mod references;
mod rollback;

pub use drivers::modprobe_main;

use crate::engine::DeployError;
use crate::engine::install::InstallError;
use crate::format::cmdline::{self, ErrorPolicy};
use crate::format::status::Event;
use crate::source::FetchError;
use crate::sys::{self, PowerAction};
use anyhow::anyhow;
use console::Status;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static STATUS: OnceLock<Status> = OnceLock::new();
static BOOTED: OnceLock<Instant> = OnceLock::new();

/// The initramfs's CA roots, read once; none (with a warning) when missing or bad.
fn ca_roots() -> Option<crate::source::CaRoots> {
    static ROOTS: OnceLock<Option<crate::source::CaRoots>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let path = std::path::Path::new(crate::source::INITRAMFS_CA_FILE);
            if !path.exists() {
                return None;
            }
            crate::source::CaRoots::load(path)
                .inspect_err(|e| log::warn!("{e}: HTTPS servers cannot be checked"))
                .ok()
        })
        .clone()
}

fn status() -> &'static Status {
    STATUS.get_or_init(|| Status::new("unknown"))
}

/// Seconds since the kernel started, for the timing figures on the console.
fn uptime() -> f64 {
    // /proc/uptime counts from kernel start, which is what the figures compare.
    sys::uptime().map_or_else(
        || BOOTED.get().map_or(0.0, |b| b.elapsed().as_secs_f64()),
        |d| d.as_secs_f64(),
    )
}

/// A run of the deploy environment never returns normally: it hands off.
enum Never {}

/// The name the deploy process runs under (argv[0]), which `main.rs` dispatches on.
pub const DEPLOY_PROCESS: &str = "imprint-deploy";
/// Exit codes of the deploy process: it failed and reported it; retrying could
/// help, or could not.
const EXIT_RETRYABLE: i32 = 70;
const EXIT_FINAL: i32 = 71;

/// PID 1: starts the deploy process and follows the policy when it fails.
pub fn main() -> ! {
    let _ = BOOTED.set(Instant::now());
    let cmdline_text = start();
    log::info!(
        "imprint {} deploy environment, kernel {}, started at {:.2} s",
        env!("CARGO_PKG_VERSION"),
        sys::kernel_release(),
        uptime()
    );
    let policy = cmdline::error_policy(&cmdline_text);
    let mut delay = Duration::from_secs(10);
    loop {
        let retryable = match run_deploy_process(&cmdline_text) {
            Ok(retryable) => retryable,
            Err(error) => {
                // Nobody reported this one: the process died or never started.
                let status = console::Status::remembered();
                let text = crate::error_text(&error);
                log::error!("deploy failed: {text}");
                status.send(Event::Failed { error: text });
                status.flush(console::STATUS_WAIT);
                sys::sync_all();
                false
            }
        };
        if policy == ErrorPolicy::Retry && retryable {
            log::error!("retrying in {} s (imprint.on-error=retry)", delay.as_secs());
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(300));
            continue;
        }
        if policy == ErrorPolicy::Retry {
            log::error!("this error does not go away by retrying; powering off instead");
        }
        follow_policy(if policy == ErrorPolicy::Retry {
            ErrorPolicy::Poweroff
        } else {
            policy
        });
    }
}

/// Runs one deploy process to its end, reaping orphans meanwhile. A deploy that
/// succeeds hands off from inside it and never ends here. Returns whether its
/// reported failure is worth retrying, or an error when it ended unreported.
fn run_deploy_process(cmdline_text: &str) -> anyhow::Result<bool> {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("/proc/self/exe")
        .arg0(DEPLOY_PROCESS)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            // Still deploy, in this process, rather than not at all.
            log::warn!("starting the deploy process: {e}; deploying within PID 1");
            let error = match deploy::run(cmdline_text) {
                Ok(never) => match never {},
                Err(error) => error,
            };
            report_failure(&error);
            return Ok(is_retryable(&error));
        }
    };
    let pid = child.id();
    loop {
        match sys::wait_any_child() {
            Some((p, end)) if p == pid => {
                return match end {
                    sys::ChildEnd::Exited(EXIT_RETRYABLE) => Ok(true),
                    sys::ChildEnd::Exited(EXIT_FINAL) => Ok(false),
                    sys::ChildEnd::Exited(code) => Err(anyhow!(
                        "the deploy process ended with exit code {code} without saying why"
                    )),
                    sys::ChildEnd::Killed(9) => Err(anyhow!(
                        "the deploy process was killed (signal 9), most likely by the kernel for want of memory: give the machine more memory, or lower imprint.jobs="
                    )),
                    sys::ChildEnd::Killed(signal) => Err(anyhow!(
                        "the deploy process died of signal {signal} (6 is an abort, such as a failed allocation)"
                    )),
                };
            }
            Some(_) => {} // an orphan, reaped
            None => return Err(anyhow!("the deploy process vanished")),
        }
    }
}

/// The deploy process (a child of PID 1): deploys, hands off from here on
/// success; on failure reports and exits with a code that says whether
/// retrying could help.
pub fn deploy_process_main() -> ! {
    let _ = BOOTED.set(Instant::now());
    let cmdline_text = read_cmdline_and_log();
    std::panic::set_hook(Box::new(|info| {
        report_failure(&anyhow!("internal error: {info}"));
        std::process::exit(EXIT_FINAL);
    }));
    let error = match deploy::run(&cmdline_text) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    report_failure(&error);
    std::process::exit(if is_retryable(&error) {
        EXIT_RETRYABLE
    } else {
        EXIT_FINAL
    });
}

/// The kernel command line, and the console logger started (verbose with
/// `imprint.debug`).
fn read_cmdline_and_log() -> String {
    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    console::init_logger(
        cmdline_text
            .split_whitespace()
            .any(|w| w == "imprint.debug"),
    );
    cmdline_text
}

/// Mounts the basics, starts the logger and the panic hook. Returns the kernel
/// command line.
fn start() -> String {
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
    let cmdline_text = read_cmdline_and_log();
    std::panic::set_hook(Box::new(|info| {
        // Runs before the abort: report and follow the policy from here.
        let policy =
            cmdline::error_policy(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        report_failure(&anyhow!("internal error: {info}"));
        follow_policy(policy)
    }));
    cmdline_text
}

/// Whether trying again could help: the network and the server may do better
/// next time, and so may a disk that failed an I/O. A bad command line, an
/// untrusted or unusable image, a missing disk or a failed boot switch stay as
/// they are.
fn is_retryable(error: &anyhow::Error) -> bool {
    fn fetch(f: &FetchError) -> bool {
        f.is_transient() || matches!(f, FetchError::GaveUp { .. })
    }
    fn deploy(d: &DeployError) -> bool {
        match d {
            DeployError::Fetch(f) => fetch(f),
            DeployError::TargetIo { .. } => true,
            _ => false,
        }
    }
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<InstallError>() {
            return match e {
                InstallError::Deploy(d) => deploy(d),
                InstallError::Io { .. } | InstallError::StateRecord { .. } => true,
                _ => false,
            };
        }
        if let Some(d) = cause.downcast_ref::<DeployError>() {
            return deploy(d);
        }
        if let Some(f) = cause.downcast_ref::<FetchError>() {
            return fetch(f);
        }
        if cause.is::<net::NetError>() {
            return true;
        }
    }
    false
}

fn report_failure(error: &anyhow::Error) {
    let text = crate::error_text(error);
    log::error!("deploy failed: {text}");
    status().send(Event::Failed { error: text });
    status().flush(console::STATUS_WAIT);
    sys::sync_all();
}

/// Powers off or reboots, as the policy says, after a failure was reported.
/// Never returns.
fn follow_policy(policy: ErrorPolicy) -> ! {
    sys::sync_all();
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

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn fetch_error(status: u16) -> FetchError {
        let location = "http://repo/x".to_string();
        match status {
            404 => FetchError::NotFound { location },
            _ => FetchError::Server { location, status },
        }
    }

    #[test]
    fn only_what_can_change_by_itself_is_retried() {
        let transient = DeployError::Fetch(fetch_error(503));
        let missing = DeployError::Fetch(fetch_error(404));
        assert!(is_retryable(
            &anyhow!(transient).context("fetching the manifest")
        ));
        assert!(!is_retryable(
            &anyhow!(missing).context("fetching the manifest")
        ));
        let in_install = InstallError::Deploy(DeployError::Fetch(fetch_error(500)));
        assert!(is_retryable(&anyhow!(in_install).context("deploying")));
        let io = InstallError::Io {
            what: "writing",
            disk: "/dev/vda".into(),
            source: std::io::Error::other("EIO"),
        };
        assert!(is_retryable(&anyhow!(io)));
        let no_gpt = InstallError::NoPartitionTable("os".into());
        assert!(!is_retryable(&anyhow!(no_gpt)));
        assert!(is_retryable(
            &Err::<(), _>(net::NetError::DhcpTimeout("eth0".into(), 30))
                .context("bringing up the network")
                .unwrap_err()
        ));
        assert!(!is_retryable(&anyhow!("imprint.image is missing")));
    }
}
