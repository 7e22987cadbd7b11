//! Status events: one JSON object per event, `{"target", "phase", ...}`, echoed on
//! the deploy environment's console as `imprint-status: {json}` and POSTed to the
//! operator's status URL by the deploy environment and the first-boot agent.

use serde_json::{Map, Value};

/// Where a machine is in its deploy. The names are the wire format: status pages,
/// tests and operators' scripts match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The deploy environment started.
    Booted,
    /// An address was configured.
    NetworkUp,
    /// The target disk was chosen.
    DiskSelected,
    /// Image data is being written (sent periodically, with progress).
    Writing,
    /// State record, partition table and boot record are written.
    BootRecords,
    /// The deploy environment is handing off (reboot, power off, kexec).
    Handoff,
    /// The deploy is done (deploy environment), or the installed OS committed.
    Complete,
    /// An upgrade was rolled back.
    RolledBack,
    /// The deploy failed; the event carries the error.
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Booted,
        Phase::NetworkUp,
        Phase::DiskSelected,
        Phase::Writing,
        Phase::BootRecords,
        Phase::Handoff,
        Phase::Complete,
        Phase::RolledBack,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Booted => "booted",
            Phase::NetworkUp => "network-up",
            Phase::DiskSelected => "disk-selected",
            Phase::Writing => "writing",
            Phase::BootRecords => "boot-records",
            Phase::Handoff => "handoff",
            Phase::Complete => "complete",
            Phase::RolledBack => "rolled-back",
            Phase::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// Whether `text` may be shown as a phase, whoever sent it: up to 32 lower-case
/// letters and `-` (the names above, and others' that look like them).
pub fn shown_as_phase(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event for `target` in `phase`, with the fields of `extra` (an object)
/// added. `target` and `phase` are always the event's own.
pub fn event(target: &str, phase: Phase, extra: Value) -> Value {
    let mut map = match extra {
        Value::Object(more) => more,
        _ => Map::new(),
    };
    map.insert("target".into(), Value::from(target));
    map.insert("phase".into(), Value::from(phase.as_str()));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        let mut names: Vec<_> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
        assert_eq!(Phase::parse("writing "), None);
    }

    #[test]
    fn an_event_keeps_its_own_target_and_phase() {
        let e = event(
            "node-1",
            Phase::Writing,
            json!({ "done": 5, "phase": "forged", "target": "other" }),
        );
        assert_eq!(e["target"], "node-1");
        assert_eq!(e["phase"], "writing");
        assert_eq!(e["done"], 5);
        let e = event("n", Phase::Failed, Value::Null);
        assert_eq!(e, json!({ "target": "n", "phase": "failed" }));
    }
}
