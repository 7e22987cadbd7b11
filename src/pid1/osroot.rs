//! Finding and mounting an installed OS's root on a disk: by a fixed rule
//! (partitions of the Discoverable Partitions x86-64 root type first, then
//! Linux file system partitions, in table order; the first that mounts and
//! holds an `os-release`), read-only, read-write, or without replaying its
//! journal for a previous disk that must not be written.

use super::disks;
use super::drivers;
use crate::footprint::OWN_AGENT_PATHS;
use crate::format::dps::{LINUX_DATA, ROOT_X86_64};
use crate::format::fstype;
use crate::format::gpt::{Guid, Layout, Partition};
use crate::migrate;
use crate::statepart::StateDisk;
use crate::sys::{self, Root};
use anyhow::{Context, Result, anyhow};
use std::path::Path;

/// The partitions that may hold the root, in the order they are tried.
pub(super) fn root_candidates(layout: &Layout) -> Vec<&Partition> {
    let of_type = |t: Guid| layout.partitions.iter().filter(move |p| p.type_guid == t);
    of_type(ROOT_X86_64).chain(of_type(LINUX_DATA)).collect()
}

/// A root file system mounted for a while; unmounted when dropped.
pub(super) struct Mounted {
    pub device: String,
    pub number: u32,
    pub at: &'static str,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = sys::unmount(self.at) {
            log::warn!("unmounting {}: {e}", self.device);
        }
    }
}

/// How [`mount_root`] mounts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum MountAs {
    /// Read-only; a journal is replayed as the OS's own mount would.
    ReadOnly,
    /// Read-only and the device never written: no journal replay.
    Untouched,
}

/// Mounts, read-only at `at`, the root file system of the OS whose partition
/// table is `layout`, by the rule in the module's doc; `partition` names a
/// partition's device node. Says why when there is none.
pub(super) fn mount_root(
    layout: &Layout,
    partition: &dyn Fn(u32) -> Result<String, String>,
    at: &'static str,
    how: MountAs,
) -> Result<Mounted, String> {
    let candidates = root_candidates(layout);
    if candidates.is_empty() {
        return Err("no Linux root partition in the partition table".into());
    }
    drivers::load_filesystems();
    let _ = std::fs::create_dir_all(at);
    let mut seen = Vec::new();
    for p in candidates {
        let device = match partition(p.number) {
            Ok(d) => d,
            Err(e) => {
                seen.push(e);
                continue;
            }
        };
        let mounted = match how {
            MountAs::ReadOnly => sys::mount(&device, at, "ext4", true),
            MountAs::Untouched => sys::mount_ext4_untouched(&device, at),
        };
        if let Err(e) = mounted {
            seen.push(match content_of(&device) {
                Some(kind) if kind != "ext2/3/4" => {
                    format!("{device} holds {kind}; the deploy environment reads ext4 roots only")
                }
                _ => format!("{device}: not mountable as ext4 ({e})"),
            });
            continue;
        }
        let mounted = Mounted {
            device,
            number: p.number,
            at,
        };
        let is_root = Root::open(Path::new(at)).is_ok_and(|root| {
            ["etc/os-release", "usr/lib/os-release"]
                .iter()
                .chain(OWN_AGENT_PATHS)
                .any(|p| root.exists(p))
        });
        if is_root {
            return Ok(mounted);
        }
        seen.push(format!("{}: no os-release", mounted.device));
    }
    Err(format!("no root file system found ({})", seen.join("; ")))
}

/// What a partition holds, by its signature, for the report.
pub(super) fn content_of(device: &str) -> Option<&'static str> {
    use std::io::Read;
    let mut head = Vec::with_capacity(fstype::HEAD_LEN);
    std::fs::File::open(device)
        .and_then(|f| f.take(fstype::HEAD_LEN as u64).read_to_end(&mut head))
        .ok()?;
    fstype::identify(&head)
}

pub(super) const PREVIOUS_MOUNT_POINT: &str = "/run/imprint/previous";

/// Upgrades, when the previous OS left no configuration bundle (the agent this
/// environment installs captures one at every shutdown; an OS with its own
/// agent runs `imprint prepare-upgrade`): captures it from the previous OS's
/// root, as its own migration list names it, into its state partition, for
/// the new OS's agent to migrate. The root is mounted without replaying its
/// journal, so the previous disk's file systems are not written; what only its
/// journal held is not seen. Returns the root's device and the number of
/// entries.
pub(super) fn capture_previous(previous: &StateDisk) -> Result<(String, usize)> {
    let mounted = mount_root(
        &previous.layout,
        &|n| Ok(disks::partition_path(&previous.device, n)),
        PREVIOUS_MOUNT_POINT,
        MountAs::Untouched,
    )
    .map_err(|why| anyhow!("{why}"))?;
    let root = Root::open(Path::new(PREVIOUS_MOUNT_POINT))
        .with_context(|| format!("opening the root on {}", mounted.device))?;
    let (entries, _) = migrate::capture_into(&root, previous)
        .with_context(|| format!("capturing from {}", mounted.device))?;
    drop(root);
    Ok((mounted.device.clone(), entries))
}
