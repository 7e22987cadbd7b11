//! `imprint.mode=capture`: this machine's disk read into the repository as an
//! image, then the machine hands back to its own OS.

use super::inputs::{network_if_wanted, wait_for_disk};
use super::{Never, handoff, status, uptime};
use crate::capture::{self, CaptureOptions, upload::HttpStore};
use crate::format::cmdline::{Config, Handoff, RepoSource};
use crate::format::digest::ImageRef;
use crate::format::hardware::{Hardware, human_size};
use crate::format::manifest::Firmware;
use crate::format::status::Event;
use crate::source::{Client, RetryPolicy};
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Progress lines and events, at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

pub(super) fn run(config: &Config, hardware: &Hardware) -> Result<Never> {
    let (Some(ImageRef::Tag { name, tag }), [RepoSource::Url(base)]) =
        (&config.image, config.repo.as_slice())
    else {
        bail!("a capture needs imprint.image=NAME:TAG and one http(s) imprint.repo=");
    };
    let resolver = network_if_wanted(config, &[])?
        .ok_or_else(|| anyhow!("a capture needs the network; nothing was read"))?;
    // Chosen as a deploy's target is (imprint.disk= hints), so the medium this
    // started from is never the one captured.
    let disk = wait_for_disk(config, 0)?;
    let device = disk.dev_path();
    // Read-only: the source is never written.
    let file = std::fs::File::open(&device).with_context(|| format!("opening {device}"))?;
    let (credential, mac) = match (&config.capture_token, &config.credential) {
        (Some(token), _) => (token.0.clone(), None),
        (None, Some(credential)) => (credential.0.clone(), Some(status().target())),
        (None, None) => bail!("a capture needs imprint.capture-token="),
    };
    let timeout = Duration::from_secs(60);
    let client = Client::new(resolver, timeout, super::ca_roots(), 4);
    let store = HttpStore::new(client, base, &credential, mac, RetryPolicy::default());
    let firmware = match hardware.firmware.as_str() {
        "uefi" => vec![Firmware::Uefi],
        "bios" => vec![Firmware::Bios],
        _ => Vec::new(),
    };
    let opts = CaptureOptions {
        // Hashing and compressing are what the cores do; more threads than
        // cores only hold more chunks in memory.
        jobs: config.jobs.clamp(
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        firmware,
        arch: if hardware.arch.is_empty() {
            std::env::consts::ARCH.to_string()
        } else {
            hardware.arch.clone()
        },
        ..CaptureOptions::default()
    };
    log::info!(
        "capturing {device} ({}) into {base} as {name}:{tag}",
        human_size(disk.size)
    );
    let last = Mutex::new(Instant::now() - PROGRESS_EVERY);
    let on_progress = |p: &capture::Progress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < PROGRESS_EVERY && p.done < p.total {
            return;
        }
        *last = Instant::now();
        log::info!(
            "capturing: {} of {} done, {} read, {} uploaded, {} chunks already stored",
            human_size(p.done),
            human_size(p.total),
            human_size(p.report.read_bytes),
            human_size(p.uploaded),
            p.report.present_chunks
        );
        status().send(Event::Capturing {
            done: p.done,
            total: p.total,
            uploaded: p.uploaded,
        });
    };
    let started = Instant::now();
    let report = capture::capture(
        &file,
        disk.size,
        &device,
        (name, tag),
        &opts,
        &store,
        &on_progress,
    )?;
    for p in &report.partitions {
        log::info!(
            "partition {}: {} of {} in use, read as {}",
            p.number,
            human_size(p.used),
            human_size(p.len),
            p.kind
        );
    }
    let digest = report.digest.map(|d| d.to_string()).unwrap_or_default();
    log::info!(
        "capture complete: {name}:{tag} {digest} {} seconds={:.1} retries={}",
        report.summary(),
        started.elapsed().as_secs_f64(),
        store.retries.load(std::sync::atomic::Ordering::Relaxed)
    );
    status().send(Event::Captured {
        image: format!("{name}:{tag}"),
        digest,
        used: report.used_bytes,
        read: report.read_bytes,
        uploaded: report.uploaded_bytes,
        uploaded_chunks: report.uploaded_chunks as u64,
        already_stored: report.present_chunks as u64,
    });
    drop(file);
    log::info!("capture finished at {:.2} s", uptime());
    if config.handoff == Handoff::Poweroff {
        return handoff::handoff(config, &disk, &layout_of(&device)?, None);
    }
    // Back to the source's own OS: kexec of its boot loader's entry, else a
    // reboot that boots the disk.
    handoff::start_source(&disk, &layout_of(&device)?)
}

fn layout_of(device: &str) -> Result<crate::format::gpt::Layout> {
    let mut file = std::fs::File::open(device).with_context(|| format!("opening {device}"))?;
    crate::format::gpt::read(&mut file)?.ok_or_else(|| anyhow!("{device} has no GPT"))
}
