//! The files of a fleet: the inventory it reads, and the one it keeps for
//! each machine under the data directory.

use super::{Fleet, FleetError, MAX_INVENTORY, MAX_MACHINE_FILE};
use crate::format::http::printable;
use crate::format::inventory::{self, Mac};
use crate::format::provision::Machine;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::SystemTime;

/// A machine's file name: its MAC with hyphens.
fn file_stem(mac: Mac) -> String {
    mac.to_string().replace(':', "-")
}

impl Fleet {
    /// Writes machine `mac`'s file: a temporary file, synced, renamed over the
    /// old one, and the directory synced, so a crash leaves the old or the new.
    pub(super) fn store(&self, mac: Mac, m: &Machine) {
        let dir = self.opts.data.join("machines");
        let path = dir.join(format!("{}.json", file_stem(mac)));
        let tmp = dir.join(format!(".{}.json.tmp", file_stem(mac)));
        let result = (|| -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(m).map_err(io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if let Err(e) = result {
            log::warn!(
                "writing {}: {e}; the server's memory of {mac} is not on disk",
                path.display()
            );
        }
    }
}

pub(super) fn inventory_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

pub(super) fn read_inventory(
    path: &Path,
) -> Result<(String, Option<(u64, SystemTime)>), FleetError> {
    let stamp = inventory_stamp(path);
    let file = std::fs::File::open(path).map_err(|source| FleetError::ReadInventory {
        path: path.to_path_buf(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_INVENTORY + 1)
        .read_to_string(&mut text)
        .map_err(|source| FleetError::ReadInventory {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > MAX_INVENTORY {
        return Err(FleetError::InventoryTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok((text, stamp))
}

pub(super) fn read_machine(path: &Path) -> io::Result<Machine> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_MACHINE_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MACHINE_FILE {
        return Err(io::Error::other("larger than a machine's record can be"));
    }
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

pub(super) fn report(path: &Path, problems: &[inventory::Problem]) {
    for p in problems {
        log::warn!(
            "inventory {}, {}",
            path.display(),
            printable(&p.to_string())
        );
    }
}
