//! Where one deploy's time went and where its image bytes came from. The deploy
//! environment fills it in as it goes, keeps it in the state record, sends it
//! with its status events and prints it on its summary line; the installed OS's
//! first boot adds the hand-off and its own start, and `imprint status` prints it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// The stretches of wall time a deploy passes through, in the order they come.
/// The names are the wire format of status events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Loading the drivers for what the machine has.
    Drivers,
    /// Finding and mounting the media named as repositories.
    Media,
    /// Bringing up the network (DHCP or `ip=`).
    Network,
    /// Fetching and checking the ref, signature and manifest (and host files).
    Manifest,
    /// Waiting for the target disk to appear.
    Disk,
    /// Capturing the previous OS's configuration (upgrades).
    Capture,
    /// The data pass: every chunk checked in place, taken from the previous disk,
    /// or fetched, checked and written.
    Write,
    /// Partition table, state record, boot code, the agent and the boot switch.
    BootRecords,
    /// From the start of the hand-off to the installed OS's kernel starting:
    /// firmware and boot loader after a reboot, or kexec. Measured by the
    /// installed OS, to the second of its clock.
    Handoff,
    /// From the installed OS's kernel starting to its first-boot agent running.
    OsBoot,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Drivers,
        Phase::Media,
        Phase::Network,
        Phase::Manifest,
        Phase::Disk,
        Phase::Capture,
        Phase::Write,
        Phase::BootRecords,
        Phase::Handoff,
        Phase::OsBoot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Drivers => "drivers",
            Phase::Media => "media",
            Phase::Network => "network",
            Phase::Manifest => "manifest",
            Phase::Disk => "disk",
            Phase::Capture => "capture",
            Phase::Write => "write",
            Phase::BootRecords => "boot-records",
            Phase::Handoff => "handoff",
            Phase::OsBoot => "os-boot",
        }
    }
}

/// Time the data pass's workers spent, summed over the workers. They overlap
/// with each other, so the sum may exceed the pass's wall time; the shares say
/// what bounded it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataWork {
    /// Waiting for chunks from the repository (network or medium).
    pub fetch_ms: u64,
    /// Hashing and decompressing: what is in place, seeded and fetched.
    pub verify_ms: u64,
    /// Reading and writing the target and the previous disk.
    pub disk_ms: u64,
}

/// Where the image's bytes came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteSources {
    /// Image bytes already in place on the target (checked, not written).
    pub target: u64,
    /// Image bytes copied from the previous OS's disk (upgrades).
    pub previous: u64,
    /// Stored (compressed) bytes read from media.
    pub media: u64,
    /// Stored (compressed) bytes received over the network.
    pub network: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Kernel uptime when the deploy began, in ms. The firmware and boot loader
    /// that came before the deploy environment's kernel are not seen.
    pub started_ms: u64,
    /// Milliseconds in each phase, in the order first entered; a phase entered
    /// again adds to its entry.
    pub phases: Vec<(Phase, u64)>,
    pub data: DataWork,
    pub bytes: ByteSources,
    /// Unix time in ms when the hand-off began (0 until then).
    pub handoff_at_ms: u64,
}

/// A phase list longer than this is not one a deploy made.
const MAX_PHASES: usize = Phase::ALL.len();

impl Timings {
    /// Adds `ms` to `phase`.
    pub fn add(&mut self, phase: Phase, ms: u64) {
        if let Some((_, total)) = self.phases.iter_mut().find(|(p, _)| *p == phase) {
            *total = total.saturating_add(ms);
        } else if self.phases.len() < MAX_PHASES {
            self.phases.push((phase, ms));
        }
    }

    pub fn get(&self, phase: Phase) -> Option<u64> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, ms)| *ms)
    }

    /// The phases' sum, in ms.
    pub fn total_ms(&self) -> u64 {
        self.phases
            .iter()
            .fold(0u64, |sum, (_, ms)| sum.saturating_add(*ms))
    }

    /// The installed OS's first boot, at `now_unix_ms` and `uptime_ms` into its
    /// kernel: adds the hand-off (hand-off start to that kernel's start) and the
    /// OS's own boot, once. A clock that puts the kernel's start before the
    /// hand-off (a machine without a kept clock) gives no hand-off figure.
    pub fn add_first_boot(&mut self, now_unix_ms: u64, uptime_ms: u64) {
        if self.get(Phase::OsBoot).is_some() {
            return;
        }
        let kernel_start = now_unix_ms.saturating_sub(uptime_ms);
        if self.handoff_at_ms > 0 && kernel_start >= self.handoff_at_ms {
            self.add(Phase::Handoff, kernel_start - self.handoff_at_ms);
        }
        self.add(Phase::OsBoot, uptime_ms);
    }

    /// One line for the console and `imprint status`:
    /// `drivers 0.41 s, network 1.20 s, ... = 12.30 s after 1.50 s of kernel;
    /// write: fetch 71%, verify 12%, disk 17% of worker time; bytes: ...`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (i, (phase, ms)) in self.phases.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}{} {}", phase.as_str(), seconds(*ms));
        }
        let _ = write!(
            out,
            " = {} after {} of kernel start-up",
            seconds(self.total_ms()),
            seconds(self.started_ms)
        );
        let DataWork {
            fetch_ms,
            verify_ms,
            disk_ms,
        } = self.data;
        let busy = fetch_ms.saturating_add(verify_ms).saturating_add(disk_ms);
        if busy > 0 {
            let share = |ms: u64| (ms as u128 * 100 / busy as u128) as u64;
            let _ = write!(
                out,
                "; write: fetch {}%, verify {}%, disk {}% of {} worker time",
                share(fetch_ms),
                share(verify_ms),
                share(disk_ms),
                seconds(busy)
            );
        }
        let b = &self.bytes;
        let _ = write!(
            out,
            "; bytes: {} in place on the target, {} from the previous disk, {} from media, {} from the network",
            b.target, b.previous, b.media, b.network
        );
        out
    }

    /// The figures as a JSON object for status events: phases by name in ms,
    /// then `data` and `bytes`.
    pub fn to_json(&self) -> Value {
        let mut phases = Map::new();
        for (phase, ms) in &self.phases {
            phases.insert(phase.as_str().into(), Value::from(*ms));
        }
        serde_json::json!({
            "started_ms": self.started_ms,
            "phases_ms": phases,
            "total_ms": self.total_ms(),
            "data_ms": {
                "fetch": self.data.fetch_ms,
                "verify": self.data.verify_ms,
                "disk": self.data.disk_ms,
            },
            "bytes": {
                "target": self.bytes.target,
                "previous": self.bytes.previous,
                "media": self.bytes.media,
                "network": self.bytes.network,
            },
        })
    }
}

/// `ms` as seconds with two decimals: `1.23 s`.
fn seconds(ms: u64) -> String {
    format!("{}.{:02} s", ms / 1000, ms % 1000 / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Timings {
        let mut t = Timings {
            started_ms: 1_520,
            data: DataWork {
                fetch_ms: 7_000,
                verify_ms: 2_000,
                disk_ms: 1_000,
            },
            bytes: ByteSources {
                target: 4 << 20,
                previous: 0,
                media: 0,
                network: 123_456,
            },
            handoff_at_ms: 1_800_000_000_000,
            ..Timings::default()
        };
        t.add(Phase::Drivers, 410);
        t.add(Phase::Network, 1_200);
        t.add(Phase::Manifest, 50);
        t.add(Phase::Disk, 0);
        t.add(Phase::Write, 3_300);
        t.add(Phase::BootRecords, 200);
        t
    }

    #[test]
    fn phases_keep_their_order_and_a_phase_entered_again_adds_up() {
        let mut t = sample();
        t.add(Phase::Drivers, 90);
        assert_eq!(t.get(Phase::Drivers), Some(500));
        assert_eq!(t.phases[0].0, Phase::Drivers);
        assert_eq!(t.phases.len(), 6);
        assert_eq!(t.total_ms(), 500 + 1_200 + 50 + 3_300 + 200);
        assert_eq!(t.get(Phase::Handoff), None);
    }

    #[test]
    fn the_list_never_grows_past_one_entry_per_phase() {
        let mut t = Timings::default();
        for _ in 0..3 {
            for p in Phase::ALL {
                t.add(p, u64::MAX / 2);
            }
        }
        assert_eq!(t.phases.len(), Phase::ALL.len());
        assert_eq!(t.get(Phase::Write), Some(u64::MAX));
        assert_eq!(t.total_ms(), u64::MAX);
    }

    #[test]
    fn first_boot_adds_the_hand_off_and_the_os_boot_once() {
        let mut t = sample();
        // The OS's kernel started 9.5 s after the hand-off, and its agent ran
        // 4.25 s into it.
        let handoff = t.handoff_at_ms;
        t.add_first_boot(handoff + 9_500 + 4_250, 4_250);
        assert_eq!(t.get(Phase::Handoff), Some(9_500));
        assert_eq!(t.get(Phase::OsBoot), Some(4_250));
        let total = t.total_ms();
        t.add_first_boot(handoff + 60_000, 30_000);
        assert_eq!(
            t.total_ms(),
            total,
            "a second first boot changed the figures"
        );
    }

    #[test]
    fn a_clock_behind_the_hand_off_gives_no_hand_off_figure() {
        let mut t = sample();
        let handoff = t.handoff_at_ms;
        t.add_first_boot(handoff - 3_600_000, 4_000);
        assert_eq!(t.get(Phase::Handoff), None);
        assert_eq!(t.get(Phase::OsBoot), Some(4_000));
        let mut never = Timings::default();
        never.add_first_boot(1_800_000_000_000, 2_000);
        assert_eq!(never.get(Phase::Handoff), None);
    }

    #[test]
    fn the_summary_names_every_phase_share_and_source() {
        let line = sample().summary();
        assert_eq!(
            line,
            "drivers 0.41 s, network 1.20 s, manifest 0.05 s, disk 0.00 s, write 3.30 s, \
             boot-records 0.20 s = 5.16 s after 1.52 s of kernel start-up; \
             write: fetch 70%, verify 20%, disk 10% of 10.00 s worker time; \
             bytes: 4194304 in place on the target, 0 from the previous disk, 0 from media, \
             123456 from the network"
        );
        // No data pass (a deploy that failed before it): no shares.
        let mut early = Timings::default();
        early.add(Phase::Drivers, 5);
        assert!(!early.summary().contains("worker time"));
    }

    #[test]
    fn status_events_carry_the_phases_by_name() {
        let j = sample().to_json();
        assert_eq!(j["phases_ms"]["drivers"], 410);
        assert_eq!(j["phases_ms"]["boot-records"], 200);
        assert_eq!(j["total_ms"], 5_160);
        assert_eq!(j["data_ms"]["verify"], 2_000);
        assert_eq!(j["bytes"]["network"], 123_456);
        assert_eq!(j["started_ms"], 1_520);
        assert_eq!(j["phases_ms"].as_object().unwrap().len(), 6);
    }

    #[test]
    fn phase_names_are_distinct() {
        let mut names: Vec<_> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
    }

    #[test]
    fn the_postcard_encoding_round_trips() {
        let mut t = sample();
        t.add_first_boot(t.handoff_at_ms + 10_000, 3_000);
        let bytes = postcard::to_stdvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<Timings>(&bytes).unwrap(), t);
    }
}
