//! The provisioning side of `imprint serve --hosts FILE`: the inventory (reloaded
//! when the file changes), what the server remembers of each machine (one JSON
//! file per machine under `--data DIR`, replaced atomically, so a restart of the
//! server loses nothing), and the boot script each machine gets.
//!
//! Machines move through the [`provision`] rules on what their deploy
//! environments report, each with the credential its boot script gave it
//! ([`access`]): `booted` marks a deploy under way (and, when one was under way
//! already, counts that one as failed: the machine started again before it
//! reported an end); `complete` marks it deployed (it boots its own disk from
//! then on), `failed` counts a failure. Asking for a script changes nothing,
//! except that a machine never seen before is remembered, a few at a time from
//! any one address. A machine whose entry says `capture =` is sent to
//! capture its disk instead, and the image it publishes completes it
//! ([`capture`]).

mod capture;
mod files;

pub use capture::CaptureRefusal;

use files::{inventory_stamp, read_inventory, read_machine, report};

use super::access::{self, Keys};
use crate::format::digest::ImageRef;
use crate::format::hardware::{self, Hardware};
use crate::format::http::printable;
use crate::format::inventory::{self, Inventory, Mac};
use crate::format::provision::{self, Decision, Machine, Platform};
use crate::format::status::{Event, Phase};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest inventory file read.
pub const MAX_INVENTORY: u64 = 8 << 20;
/// Largest machine file read back.
const MAX_MACHINE_FILE: u64 = 64 << 10;
/// Machines remembered; a new one beyond it is served but not stored.
pub const MAX_MACHINES: usize = 65536;
/// Longest error kept from a machine's report.
const MAX_ERROR: usize = 400;
/// New machines remembered from one address per [`NEW_WINDOW_SECS`].
pub const NEW_PER_ADDRESS: u32 = 16;
pub const NEW_WINDOW_SECS: u64 = 600;
/// Addresses the count of new machines is kept for.
const ADDRESSES_KEPT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("reading the inventory {path}: {source}")]
    ReadInventory { path: PathBuf, source: io::Error },
    #[error("inventory {path} is larger than {MAX_INVENTORY} bytes")]
    InventoryTooLarge { path: PathBuf },
    #[error("inventory {path}, {problem}; fix the file and start again")]
    Inventory {
        path: PathBuf,
        problem: inventory::Problem,
    },
    #[error("data directory {path}: {source}")]
    Data { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Key(#[from] access::AccessError),
}

/// Why an event, or a request for a machine's files, was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "{0} is provisioned by this server: its events and files need the credential its boot script gave (imprint.credential=, sent as Authorization: Bearer)"
    )]
    NoCredential(Mac),
    #[error(
        "this is not a credential this server gave {0} for its deploy (one given before the machine was deployed or reprovisioned no longer counts)"
    )]
    WrongCredential(Mac),
    #[error("{0}: this deploy has not started: its deploy environment reports `booted` first")]
    NotStarted(Mac),
    #[error(
        "{0}: its deploy completed; it deploys again only when reprovisioned (imprint host reprovision)"
    )]
    Completed(Mac),
    #[error(
        "{0}: no more new machines are taken from this address for now ({NEW_PER_ADDRESS} per {NEW_WINDOW_SECS} s)"
    )]
    TooManyNew(Mac),
}

impl Refusal {
    /// The HTTP status that says it.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoCredential(_) => 401,
            Refusal::WrongCredential(_) => 403,
            Refusal::NotStarted(_) | Refusal::Completed(_) => 409,
            Refusal::TooManyNew(_) => 429,
        }
    }
}

/// Where things are, and how many failures a machine may have in a row.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub hosts: PathBuf,
    pub data: PathBuf,
    pub attempts: u32,
    /// The repository served beside: what an image requires is read from it.
    pub repo: Option<PathBuf>,
}

struct Loaded {
    inventory: Inventory,
    /// What the file looked like when read: (length, modification time).
    stamp: Option<(u64, SystemTime)>,
}

pub struct Fleet {
    opts: FleetOptions,
    loaded: Mutex<Loaded>,
    machines: Mutex<BTreeMap<Mac, Machine>>,
    keys: Keys,
    /// Moves on with every change to what is shown of the machines.
    version: AtomicU64,
    /// New machines remembered lately, by the address that made them known:
    /// (start of the window, how many).
    newcomers: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

/// Seconds since the Unix epoch (0 on a clock before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A MAC address as iPXE may send it: `52:54:00:12:34:56`, with `%3A` for the
/// colons, or `52-54-00-12-34-56` (`${net0/mac:hexhyp}`).
pub fn parse_mac(query: &str) -> Option<Mac> {
    query.replace("%3A", ":").replace("%3a", ":").parse().ok()
}

impl Fleet {
    /// Reads the inventory (which must be TOML; entries that are wrong are
    /// reported and left out) and every machine remembered under the data
    /// directory (which is created if missing).
    pub fn open(opts: FleetOptions) -> Result<Fleet, FleetError> {
        let (text, stamp) = read_inventory(&opts.hosts)?;
        let inventory = match inventory::parse(&text) {
            Ok((inv, problems)) => {
                report(&opts.hosts, &problems);
                inv
            }
            Err(problem) => {
                return Err(FleetError::Inventory {
                    path: opts.hosts.clone(),
                    problem,
                });
            }
        };
        let dir = opts.data.join("machines");
        let data_err = |source| FleetError::Data {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(data_err)?;
        let keys = Keys::load_or_create(&opts.data.join("server.key"))?;
        let mut machines = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(data_err)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(mac) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<Mac>().ok())
            else {
                continue;
            };
            if machines.len() >= MAX_MACHINES {
                log::warn!(
                    "more than {MAX_MACHINES} machine files in {}; the rest are not read",
                    dir.display()
                );
                break;
            }
            match read_machine(&entry.path()) {
                Ok(m) => {
                    machines.insert(mac, m);
                }
                Err(e) => log::warn!(
                    "machine file {}: {e}; the machine starts afresh",
                    printable(&entry.path().display().to_string())
                ),
            }
        }
        log::info!(
            "inventory {}: {} machines listed, {} remembered",
            opts.hosts.display(),
            inventory.hosts.len(),
            machines.len()
        );
        Ok(Fleet {
            opts,
            loaded: Mutex::new(Loaded { inventory, stamp }),
            machines: Mutex::new(machines),
            keys,
            version: AtomicU64::new(0),
            newcomers: Mutex::new(HashMap::new()),
        })
    }

    /// What credentials and sessions are signed with.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Moves on with every change to the inventory or a machine.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the inventory again if the file changed. A file that is no longer
    /// TOML is reported and the inventory stays as it was.
    pub fn reload_if_changed(&self) {
        let stamp = inventory_stamp(&self.opts.hosts);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if stamp == loaded.stamp {
            return;
        }
        loaded.stamp = stamp;
        let text = match read_inventory(&self.opts.hosts) {
            Ok((text, _)) => text,
            Err(e) => {
                log::warn!("{e}; the inventory stays as it was");
                return;
            }
        };
        match inventory::parse(&text) {
            Ok((inv, problems)) => {
                report(&self.opts.hosts, &problems);
                log::info!(
                    "inventory {} reloaded: {} machines listed",
                    self.opts.hosts.display(),
                    inv.hosts.len()
                );
                loaded.inventory = inv;
                self.changed();
            }
            Err(problem) => log::warn!(
                "inventory {}, {problem}; it stays as it was until the file is fixed",
                self.opts.hosts.display()
            ),
        }
    }

    fn inventory(&self) -> Inventory {
        self.with_inventory(Inventory::clone)
    }

    /// `f` of the inventory in force, without a copy of it.
    fn with_inventory<T>(&self, f: impl FnOnce(&Inventory) -> T) -> T {
        f(&self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .inventory)
    }

    /// Whether events that name `mac` are this server's to check (its deploys
    /// carry a credential): the inventory lists it, every machine not listed
    /// deploys, or it has been sent a deploy.
    pub fn provisions(&self, mac: Mac) -> bool {
        let listed = self.with_inventory(|i| {
            i.hosts.contains_key(&mac) || i.defaults.action == inventory::DefaultAction::Deploy
        });
        listed
            || self
                .machines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&mac)
                .is_some_and(|m| m.deploys > 0 || m.generation > 0 || m.credential.is_some())
    }

    /// The boot script for `mac` on `platform`, with URLs under `base`, asked
    /// for from `from`. It changes nothing the server remembers of a known
    /// machine; one never seen before is remembered (a few at a time from one
    /// address), for the operator to see.
    pub fn boot_script(&self, mac: Mac, platform: Platform, base: &str, from: IpAddr) -> String {
        self.reload_if_changed();
        let inventory = self.inventory();
        let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        let known = machines.get(&mac).cloned();
        let m = known.clone().unwrap_or_default();
        let mut decision = self.decide(&inventory, mac, &m, platform);
        let mut credential = None;
        match &decision {
            Decision::Deploy(d) | Decision::Capture(d) => {
                log::info!(
                    "{mac}: {} {} (attempt {} of {})",
                    if matches!(decision, Decision::Capture(_)) {
                        "capture"
                    } else {
                        "deploy"
                    },
                    d.image,
                    d.attempt,
                    d.attempts
                );
                match self.keys.credential(mac, m.generation) {
                    Ok(c) => credential = Some(c),
                    Err(e) => {
                        log::warn!("{mac}: making a credential: {e}");
                        decision = Decision::Hold(
                            "the server could not make a credential for the machine (it reads /dev/urandom); see its log".into(),
                        );
                    }
                }
            }
            Decision::Local { why, .. } => {
                log::info!("{mac}: boots its own disk ({why:?})");
                let listed = inventory.hosts.contains_key(&mac);
                if known.is_none() && self.admit(&machines, listed, from) {
                    let m = Machine {
                        phase: Some("registered".into()),
                        last_seen: unix_now(),
                        ..Machine::default()
                    };
                    self.store(mac, &m);
                    machines.insert(mac, m);
                    self.changed();
                }
            }
            Decision::Hold(message) => log::warn!("{mac}: held: {}", printable(message)),
        }
        provision::script(
            &decision,
            mac,
            &provision::Server {
                base,
                kernel: "/boot/vmlinuz",
                initrd: "/boot/initramfs.img",
            },
            credential.as_deref(),
        )
    }

    /// What machine `mac`'s network boot gets: the decision table's answer,
    /// held where the hardware it last reported does not meet its image's
    /// requirements.
    fn decide(&self, inventory: &Inventory, mac: Mac, m: &Machine, platform: Platform) -> Decision {
        let decision = provision::decide(inventory, mac, m, platform, self.opts.attempts);
        if let (Decision::Deploy(d), Some(hardware)) = (&decision, &m.hardware)
            && let Some(why) = self.unmet(&d.image, hardware)
        {
            return Decision::Hold(format!(
                "{}: {why}. Give it another image in the inventory; it asks again every minute",
                d.image
            ));
        }
        decision
    }

    /// What in `image`'s requirements a machine with `hardware` does not
    /// meet, read from the repository served beside; None when it meets them
    /// or they cannot be read (the deploy environment checks them again).
    fn unmet(&self, image: &ImageRef, hardware: &Hardware) -> Option<String> {
        let repo = self.opts.repo.as_deref()?;
        let source = crate::source::DirSource::new(repo);
        let once = crate::source::RetryPolicy {
            attempts: 1,
            ..Default::default()
        };
        let resolved = crate::engine::resolve(&source, image, None, &once).ok()?;
        let requirements = &resolved.manifest.requirements;
        hardware::unmet_platform(requirements, hardware)
            .or_else(|| hardware::unmet_disk(requirements, hardware))
    }

    /// Whether machine `mac`, not remembered yet, may be: one the inventory
    /// lists always is; any other while there is room, a few at a time from
    /// one address (IPv6: one /64).
    fn admit(&self, machines: &BTreeMap<Mac, Machine>, listed: bool, from: IpAddr) -> bool {
        listed || (machines.len() < MAX_MACHINES && self.admit_new(from, unix_now()))
    }

    /// Whether one more new machine may be remembered for `from` at `now`.
    fn admit_new(&self, from: IpAddr, now: u64) -> bool {
        let from = match from {
            IpAddr::V6(v6) => {
                let mut network = v6.octets();
                network[8..].fill(0);
                IpAddr::from(network)
            }
            v4 => v4,
        };
        let mut newcomers = self.newcomers.lock().unwrap_or_else(|e| e.into_inner());
        if newcomers.len() >= ADDRESSES_KEPT {
            newcomers.retain(|_, (start, _)| now.saturating_sub(*start) < NEW_WINDOW_SECS);
            if newcomers.len() >= ADDRESSES_KEPT {
                return false;
            }
        }
        let (start, count) = newcomers.entry(from).or_insert((now, 0));
        if now.saturating_sub(*start) >= NEW_WINDOW_SECS {
            (*start, *count) = (now, 0);
        }
        if *count >= NEW_PER_ADDRESS {
            return false;
        }
        *count += 1;
        true
    }

    /// A status event from machine `mac`'s deploy environment or installed OS,
    /// sent from `from` with `credential`: checked, then what it says is
    /// remembered. An error says why it was not taken.
    pub fn on_event(
        &self,
        mac: Mac,
        event: &Value,
        credential: Option<&str>,
        from: IpAddr,
    ) -> Result<(), Refusal> {
        let credential = credential.ok_or(Refusal::NoCredential(mac))?;
        let (listed, reprovision_token) = self.with_inventory(|i| {
            let entry = i.hosts.get(&mac);
            (entry.is_some(), entry.and_then(|h| h.reprovision.clone()))
        });
        let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        let known = machines.contains_key(&mac);
        let before = machines.get(&mac).cloned().unwrap_or_default();
        let mut m = before.clone();
        // Acted on only as one of this build's events; a phase it does not know
        // (a newer deploy environment's) is still shown.
        let shown = event.get("phase").and_then(Value::as_str).unwrap_or("");
        let typed = Event::parse(event);
        let phase = typed.as_ref().map(Event::phase);
        let fingerprint = access::fingerprint(credential);
        let bound = m.credential.as_deref() == Some(fingerprint.as_str());
        if !bound && !self.keys.credential_valid(credential, mac, m.generation) {
            return Err(Refusal::WrongCredential(mac));
        }
        if !bound && phase != Some(Phase::Booted) {
            return Err(Refusal::NotStarted(mac));
        }
        let agent = matches!(
            typed,
            Some(Event::Complete {
                committed: Some(_),
                ..
            })
        );
        // A deploy that completed speaks once more: its installed OS's report.
        if bound && m.completed.is_some() && !m.in_progress && !agent {
            return Err(Refusal::Completed(mac));
        }
        let now = unix_now();
        if !known && !self.admit(&machines, listed, from) {
            return Err(Refusal::TooManyNew(mac));
        }
        if let Some(image) = typed.as_ref().and_then(Event::image)
            && image.starts_with("sha256:")
            && image.len() <= 71
        {
            m.image_seen = Some(printable(image));
        }
        m.last_seen = now;
        match phase {
            // The same deploy environment again (its deploy process started
            // over, PID 1's retry): nothing new.
            Some(Phase::Booted) if !agent && bound && m.in_progress => {}
            Some(Phase::Booted) if !agent => {
                if m.in_progress {
                    m.failures += 1;
                    m.last_error = Some(
                        "the machine started again before its deploy reported an end (a reset, a power loss, or a crash)"
                            .into(),
                    );
                    log::warn!("{mac}: {}", m.last_error.as_deref().unwrap_or_default());
                }
                m.in_progress = true;
                m.credential = Some(fingerprint);
                m.deploys += 1;
                m.image_seen = None;
                // The disk is about to be rewritten: it no longer counts as
                // deployed, whatever happens next.
                m.completed = None;
                m.committed = false;
                m.reprovision_asked = false;
                m.pending_token = reprovision_token;
            }
            // The installed OS's agent: it booted, and committed the deploy
            // (which completed, whether or not its own report of it arrived).
            Some(Phase::Complete) if agent && !m.in_progress => {
                m.committed = m.completed.is_some();
            }
            Some(Phase::Complete) if m.in_progress => {
                m.committed = agent;
                m.in_progress = false;
                m.completed = Some(m.image_seen.clone().unwrap_or_else(|| "unknown".into()));
                m.failures = 0;
                m.last_error = None;
                m.reprovisioned = m.pending_token.take();
                m.captured = None;
                // Credentials given out for this deploy stop counting; the
                // one it started with stays, for its installed OS's report.
                m.generation += 1;
                log::info!("{mac}: deployed; it boots its own disk from now on");
            }
            Some(Phase::Failed) if m.in_progress => {
                m.in_progress = false;
                m.failures += 1;
                let error = match &typed {
                    Some(Event::Failed { error }) if !error.is_empty() => error.as_str(),
                    _ => "no error given",
                };
                m.last_error = Some(printable(error).chars().take(MAX_ERROR).collect());
            }
            _ => {}
        }
        // Held from now on: no credential given out before counts any more,
        // not even the last deploy's (a retry of its own goes unheard; the
        // operator reprovisions).
        if m.failures >= self.opts.attempts.max(1) && before.failures < self.opts.attempts.max(1) {
            m.generation += 1;
            m.credential = None;
        }
        // Hardware facts are kept, and are not a step of the deploy.
        if let Some(Event::Hardware { hardware }) = &typed {
            m.hardware = Some(hardware.clone().bounded());
        } else if crate::format::status::shown_as_phase(shown) && shown != Phase::Hardware.as_str()
        {
            m.phase = Some(shown.to_string());
        }
        // Progress events come often; only a change of state is written down.
        let store = !known
            || Machine {
                last_seen: 0,
                image_seen: None,
                ..m.clone()
            } != Machine {
                last_seen: 0,
                image_seen: None,
                ..before
            };
        // Written under the lock, so the file never goes back to an older state.
        if store {
            self.store(mac, &m);
        }
        machines.insert(mac, m);
        drop(machines);
        self.changed();
        Ok(())
    }

    /// Whether `credential` may read machine `mac`'s cloud-init files: the
    /// credential of its deploy, started or about to.
    pub fn may_read_files(&self, mac: Mac, credential: Option<&str>) -> Result<(), Refusal> {
        let credential = credential.ok_or(Refusal::NoCredential(mac))?;
        let machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        let m = machines.get(&mac).cloned().unwrap_or_default();
        let bound = m.credential.as_deref() == Some(access::fingerprint(credential).as_str());
        // Its deploy's: under way, or about to start.
        let deploying = bound && (m.in_progress || m.completed.is_none());
        if deploying || self.keys.credential_valid(credential, mac, m.generation) {
            Ok(())
        } else {
            Err(Refusal::WrongCredential(mac))
        }
    }

    /// Sends `mac` through the deploy again on its next network boot (and lifts
    /// a hold).
    /// Returns false when the server has no room to remember one more machine.
    pub fn reprovision(&self, mac: Mac) -> bool {
        let listed = self.with_inventory(|i| i.hosts.contains_key(&mac));
        let mut machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        if !machines.contains_key(&mac) && machines.len() >= MAX_MACHINES && !listed {
            return false;
        }
        let m = machines.entry(mac).or_default();
        m.reprovision_asked = true;
        m.failures = 0;
        m.last_error = None;
        // The deploy under way, if any, is given up: its credential and any
        // given out for it stop counting.
        m.in_progress = false;
        m.credential = None;
        m.generation += 1;
        let m = m.clone();
        self.store(mac, &m);
        drop(machines);
        self.changed();
        log::info!("{mac}: reprovision asked; it deploys on its next network boot");
        true
    }

    /// What the server knows, for `GET /machines` and the page: every machine
    /// listed or remembered, with what its next network boot gets.
    pub fn machines_json(&self) -> Value {
        let inventory = self.inventory();
        let machines = self.machines.lock().unwrap_or_else(|e| e.into_inner());
        let mut macs: Vec<Mac> = inventory.hosts.keys().copied().collect();
        macs.extend(machines.keys().copied());
        macs.sort();
        macs.dedup();
        let list: Vec<Value> = macs
            .iter()
            .map(|mac| {
                let mut m = machines.get(mac).cloned().unwrap_or_default();
                let entry = inventory.hosts.get(mac);
                let decision = self.decide(&inventory, *mac, &m, Platform::Bios);
                // Shown once, beside the state rather than in it.
                let hardware = m.hardware.take();
                let (next, held) = match decision {
                    Decision::Deploy(d) => (format!("deploy {}", d.image), None),
                    Decision::Capture(d) => (format!("capture {}", d.image), None),
                    Decision::Local { .. } => ("local".to_string(), None),
                    Decision::Hold(why) => ("hold".to_string(), Some(printable(&why))),
                };
                serde_json::json!({
                    "mac": mac.to_string(),
                    "held": held,
                    "listed": entry.is_some(),
                    "hostname": entry.and_then(|h| h.hostname.clone()),
                    "image": entry.and_then(|h| h.capture.as_ref().or(h.common.image.as_ref())).or(inventory.defaults.common.image.as_ref()).map(|i| i.to_string()),
                    "capture": entry.and_then(|h| h.capture.as_ref()).map(|i| i.to_string()),
                    "next": next,
                    "hardware_summary": hardware.as_ref().map(|h| h.summary()),
                    "hardware_details": hardware.as_ref().map(|h| h.details()),
                    "hardware": hardware,
                    "state": m,
                })
            })
            .collect();
        Value::Array(list)
    }

    /// A cloud-init file the inventory gives machine `mac` (`user-data` or
    /// `network-config`), next to the inventory file.
    pub fn host_file(&self, mac: Mac, which: &str) -> Option<PathBuf> {
        let inventory = self.inventory();
        let entry = inventory.hosts.get(&mac)?;
        let name = match which {
            "user-data" => entry.user_data.as_ref()?,
            "network-config" => entry.network_config.as_ref()?,
            _ => return None,
        };
        // Names are plain file names (checked by the inventory's parser).
        Some(
            self.opts
                .hosts
                .parent()
                .unwrap_or(Path::new("."))
                .join(name),
        )
    }
}
