//! What the kernel command line sets: the typed config, its parts, and the
//! problems a command line can have.

use crate::format::digest::ImageRef;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Chunks in flight by default (`imprint.jobs=`, `--jobs`): enough fetches
/// under way to keep a 1 Gbit/s link with a 20 ms round trip busy with 1 MiB
/// chunks, and the disk and the cores busy meanwhile. Fewer where memory is
/// short (`engine::fit_jobs`).
pub const DEFAULT_JOBS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where repository files come from, asked in order (`imprint.repo=`, comma-
    /// separated; default: the medium labelled [`DEFAULT_MEDIA_LABEL`]).
    pub repo: Vec<RepoSource>,
    pub image: Option<ImageRef>,
    pub disk: Option<DiskSelector>,
    pub mode: Mode,
    pub previous: Option<DiskSelector>,
    pub handoff: Handoff,
    /// Base64 ed25519 public key the manifest must be signed with.
    pub pubkey: Option<String>,
    /// URL status events are POSTed to.
    pub status: Option<String>,
    /// The credential a provisioning server gave this deploy: its status
    /// events and the host's files are sent and fetched with it.
    pub credential: Option<Secret>,
    /// The capture token of the server a capture goes to
    /// (`imprint serve --capture-token`).
    pub capture_token: Option<Secret>,
    /// Forward proxy (`http://host:port`) for `http://` repositories.
    pub proxy: Option<String>,
    pub on_error: ErrorPolicy,
    pub hostname: Option<String>,
    /// Name under which this machine reports status (default: its MAC address).
    pub target: Option<String>,
    /// cloud-init user-data for this host: a file in the repository.
    pub user_data: Option<String>,
    /// cloud-init network-config for this host: a file in the repository.
    pub network_config: Option<String>,
    /// Deploy a signed release older than the one the disk holds.
    pub allow_downgrade: bool,
    /// Refuse a signed release issued before this (Unix seconds): a fresh
    /// disk has no record to refuse a replayed old release by.
    pub min_issued: Option<u64>,
    /// Deploy even when the target's record says it holds the image already.
    pub redeploy: bool,
    pub jobs: usize,
    /// How long DHCP may take before the error policy runs.
    pub dhcp_timeout: Duration,
    pub ip: IpConfig,
    /// MAC address of the interface the machine booted from (PXE `BOOTIF=`).
    pub bootif: Option<[u8; 6]>,
}

/// One place `imprint.repo=` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoSource {
    /// `http://…` or `https://…`.
    Url(String),
    /// `media:LABEL[/DIR]` or `media:UUID=…[/DIR]`: a directory (default
    /// [`DEFAULT_MEDIA_DIR`]) on a file system of a medium.
    Media { by: MediaId, dir: String },
}

/// How a medium's file system is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaId {
    Label(String),
    Uuid(String),
}

impl fmt::Display for RepoSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoSource::Url(url) => f.write_str(url),
            RepoSource::Media { by, dir } => {
                match by {
                    MediaId::Label(l) => write!(f, "media:{l}")?,
                    MediaId::Uuid(u) => write!(f, "media:UUID={u}")?,
                }
                if dir != DEFAULT_MEDIA_DIR {
                    write!(f, "/{dir}")?;
                }
                Ok(())
            }
        }
    }
}

/// The label of the medium `imprint media build` makes, and the repository
/// the deploy environment looks for when `imprint.repo=` is not given.
pub const DEFAULT_MEDIA_LABEL: &str = "IMPRINT";
/// Where a medium keeps its repository.
pub const DEFAULT_MEDIA_DIR: &str = "repo";
/// Where a medium keeps its per-machine choices (`imprint media build --hosts`).
pub const MEDIA_INVENTORY: &str = "imprint/hosts.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Deploy,
    Upgrade,
    Rollback,
    /// Read this machine's disk into the repository as `imprint.image=`.
    Capture,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    Reboot,
    Poweroff,
    Kexec,
}

/// What PID 1 does after a fatal error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    Reboot,
    Poweroff,
    Retry,
}

/// A value that is not to be shown: its `Debug` says only that it is there.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Longest `imprint.credential=`.
pub const MAX_CREDENTIAL: usize = 256;

/// `imprint.disk=`: a device path, or hints that must all match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSelector {
    Path(String),
    Hints(DiskHints),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskHints {
    pub serial: Option<String>,
    pub model: Option<String>,
    /// Approximate size in bytes; a disk matches within 5%.
    pub size: Option<u64>,
    /// A name under /dev/disk/by-path.
    pub by_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpConfig {
    Dhcp,
    Off,
    Static(StaticIp),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub device: Option<String>,
    pub dns: Vec<Ipv4Addr>,
}

/// One thing wrong with the command line, named by its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("kernel command line: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct CmdlineError(pub Vec<Problem>);
