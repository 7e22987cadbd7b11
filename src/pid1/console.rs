//! Where PID 1 speaks: the console (stderr, which the kernel connected to
//! /dev/console) and the kernel log (/dev/kmsg), plus status events that go to
//! the console as `imprint-status: {json}` and, once the network is up, to the
//! operator's status URL.

use crate::format::status::{self, Phase};
use crate::source::{NameResolver, small_agent};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct ConsoleLogger {
    kmsg: Mutex<Option<File>>,
}

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level().as_str().to_lowercase();
        let line = format!("imprint: {level}: {}", record.args());
        // One write per line, so lines from threads do not interleave.
        let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
        if let Ok(mut kmsg) = self.kmsg.lock()
            && let Some(k) = kmsg.as_mut()
        {
            // Logged at debug priority: the line already went to the console, and
            // a higher priority would make the kernel print it there a second time.
            let _ = k.write_all(format!("<7>{line}\n").as_bytes());
        }
    }

    fn flush(&self) {}
}

pub fn init_logger(verbose: bool) {
    let kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
    let logger = Box::leak(Box::new(ConsoleLogger {
        kmsg: Mutex::new(kmsg),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(if verbose {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }
}

const ENDPOINT_FILE: &str = "/run/imprint/status-endpoint.json";

/// Sends status events. Every event is echoed on the console; it is POSTed too
/// once a URL and a working network are known. A failed POST is logged and
/// dropped: reporting must never stop a deploy.
pub struct Status {
    target: Mutex<String>,
    url: Mutex<Option<String>>,
    agent: Mutex<Option<ureq::Agent>>,
}

impl Status {
    pub fn new(target: &str) -> Status {
        Status {
            target: Mutex::new(target.to_string()),
            url: Mutex::new(None),
            agent: Mutex::new(None),
        }
    }

    pub fn set_target(&self, target: &str) {
        if let Ok(mut t) = self.target.lock() {
            *t = target.to_string();
        }
    }

    pub fn target(&self) -> String {
        self.target.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Writes where events go (target, URL, name servers) for the supervising
    /// PID 1, which reports for a deploy process that died.
    pub fn remember(&self, dns: &[std::net::SocketAddr]) {
        let url = self.url.lock().ok().and_then(|u| u.clone());
        let saved = serde_json::json!({
            "target": self.target(),
            "url": url,
            "dns": dns.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        });
        let _ = std::fs::create_dir_all("/run/imprint");
        let _ = std::fs::write(ENDPOINT_FILE, saved.to_string());
    }

    /// A sender as the deploy process left it (see [`Status::remember`]), or one
    /// that only writes to the console.
    pub fn remembered() -> Status {
        let saved: serde_json::Value = std::fs::read(ENDPOINT_FILE)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let status = Status::new(saved["target"].as_str().unwrap_or("unknown"));
        if let Some(url) = saved["url"].as_str() {
            let servers = saved["dns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect();
            status.connect(url, Arc::new(crate::source::DnsResolver { servers }));
        }
        status
    }

    /// Starts POSTing events to `url` (after the network is up).
    pub fn connect(&self, url: &str, resolver: Arc<dyn NameResolver>) {
        if let Ok(mut u) = self.url.lock() {
            *u = Some(url.to_string());
        }
        if let Ok(mut a) = self.agent.lock() {
            *a = Some(small_agent(resolver, Duration::from_secs(5)));
        }
    }

    pub fn send(&self, phase: Phase, extra: serde_json::Value) {
        let target = self.target.lock().map(|t| t.clone()).unwrap_or_default();
        let event = status::event(&target, phase, extra);
        let line = format!("imprint-status: {event}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        let url = self.url.lock().ok().and_then(|u| u.clone());
        let agent = self.agent.lock().ok().and_then(|a| a.clone());
        if let (Some(url), Some(agent)) = (url, agent) {
            let body = event.to_string();
            let result = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.as_bytes());
            match result {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => log::warn!("status event to {url}: server answered {}", r.status()),
                Err(e) => log::warn!("status event to {url}: {e}"),
            }
        }
    }
}
