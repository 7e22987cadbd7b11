//! The status table `imprint serve` keeps: per machine, its recent status
//! events. Bounded in every direction a client could push it: event size,
//! events kept per machine, machines kept, total bytes; machines silent for a
//! week are forgotten. Without a token, a machine's entry takes events only
//! from the address that reported it, until it has been quiet for a while, so
//! one machine cannot overwrite another's progress.

use serde_json::Value;
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
        }
    }

    /// Records an event `body` from `from` at `now` (Unix seconds); `trusted`
    /// when it carried the server's token. Returns the machine name.
    pub fn post(
        &mut self,
        body: &[u8],
        from: IpAddr,
        now: u64,
        trusted: bool,
    ) -> Result<String, StatusError> {
        if body.len() > MAX_EVENT {
            return Err(StatusError::TooLarge);
        }
        let mut event = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(StatusError::NotJson("not an object".into())),
            Err(e) => return Err(StatusError::NotJson(e.to_string())),
        };
        let name = match event.get("target") {
            None => from.to_string(),
            Some(Value::String(t)) if valid_name(t) => t.clone(),
            Some(_) => return Err(StatusError::BadName),
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
        Ok(name)
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

    /// One machine's recent events, oldest first.
    pub fn history(&self, name: &str) -> Option<Value> {
        let m = self.machines.get(name)?;
        Some(Value::Array(m.events.iter().cloned().collect()))
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

    fn event(target: &str, phase: &str) -> Vec<u8> {
        serde_json::json!({ "target": target, "phase": phase })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn latest_and_history_per_machine() {
        let mut t = StatusTable::new(10, 1 << 20);
        for i in 0..HISTORY + 5 {
            t.post(&event("m1", &format!("p{i}")), A, 100, false)
                .unwrap();
        }
        t.post(br#"{"phase":"anonymous"}"#, B, 100, false).unwrap();
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
            t.post(b"[1]", A, 1, false),
            Err(StatusError::NotJson(_))
        ));
        assert_eq!(
            t.post(&event("a b", "x"), A, 1, false),
            Err(StatusError::BadName)
        );
        assert_eq!(
            t.post(&event("evil\u{1b}[2J", "x"), A, 1, false),
            Err(StatusError::BadName)
        );
        assert_eq!(
            t.post(&event(&"n".repeat(MAX_NAME + 1), "x"), A, 1, false),
            Err(StatusError::BadName)
        );
        assert_eq!(
            t.post(br#"{"target":5}"#, A, 1, false),
            Err(StatusError::BadName)
        );
        let big = format!(r#"{{"target":"m","pad":"{}"}}"#, "x".repeat(MAX_EVENT));
        assert_eq!(
            t.post(big.as_bytes(), A, 1, false),
            Err(StatusError::TooLarge)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn another_address_cannot_overwrite_a_machine_until_it_is_quiet() {
        let mut t = StatusTable::new(10, 1 << 20);
        t.post(&event("m1", "writing"), A, 1000, false).unwrap();
        assert!(matches!(
            t.post(&event("m1", "failed"), B, 1001, false),
            Err(StatusError::NotOwner { .. })
        ));
        assert_eq!(t.latest()["m1"]["phase"], "writing");
        // With the token, or after a quiet spell, it may.
        t.post(&event("m1", "booted"), B, 1002, true).unwrap();
        assert_eq!(t.latest()["m1"]["phase"], "booted");
        t.post(
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
            t.post(body.as_bytes(), A, 10 + i, false).unwrap();
            assert!(t.len() <= 100);
            assert!(t.bytes() <= 64 << 10);
        }
        // The newest stay.
        assert!(t.history("m4999").is_some());
        assert!(t.history("m0").is_none());
        assert!(t.latest().to_string().len() < 80 << 10);
        // A week of silence: gone.
        t.post(&event("late", "x"), A, 5010 + EXPIRE_SECS, false)
            .unwrap();
        assert_eq!(t.len(), 1);
    }
}
