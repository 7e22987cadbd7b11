//! Status events: one JSON object per event, `{"target", "phase", ...}`, echoed on
//! the deploy environment's console as `imprint-status: {json}` and POSTed to the
//! operator's status URL by the deploy environment and the first-boot agent.
//! [`Event`] is every event this build sends, by phase with its fields;
//! [`Envelope`] is the object on the wire. docs/status-events.md describes the
//! protocol.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happened, by phase, with the fields each phase carries. The names are
/// the wire format (the phase in kebab-case, the fields as they are): status
/// pages, tests and operators' scripts match on them. A field that has no
/// value is left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Event {
    /// The deploy environment started: its version, and seconds since its
    /// kernel started.
    Booted {
        #[serde(default)]
        version: String,
        #[serde(default)]
        uptime: f64,
    },
    /// The machine's hardware, collected once its drivers are loaded: sent
    /// right after `booted`, before the deploy's other events.
    Hardware {
        #[serde(default)]
        hardware: super::hardware::Hardware,
    },
    /// An address was configured: the interface and its address/prefix.
    NetworkUp {
        #[serde(default)]
        interface: String,
        #[serde(default)]
        address: String,
    },
    /// The target disk was chosen: its size and serial; or, for a disk found
    /// already holding the image (`unchanged`), the image.
    DiskSelected {
        #[serde(default)]
        disk: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        unchanged: bool,
    },
    /// Image data is being written: bytes done of the total, and fetched.
    Writing {
        #[serde(default)]
        done: u64,
        #[serde(default)]
        total: u64,
        #[serde(default)]
        fetched: u64,
    },
    /// The machine's disk is being captured: bytes of the image done of the
    /// total, and bytes uploaded (what the repository lacked).
    Capturing {
        #[serde(default)]
        done: u64,
        #[serde(default)]
        total: u64,
        #[serde(default)]
        uploaded: u64,
    },
    /// The capture is stored: the image (NAME:TAG) and its manifest digest,
    /// bytes in use and read, chunks and bytes uploaded, chunks the repository
    /// had already.
    Captured {
        #[serde(default)]
        image: String,
        #[serde(default)]
        digest: String,
        #[serde(default)]
        used: u64,
        #[serde(default)]
        read: u64,
        #[serde(default)]
        uploaded: u64,
        #[serde(default)]
        uploaded_chunks: u64,
        #[serde(default)]
        already_stored: u64,
    },
    /// State record, partition table and boot records are written: the disk,
    /// the image, what was done about a first-boot agent, the timings so far.
    BootRecords {
        #[serde(default)]
        disk: String,
        #[serde(default)]
        image: String,
        #[serde(default)]
        agent: String,
        #[serde(default)]
        timings: Value,
    },
    /// The deploy environment is handing off: how (`reboot`, `poweroff`,
    /// `kexec`), and why it is not the kexec asked for.
    Handoff {
        #[serde(default)]
        uptime: f64,
        #[serde(default)]
        handoff: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_kexec: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        unchanged: bool,
    },
    /// The deploy is done (the deploy environment: `uptime`), or the installed
    /// OS committed it (the agent: `committed`, the image, the timings).
    Complete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uptime: Option<f64>,
        #[serde(default, skip_serializing_if = "is_false")]
        unchanged: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        committed: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timings: Option<Value>,
    },
    /// An upgrade was rolled back: by the deploy environment (`done`, one line
    /// per step), or found abandoned by the OS it fell back to (the upgrade's
    /// image and disk).
    RolledBack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        done: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk: Option<String>,
    },
    /// The deploy failed, and why.
    Failed {
        #[serde(default)]
        error: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Event {
    pub fn phase(&self) -> Phase {
        match self {
            Event::Booted { .. } => Phase::Booted,
            Event::Hardware { .. } => Phase::Hardware,
            Event::NetworkUp { .. } => Phase::NetworkUp,
            Event::DiskSelected { .. } => Phase::DiskSelected,
            Event::Writing { .. } => Phase::Writing,
            Event::Capturing { .. } => Phase::Capturing,
            Event::Captured { .. } => Phase::Captured,
            Event::BootRecords { .. } => Phase::BootRecords,
            Event::Handoff { .. } => Phase::Handoff,
            Event::Complete { .. } => Phase::Complete,
            Event::RolledBack { .. } => Phase::RolledBack,
            Event::Failed { .. } => Phase::Failed,
        }
    }

    /// The image the event names, where it names one.
    pub fn image(&self) -> Option<&str> {
        match self {
            Event::DiskSelected { image, .. }
            | Event::Complete { image, .. }
            | Event::RolledBack { image, .. } => image.as_deref(),
            Event::BootRecords { image, .. } => Some(image),
            _ => None,
        }
    }

    /// Sets the image an event names, where it may name one and does not yet.
    pub fn name_image(&mut self, digest: &str) {
        match self {
            Event::DiskSelected { image, .. }
            | Event::Complete { image, .. }
            | Event::RolledBack { image, .. }
                if image.is_none() =>
            {
                *image = Some(digest.to_string());
            }
            _ => {}
        }
    }
}

/// The object on the wire: the machine the event is about, and the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub target: String,
    #[serde(flatten)]
    pub event: Event,
}

impl Event {
    /// The event in an object a machine sent, if it is one of this build's
    /// (see [`Envelope::parse`]).
    pub fn parse(value: &Value) -> Option<Event> {
        serde_json::from_value(value.clone()).ok()
    }
}

impl Envelope {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// An event a machine sent, if it is one of this build's: unknown phases
    /// and fields of the wrong type give `None` (the server still keeps such an
    /// event for its status table, as data, but acts on none of it).
    pub fn parse(value: &Value) -> Option<Envelope> {
        serde_json::from_value(value.clone()).ok()
    }
}

/// Where a machine is in its deploy. The names are the wire format: status pages,
/// tests and operators' scripts match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The deploy environment started.
    Booted,
    /// The machine said what hardware it has (not a step of the deploy).
    Hardware,
    /// An address was configured.
    NetworkUp,
    /// The target disk was chosen.
    DiskSelected,
    /// Image data is being written (sent periodically, with progress).
    Writing,
    /// The disk is being captured (sent periodically, with progress).
    Capturing,
    /// The capture is stored in the repository.
    Captured,
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
    pub const ALL: [Phase; 12] = [
        Phase::Booted,
        Phase::Hardware,
        Phase::NetworkUp,
        Phase::DiskSelected,
        Phase::Writing,
        Phase::Capturing,
        Phase::Captured,
        Phase::BootRecords,
        Phase::Handoff,
        Phase::Complete,
        Phase::RolledBack,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Booted => "booted",
            Phase::Hardware => "hardware",
            Phase::NetworkUp => "network-up",
            Phase::DiskSelected => "disk-selected",
            Phase::Writing => "writing",
            Phase::Capturing => "capturing",
            Phase::Captured => "captured",
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
    fn an_envelope_carries_the_target_the_phase_and_only_fields_with_values() {
        let e = Envelope {
            target: "node-1".into(),
            event: Event::Handoff {
                uptime: 2.5,
                handoff: "reboot".into(),
                not_kexec: None,
                unchanged: false,
            },
        };
        assert_eq!(
            e.to_value(),
            json!({ "target": "node-1", "phase": "handoff", "uptime": 2.5, "handoff": "reboot" })
        );
        assert_eq!(Envelope::parse(&e.to_value()), Some(e));
        // What a receiver gets from others: unknown fields ignored, missing ones
        // empty, an unknown phase none of this build's.
        let forged = json!({ "target": "n", "phase": "failed", "extra": 1 });
        assert_eq!(
            Event::parse(&forged),
            Some(Event::Failed {
                error: String::new()
            })
        );
        assert_eq!(Event::parse(&json!({ "phase": "exploded" })), None);
        assert_eq!(
            Event::parse(&json!({ "phase": "failed", "error": 5 })),
            None
        );
        assert_eq!(Event::parse(&json!("booted")), None);
    }

    /// Events recorded from a deploy environment and an agent of this wire
    /// format still read as the events they were, and are written back with
    /// the same fields and values.
    #[test]
    fn recorded_events_read_and_write_back_the_same() {
        let recorded = include_str!("../../tests/fixtures/status/events-1.jsonl");
        let mut phases = Vec::new();
        for line in recorded.lines().filter(|l| !l.is_empty()) {
            let value: Value = serde_json::from_str(line).unwrap();
            let envelope =
                Envelope::parse(&value).unwrap_or_else(|| panic!("not an event: {line}"));
            assert_eq!(envelope.to_value(), value, "{line}");
            phases.push(envelope.event.phase());
        }
        for phase in Phase::ALL {
            assert!(phases.contains(&phase), "no {phase} event recorded");
        }
    }
}
