//! `imprint.mode=rollback`: undo an upgrade that has not committed, then hand off.

use super::{Never, status, uptime};
use crate::bootswitch;
use crate::format::cmdline::{Config, Handoff};
use crate::format::status::Event;
use crate::statepart;
use crate::sys::{self, PowerAction};
use anyhow::{Result, anyhow};
use std::time::{Duration, Instant};

pub(super) fn run(config: &Config) -> Result<Never> {
    let start = Instant::now();
    let disks = loop {
        let found = statepart::state_disks();
        if !found.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let done = bootswitch::rollback(&disks)?;
    for line in &done {
        log::info!("rollback: {line}");
    }
    status().send(Event::RolledBack {
        done: Some(done.clone()),
        image: None,
        disk: None,
    });
    status().flush(super::console::STATUS_WAIT);
    sys::sync_all();
    let what = match config.handoff {
        Handoff::Poweroff => PowerAction::Poweroff,
        _ => PowerAction::Reboot,
    };
    log::info!("handing off after rollback at {:.2} s", uptime());
    let e = sys::power(what);
    Err(anyhow!("handing off failed: {e}"))
}
