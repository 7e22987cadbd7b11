//! imprint: a minimal bootable deploy environment.
//!
//! One binary, three roles over a shared core. The modules follow where code runs:
//!
//! Shared core (no edge to any role):
//! - [`format`] — pure formats on byte slices and `Read`/`Write`/`Seek` (manifest,
//!   GPT, state record, bundles, cpio, cmdline, DHCP/DNS/netlink messages, status
//!   events, the repository's file layout).
//! - [`source`] — where repository files come from (directory or HTTP), retries.
//! - [`engine`] — trust (resolve a manifest), the chunk engine (skip what is in
//!   place, seed, fetch, verify, write) and the ordered install sequence.
//! - [`statepart`] — the `imprint-state` partition: identity, layout, record and
//!   bundle lifecycle, finding the disks that carry one.
//! - [`bootswitch`] — switching boot between an old and a new OS disk (BIOS chain
//!   stub, UEFI trial boot) and undoing it.
//! - [`migrate`] — configuration bundles: captured from an old OS's root (by the
//!   OS itself, or by the deploy environment at an upgrade), restored by the new.
//! - [`parallel`] — the worker pool the engine and the repository tools share.
//! - [`sys`] — every system call that is not plain std; the only `unsafe` code.
//!
//! Roles:
//! - [`host`] — repositories (add, check), `imprint serve`, the initramfs build.
//! - [`pid1`] — the deploy environment, running as PID 1 from the initramfs.
//! - [`installed`] — the agent in the installed OS (first boot, status,
//!   prepare-upgrade, rollback).
//!
//! The `imprint` binary (`src/main.rs`) picks the role: modprobe by name, PID 1 by
//! process id, else the command line (`src/cli/`).

pub mod bootswitch;
pub mod capture;
pub mod engine;
pub mod footprint;
pub mod format;
pub mod generalize;
pub mod host;
pub mod inspect;
pub mod installed;
pub mod migrate;
pub mod parallel;
pub mod pid1;
pub mod source;
pub mod statepart;
// The one module allowed unsafe code (the crate denies it in Cargo.toml).
#[allow(unsafe_code)]
pub mod sys;

/// An error and its causes as one line, each cause added only when the message
/// so far does not already say it (error types here often include their source).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
