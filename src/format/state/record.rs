//! The record itself: what was deployed, how, and what the deploy environment
//! and the first boot noted about it.

use super::RECORD_VERSION;
use crate::format::digest::Digest;
use crate::format::gpt::Guid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Deploy,
    Upgrade,
    Committed,
    RolledBack,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Deploy => "deploy",
            Mode::Upgrade => "upgrade",
            Mode::Committed => "committed",
            Mode::RolledBack => "rolled-back",
        }
    }
}

/// Where the previous OS lives, for upgrades.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousOs {
    pub disk_guid: Guid,
    pub partition_guids: Vec<Guid>,
}

/// What the deploy environment did about the installed OS's first-boot agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Agent {
    /// Not looked at (a record from before format 2).
    NotChecked,
    /// The image carries its own agent.
    Own,
    /// The deploy environment installed itself as the agent, of this format.
    Installed { format: u32 },
    /// No agent was installed, for this reason.
    Skipped(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub mode: Mode,
    pub image_name: String,
    pub image_digest: Digest,
    /// Unix seconds of the deploy.
    pub deployed_at: u64,
    pub previous: Option<PreviousOs>,
    /// Per-host settings handed over at deploy time (`hostname`, ...).
    pub settings: BTreeMap<String, String>,
    pub boot_attempts: u32,
    /// Where first boot reports to, and under which name.
    pub status_url: Option<String>,
    pub target: Option<String>,
    /// The mode the record had before it was committed or rolled back.
    pub deployed_mode: Mode,
    /// The configuration bundle captured for an upgrade away from this OS.
    pub bundle: Option<crate::format::bundle::BundleRef>,
    /// BIOS upgrades: this disk's first sector as it was before the upgrade made
    /// the firmware pass over it; writing it back is the rollback.
    pub saved_boot_record: Option<Vec<u8>>,
    pub agent: Agent,
    /// The signed release deployed, when a key vouched for it: a later deploy
    /// of the same image refuses an earlier release.
    pub release: Option<ReleaseStamp>,
    /// Where the deploy's time went and where its bytes came from; the first
    /// boot adds the hand-off.
    pub timings: Option<crate::format::timing::Timings>,
    /// The credential the provisioning server gave the deploy: the installed
    /// OS's report goes with it.
    pub credential: Option<crate::format::cmdline::Secret>,
    /// How the deploy environment last started this OS where a kexec was
    /// asked for: by kexec, or by a reboot, and why.
    pub handoff: Option<HandoffNote>,
}

/// How the deploy environment handed the machine to this OS when asked to
/// kexec: `kexec`, or `reboot` through the firmware when it could not kexec
/// safely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffNote {
    /// `kexec` or `reboot`.
    pub done: String,
    /// Why it did not kexec (empty for a kexec).
    pub why: String,
    /// Unix seconds.
    pub at: u64,
}

/// What a release signature said about the image deployed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStamp {
    pub tag: String,
    /// Unix seconds, as signed.
    pub issued: u64,
}

impl Record {
    /// A fresh record for `image` in `mode`, with nothing else set.
    pub fn new(mode: Mode, image_name: &str, image_digest: Digest) -> Record {
        Record {
            version: RECORD_VERSION,
            mode,
            deployed_mode: mode,
            image_name: image_name.to_string(),
            image_digest,
            deployed_at: 0,
            previous: None,
            settings: BTreeMap::new(),
            boot_attempts: 0,
            status_url: None,
            target: None,
            bundle: None,
            saved_boot_record: None,
            agent: Agent::NotChecked,
            release: None,
            timings: None,
            credential: None,
            handoff: None,
        }
    }
}
