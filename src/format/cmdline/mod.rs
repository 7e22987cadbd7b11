//! The kernel command line of the deploy environment, parsed into a typed config.
//!
//! Every `imprint.` key is known by name; an unknown key or a malformed value is a
//! problem reported by that name, and all problems are reported together so an
//! operator fixes the boot entry once. Nothing here touches a device.

mod config;
mod parse;
mod values;

pub use config::{
    CmdlineError, Config, DEFAULT_JOBS, DEFAULT_MEDIA_DIR, DEFAULT_MEDIA_LABEL, DiskHints,
    DiskSelector, ErrorPolicy, Handoff, IpConfig, MAX_CREDENTIAL, MEDIA_INVENTORY, MediaId, Mode,
    Problem, RepoSource, Secret, StaticIp,
};
pub use parse::{error_policy, parse, split};
pub(crate) use values::parse_hostname;
pub use values::parse_size;

#[cfg(test)]
mod tests;
