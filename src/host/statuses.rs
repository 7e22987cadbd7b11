//! The status table `imprint serve` keeps: per machine, its recent status
//! events. Bounded in every direction a client could push it: event size,
//! events kept per machine, machines kept, total bytes; machines silent for a
//! week are forgotten. Without a token, a machine's entry takes events only
//! from the address that reported it, until it has been quiet for a while, so
//! one machine cannot overwrite another's progress.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

/// Largest status event accepted, in bytes of JSON.
pub const MAX_EVENT: usize = 16 << 10;
/// Events kept per machine, newest last.
pub const HISTORY: usize = 32;
/// Longest machine name.
pub const MAX_NAME: usize = 128;
/// After this long without events, another address may report for a machine
/// (it got a new lease, or was moved).
pub const CLAIM_AFTER_SECS: u64 = 600;
/// Machines silent this long are dropped.
pub const EXPIRE_SECS: u64 = 7 * 24 * 3600;
/// Most bytes of one machine's history sent in one answer (its newest events).
pub const MAX_HISTORY_ANSWER: usize = 64 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("status event larger than {MAX_EVENT} bytes")]
    TooLarge,
    #[error("status event is not a JSON object: {0}")]
    NotJson(String),
    #[error("machine name must be 1 to {MAX_NAME} printable characters without spaces")]
    BadName,
    #[error(
        "{name} reports from {owner}; another address may report for it after {CLAIM_AFTER_SECS} s of silence, or with the server's status token"
    )]
    NotOwner { name: String, owner: IpAddr },
}

struct Machine {
    owner: IpAddr,
    last: u64,
    bytes: usize,
    events: VecDeque<Value>,
}

pub struct StatusTable {
    machines: BTreeMap<String, Machine>,
    max_machines: usize,
    max_bytes: usize,
    bytes: usize,
    /// Moves on with every change, so a view made of the table knows when it
    /// is out of date.
    version: u64,
}

/// An event as it came, checked: the machine it names and its fields.
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub fields: Value,
}

/// The event in `body`, sent from `from`: a JSON object of at most
/// [`MAX_EVENT`] bytes whose `target` (or else the sender's address) names the
/// machine.
pub fn parse(body: &[u8], from: IpAddr) -> Result<Event, StatusError> {
    if body.len() > MAX_EVENT {
        return Err(StatusError::TooLarge);
    }
    let fields: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(StatusError::NotJson("not an object".into())),
        Err(e) => return Err(StatusError::NotJson(e.to_string())),
    };
    let name = match fields.get("target") {
        None => from.to_string(),
        Some(Value::String(t)) if valid_name(t) => t.clone(),
        Some(_) => return Err(StatusError::BadName),
    };
    Ok(Event {
        name,
        fields: Value::Object(fields),
    })
}

/// A name a machine may report under.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| b.is_ascii_graphic())
}

impl StatusTable {
    pub fn new(max_machines: usize, max_bytes: usize) -> StatusTable {
        StatusTable {
            machines: BTreeMap::new(),
            max_machines: max_machines.max(1),
            max_bytes,
            bytes: 0,
            version: 0,
        }
    }

    /// Records `event` (see [`parse`]) from `from` at `now` (Unix seconds);
    /// `trusted` when its sender proved it may report for the machine it
    /// names. Returns the machine name.
    pub fn post(
        &mut self,
        event: Event,
        from: IpAddr,
        now: u64,
        trusted: bool,
    ) -> Result<String, StatusError> {
        let Event { name, fields } = event;
        let Value::Object(mut event) = fields else {
            return Err(StatusError::NotJson("not an object".into()));
        };
        if let Some(m) = self.machines.get(&name)
            && m.owner != from
            && !trusted
            && now.saturating_sub(m.last) < CLAIM_AFTER_SECS
        {
            return Err(StatusError::NotOwner {
                name,
                owner: m.owner,
            });
        }
        event.insert("received".into(), now.into());
        event.insert("from".into(), from.to_string().into());
        let event = Value::Object(event);
        let size = event.to_string().len() + name.len();
        self.expire(now);
        let machine = self.machines.entry(name.clone()).or_insert(Machine {
            owner: from,
            last: now,
            bytes: 0,
            events: VecDeque::new(),
        });
        machine.owner = from;
        machine.last = now;
        machine.bytes += size;
        self.bytes += size;
        machine.events.push_back(event);
        while machine.events.len() > HISTORY {
            if let Some(old) = machine.events.pop_front() {
                let freed = old.to_string().len() + name.len();
                machine.bytes -= freed;
                self.bytes -= freed;
            }
        }
        self.shrink(&name);
        self.version += 1;
        Ok(name)
    }

    /// Moves on with every event taken.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn expire(&mut self, now: u64) {
        let stale: Vec<String> = self
            .machines
            .iter()
            .filter(|(_, m)| now.saturating_sub(m.last) >= EXPIRE_SECS)
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.remove(&name);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(m) = self.machines.remove(name) {
            self.bytes -= m.bytes;
        }
    }

    /// Drops the machines heard from least recently (never `keep`) until the
    /// table fits its bounds.
    fn shrink(&mut self, keep: &str) {
        while self.machines.len() > self.max_machines || self.bytes > self.max_bytes {
            let oldest = self
                .machines
                .iter()
                .filter(|(n, _)| n.as_str() != keep)
                .min_by_key(|(_, m)| m.last)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(name) => self.remove(&name),
                None => break,
            }
        }
    }

    /// Every machine's latest event, by name.
    pub fn latest(&self) -> Value {
        Value::Object(
            self.machines
                .iter()
                .filter_map(|(n, m)| Some((n.clone(), m.events.back()?.clone())))
                .collect(),
        )
    }

    /// [`StatusTable::latest`] as JSON, written from the table as it is (no
    /// copy of the events is made first).
    pub fn latest_json(&self) -> Vec<u8> {
        let latest: BTreeMap<&str, &Value> = self
            .machines
            .iter()
            .filter_map(|(n, m)| Some((n.as_str(), m.events.back()?)))
            .collect();
        serde_json::to_vec(&latest).unwrap_or_default()
    }

    /// How many machines are in each phase, by their latest events.
    pub fn phase_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for m in self.machines.values() {
            let phase = m
                .events
                .back()
                .and_then(|e| e.get("phase"))
                .and_then(Value::as_str)
                .filter(|p| crate::format::status::shown_as_phase(p))
                .unwrap_or("unknown");
            *counts.entry(phase.to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// One machine's recent events, oldest first, as many of the newest as fit
    /// in [`MAX_HISTORY_ANSWER`] bytes of JSON.
    pub fn history(&self, name: &str) -> Option<Value> {
        let m = self.machines.get(name)?;
        let mut size = 0;
        let mut newest: Vec<Value> = Vec::new();
        for event in m.events.iter().rev() {
            size += event.to_string().len() + 1;
            if size > MAX_HISTORY_ANSWER && !newest.is_empty() {
                break;
            }
            newest.push(event.clone());
        }
        newest.reverse();
        Some(Value::Array(newest))
    }

    pub fn len(&self) -> usize {
        self.machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Bytes of events held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn post(
        t: &mut StatusTable,
        body: &[u8],
        from: IpAddr,
        now: u64,
        trusted: bool,
    ) -> Result<String, StatusError> {
        t.post(parse(body, from)?, from, now, trusted)
    }

    fn event(target: &str, phase: &str) -> Vec<u8> {
        serde_json::json!({ "target": target, "phase": phase })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn latest_and_history_per_machine() {
        let mut t = StatusTable::new(10, 1 << 20);
        for i in 0..HISTORY + 5 {
            post(&mut t, &event("m1", &format!("p{i}")), A, 100, false).unwrap();
        }
        post(&mut t, br#"{"phase":"anonymous"}"#, B, 100, false).unwrap();
        assert_eq!(t.latest()["m1"]["phase"], format!("p{}", HISTORY + 4));
        assert_eq!(t.latest()["10.0.0.2"]["phase"], "anonymous");
        let h = t.history("m1").unwrap();
        assert_eq!(h.as_array().unwrap().len(), HISTORY);
        assert_eq!(h[0]["phase"], "p5");
        assert_eq!(t.latest()["m1"]["from"], "10.0.0.1");
    }

    #[test]
    fn bad_events_and_names_are_refused() {
        let mut t = StatusTable::new(10, 1 << 20);
        assert!(matches!(
            post(&mut t, b"[1]", A, 1, false),
            Err(StatusError::NotJson(_))
        ));
        assert_eq!(
            post(&mut t, &event("a b", "x"), A, 1, false),
            Err(StatusError::BadName)
        );
        assert_eq!(
            post(&mut t, &event("evil\u{1b}[2J", "x"), A, 1, false),
            Err(StatusError::BadName)
        );
        assert_eq!(
            post(&mut t, &event(&"n".repeat(MAX_NAME + 1), "x"), A, 1, false),
            Err(StatusError::BadName)
        );
        assert_eq!(
            post(&mut t, br#"{"target":5}"#, A, 1, false),
            Err(StatusError::BadName)
        );
        let big = format!(r#"{{"target":"m","pad":"{}"}}"#, "x".repeat(MAX_EVENT));
        assert_eq!(
            post(&mut t, big.as_bytes(), A, 1, false),
            Err(StatusError::TooLarge)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn another_address_cannot_overwrite_a_machine_until_it_is_quiet() {
        let mut t = StatusTable::new(10, 1 << 20);
        post(&mut t, &event("m1", "writing"), A, 1000, false).unwrap();
        assert!(matches!(
            post(&mut t, &event("m1", "failed"), B, 1001, false),
            Err(StatusError::NotOwner { .. })
        ));
        assert_eq!(t.latest()["m1"]["phase"], "writing");
        // With the token, or after a quiet spell, it may.
        post(&mut t, &event("m1", "booted"), B, 1002, true).unwrap();
        assert_eq!(t.latest()["m1"]["phase"], "booted");
        post(
            &mut t,
            &event("m1", "network-up"),
            A,
            1002 + CLAIM_AFTER_SECS,
            false,
        )
        .unwrap();
        assert_eq!(t.latest()["m1"]["from"], "10.0.0.1");
    }

    #[test]
    fn the_table_stays_within_its_bounds() {
        let mut t = StatusTable::new(100, 64 << 10);
        let pad = "x".repeat(2000);
        for i in 0..5000u64 {
            let body = format!(r#"{{"target":"m{i}","pad":"{pad}"}}"#);
            post(&mut t, body.as_bytes(), A, 10 + i, false).unwrap();
            assert!(t.len() <= 100);
            assert!(t.bytes() <= 64 << 10);
        }
        // The newest stay.
        assert!(t.history("m4999").is_some());
        assert!(t.history("m0").is_none());
        assert!(t.latest().to_string().len() < 80 << 10);
        // A week of silence: gone.
        post(&mut t, &event("late", "x"), A, 5010 + EXPIRE_SECS, false).unwrap();
        assert_eq!(t.len(), 1);
    }
}
