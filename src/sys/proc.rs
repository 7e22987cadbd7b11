//! This process and the kernel around it: random bytes, modules, children,
//! host name, signals, memory and time figures from /proc, file limits.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Fresh key material from the kernel's random pool.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

/// Loads a kernel module from its file. Already loaded is success.
pub fn load_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    Exited(i32),
    Killed(i32),
}

/// Waits for any child to end: its process id and how it ended (`None` when
/// there are no children).
pub fn wait_any_child() -> Option<(u32, ChildEnd)> {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) => {
                let pid = pid.as_raw_nonzero().get() as u32;
                if let Some(code) = status.exit_status() {
                    return Some((pid, ChildEnd::Exited(code)));
                }
                if let Some(signal) = status.terminating_signal() {
                    return Some((pid, ChildEnd::Killed(signal)));
                }
                // Stopped or continued: still alive.
            }
            Err(rustix::io::Errno::INTR) => {}
            _ => return None,
        }
    }
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    rustix::system::sethostname(name.as_bytes()).map_err(Into::into)
}

pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// The signals that ask a server to stop: SIGTERM and SIGINT.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set it is given; sigaddset adds
    // valid signal numbers to that initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in this thread and in the threads it starts from
/// now on, so that [`wait_for_termination`] receives them instead of the
/// default action ending the process mid-response.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_signals();
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for SIGTERM or SIGINT (blocked first with
/// [`block_termination_signals`]); returns which.
pub fn wait_for_termination() -> i32 {
    let set = termination_signals();
    loop {
        let mut signal = 0;
        // SAFETY: `set` is initialised and `signal` is a valid place for the
        // result.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            return signal;
        }
    }
}

/// This process's peak resident memory so far (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:")
}

/// The figure after `key` in a `/proc` file of `Key: N kB` lines, in bytes.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Time since the kernel started (`/proc/uptime`, to the hundredth of a second).
pub fn uptime() -> Option<std::time::Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

/// Unix time in milliseconds (0 for a clock set before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Memory the kernel says is available for new allocations (`MemAvailable`),
/// in bytes.
pub fn available_memory() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:")
}

/// Raises this process's open-file limit to its hard limit; returns the limit
/// now in force (1024 if it cannot be read).
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current != Some(hard)
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    limit.current.unwrap_or(1024)
}
