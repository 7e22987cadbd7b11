//! The inventory of `imprint serve --hosts FILE`: what each machine, known by the
//! MAC address it network-boots with, is to run. TOML, edited by hand:
//!
//! ```toml
//! [default]                    # machines not listed below
//! action = "register"          # boot them local and list them (or "deploy")
//! image = "web:v2"             # what "deploy" deploys
//!
//! [hosts."52:54:00:12:34:56"]
//! hostname = "node-1"
//! image = "web:v2"             # or a pinned sha256:… manifest digest
//! settings = { disk = "/dev/vda", handoff = "kexec" }   # imprint.KEY=VALUE
//! cmdline = ["console=ttyS0,115200"]                    # more kernel arguments
//! user-data = "node-1.user-data"     # cloud-init files, next to the inventory
//! network-config = "node-1.network"
//! local-boot = "sanboot"       # exit | sanboot | sanboot:0x81 | chain:URL
//! reprovision = 1              # each new value deploys the machine once more
//!
//! [hosts."52:54:00:ab:cd:ef"]
//! capture = "golden:1"         # read its disk into the repository instead
//! ```
//!
//! A file that is not TOML is rejected whole (the server keeps the inventory it
//! had). An entry that is wrong is reported by its name and line and left out;
//! the others work. Everything here ends up on a kernel command line inside an
//! iPXE script, so values are kept to characters that cannot break out of it
//! ([`super::ipxe::is_word`]).

mod fields;
mod parse;
mod values;

pub use parse::parse;
pub use values::{LocalBoot, Mac};

use crate::format::digest::ImageRef;
use std::collections::BTreeMap;

/// What happens to a machine the inventory does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultAction {
    /// It boots its own disk and is listed, for the operator to add.
    Register,
    /// It gets the default image.
    Deploy,
}

/// What is common to a listed machine and the default for unlisted ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Common {
    pub image: Option<ImageRef>,
    /// `imprint.KEY=VALUE` for the deploy environment (KEY without its prefix;
    /// an empty VALUE stands for a bare flag).
    pub settings: BTreeMap<String, String>,
    /// More kernel arguments.
    pub cmdline: Vec<String>,
    pub local_boot: Option<LocalBoot>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub mac: Mac,
    /// Where the entry starts in the file (1-based), for messages.
    pub line: usize,
    pub hostname: Option<String>,
    pub common: Common,
    /// cloud-init files, by name relative to the inventory's directory.
    pub user_data: Option<String>,
    pub network_config: Option<String>,
    /// A value the operator changes to deploy the machine once more.
    pub reprovision: Option<String>,
    /// The image (always NAME:TAG) its disk is captured as, instead of a
    /// deploy: its credential may upload that one image to the server.
    pub capture: Option<ImageRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub action: DefaultAction,
    pub common: Common,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            action: DefaultAction::Register,
            common: Common::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub defaults: Defaults,
    pub hosts: BTreeMap<Mac, Host>,
}

/// Something wrong in the file, by line and entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {entry}: {message}")]
pub struct Problem {
    pub line: usize,
    /// `hosts."52:54:00:12:34:56"`, `default`, or `file`.
    pub entry: String,
    pub message: String,
}
