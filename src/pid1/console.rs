//! Where PID 1 speaks: the console (stderr, which the kernel connected to
//! /dev/console) and the kernel log (/dev/kmsg), plus status events that go to
//! the console as `imprint-status: {json}` and, once the network is up, to the
//! operator's status URL.

use crate::format::status::{Envelope, Event};
use crate::source::{Client, Delivery, NameResolver};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// Sends status events. Every event is echoed on the console; once a URL and
/// a working network are known it is queued for a sender thread, which POSTs
/// the events in order and retries one the server did not take (it may be
/// restarting) until it does. Reporting never stops a deploy: the queue is
/// bounded, and [`Status::flush`] before a hand-off waits a bounded time.
pub struct Status {
    target: Mutex<String>,
    url: Mutex<Option<String>>,
    /// The deploy's credential, sent with every event (never shown).
    credential: Mutex<Option<String>>,
    queue: Arc<Queue>,
    /// Events from before the network was up, sent first once it is (the
    /// server learns of the deploy from its `booted`).
    early: Mutex<Vec<serde_json::Value>>,
}

/// Events kept from before the network is up.
const MAX_EARLY: usize = 16;

/// Events waiting to be sent, oldest first, and whether one is being sent.
struct Queue {
    state: Mutex<(VecDeque<String>, bool)>,
    changed: Condvar,
}

/// How long a hand-off or a failure waits for queued status events to go out.
pub const STATUS_WAIT: Duration = Duration::from_secs(30);

/// Events kept waiting at most; beyond it progress events go first.
const MAX_QUEUED: usize = 256;

impl Queue {
    fn push(&self, event: String) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.0.len() >= MAX_QUEUED {
            // The oldest progress event is the least missed; else the oldest.
            let at = state
                .0
                .iter()
                .skip(1)
                .position(|e| e.contains("\"phase\":\"writing\""))
                .map_or(0, |i| i + 1);
            state.0.remove(at);
        }
        state.0.push_back(event);
        self.changed.notify_all();
    }
}

impl Status {
    pub fn new(target: &str) -> Status {
        Status {
            target: Mutex::new(target.to_string()),
            url: Mutex::new(None),
            credential: Mutex::new(None),
            queue: Arc::new(Queue {
                state: Mutex::new((VecDeque::new(), false)),
                changed: Condvar::new(),
            }),
            early: Mutex::new(Vec::new()),
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

    /// Writes where events go (target, URL, credential, name servers) for the
    /// supervising PID 1, which reports for a deploy process that died.
    pub fn remember(&self, dns: &[std::net::SocketAddr]) {
        let url = self.url.lock().ok().and_then(|u| u.clone());
        let credential = self.credential.lock().ok().and_then(|c| c.clone());
        let saved = serde_json::json!({
            "target": self.target(),
            "url": url,
            "credential": credential,
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
            let credential = saved["credential"].as_str().map(str::to_string);
            status.connect(
                url,
                credential,
                Arc::new(crate::source::DnsResolver { servers }),
            );
        }
        status
    }

    /// Starts POSTing events to `url` (after the network is up), with the
    /// deploy's `credential` when it has one. An `https://` URL needs the
    /// initramfs's CA certificates: without them nothing is sent (the deploy
    /// refuses such a URL before it writes anything, see [`usable_url`]).
    pub fn connect(&self, url: &str, credential: Option<String>, resolver: Arc<dyn NameResolver>) {
        if let Err(e) = usable_url(url) {
            log::error!("imprint.status: {e}");
            return;
        }
        let client = Client::new(resolver, Duration::from_secs(5), super::ca_roots(), 1);
        if let Ok(mut c) = self.credential.lock() {
            c.clone_from(&credential);
        }
        // Held while the URL is set, as by `send`: no event passes the early
        // ones.
        let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
        let first = self.url.lock().map(|u| u.is_none()).unwrap_or(false);
        if first {
            // Under the name the machine reports as now, which it may have
            // learnt only with the network (its MAC address).
            let target = self.target();
            for mut event in std::mem::take(&mut *early) {
                event["target"] = serde_json::Value::from(target.as_str());
                self.queue.push(event.to_string());
            }
        }
        if let Ok(mut u) = self.url.lock() {
            *u = Some(url.to_string());
        }
        drop(early);
        if first {
            let queue = Arc::clone(&self.queue);
            let url = url.to_string();
            let _ = std::thread::Builder::new()
                .name("status".into())
                .spawn(move || deliver(&queue, &url, credential.as_deref(), &client));
        }
    }

    pub fn send(&self, event: Event) {
        let target = self.target.lock().map(|t| t.clone()).unwrap_or_default();
        let event = Envelope { target, event }.to_value();
        let line = format!("imprint-status: {event}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
        if self.url.lock().map(|u| u.is_some()).unwrap_or(false) {
            self.queue.push(event.to_string());
        } else if early.len() < MAX_EARLY {
            early.push(event);
        }
    }

    /// Waits until every queued event was sent, or `wait` has passed; says how
    /// many were not.
    pub fn flush(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let Ok(mut state) = self.queue.state.lock() else {
            return;
        };
        while !state.0.is_empty() || state.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "{} status events not delivered within {} s; going on without them",
                    state.0.len(),
                    wait.as_secs()
                );
                return;
            }
            match self.queue.changed.wait_timeout(state, left) {
                Ok((s, _)) => state = s,
                Err(_) => return,
            }
        }
    }
}

/// Whether status events can go to `url` from here: an `https://` one needs
/// the CA certificates the initramfs was built with.
pub fn usable_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") && super::ca_roots().is_none() {
        return Err(format!(
            "{} is an https:// URL, but this deploy environment carries no CA certificates to check its server with: build the initramfs with --ca FILE (imprint initramfs build), or give an http:// URL",
            crate::format::http::printable(url)
        ));
    }
    Ok(())
}

/// The sender thread: the oldest event until the server takes it (a refusal
/// that retrying cannot change drops it), then the next.
fn deliver(queue: &Queue, url: &str, credential: Option<&str>, client: &Client) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let event = {
            let Ok(mut state) = queue.state.lock() else {
                return;
            };
            while state.0.is_empty() {
                state.1 = false;
                queue.changed.notify_all();
                state = match queue.changed.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            state.1 = true;
            state.0.front().cloned().unwrap_or_default()
        };
        let done = match client.post_event(url, credential, event.as_bytes()) {
            Delivery::Taken => true,
            Delivery::Refused(status) => {
                log::warn!("status event to {url}: server answered {status}; dropped");
                true
            }
            Delivery::Failed(why) => {
                log::debug!("status event to {url}: {why}; retrying");
                false
            }
        };
        if done {
            backoff = Duration::from_millis(500);
            if let Ok(mut state) = queue.state.lock() {
                state.0.pop_front();
                if state.0.is_empty() {
                    state.1 = false;
                }
                queue.changed.notify_all();
            }
        } else {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `https://` status URL needs the initramfs's CA certificates; this
    /// host has none at that path, as an initramfs built without them. The
    /// sender is never started for it (before, the first event panicked).
    #[test]
    fn an_https_status_url_without_ca_certificates_is_refused() {
        assert!(!std::path::Path::new(crate::source::INITRAMFS_CA_FILE).exists());
        let e = usable_url("https://status.example/status").unwrap_err();
        assert!(e.contains("--ca FILE"), "{e}");
        assert!(usable_url("http://10.0.2.2:8080/status").is_ok());
        let status = Status::new("m");
        status.connect(
            "https://status.example/status",
            None,
            Arc::new(crate::source::SystemResolver),
        );
        status.send(Event::Failed { error: "x".into() });
        assert!(status.url.lock().unwrap().is_none());
        status.flush(Duration::from_millis(10));
    }

    /// Events from before the network are sent once it is up, first, under
    /// the name the machine has then.
    #[test]
    fn events_before_the_network_go_first_under_the_name_known_later() {
        let status = Status::new("unknown");
        status.send(Event::Booted {
            version: "1".into(),
            uptime: 1.0,
        });
        status.set_target("52:54:00:12:34:56");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/status", listener.local_addr().unwrap());
        status.connect(
            &url,
            Some("cred".into()),
            Arc::new(crate::source::SystemResolver),
        );
        status.send(Event::NetworkUp {
            interface: "eth0".into(),
            address: "10.0.2.15/24".into(),
        });
        let mut seen = Vec::new();
        for stream in listener.incoming().take(2) {
            use std::io::{BufRead, BufReader, Read};
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut len, mut auth) = (0, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if lower.starts_with("authorization:") {
                    auth = line.trim().to_string();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
            seen.push((event, auth));
        }
        assert_eq!(seen[0].0["phase"], "booted");
        assert_eq!(seen[0].0["version"], "1");
        assert_eq!(seen[0].0["target"], "52:54:00:12:34:56");
        assert_eq!(seen[1].0["phase"], "network-up");
        assert!(
            seen.iter()
                .all(|(_, a)| a.eq_ignore_ascii_case("authorization: Bearer cred")),
            "{seen:?}"
        );
        status.flush(Duration::from_secs(5));
    }
}
