//! `imprint initramfs build`: the deploy environment's RAM disk.
//!
//! It holds the static `imprint` binary as `/init` (and as `/sbin/modprobe`, so the
//! kernel's own module requests for crypto, file systems and code pages are served
//! by the same binary), the kernel modules for common hardware with everything they
//! depend on, and the matching slices of `modules.dep`, `modules.alias` and
//! `modules.builtin`. The archive is deterministic and zstd-compressed.

use crate::format::cpio::{Archive, CpioError};
use crate::format::kmod::{ModuleIndex, module_name};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

/// Drivers for the hardware a deploy meets: virtual machines, SATA/NVMe servers,
/// USB media, common NICs; and the file systems of boot media and installed OSes.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "ahci",
    "ata_piix",
    "nvme",
    "sd_mod",
    "sr_mod",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "ext4",
    "crc32c_generic",
    "isofs",
    "efivarfs",
];

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{0} is dynamically linked; /init must be a static binary (a build with the project's .cargo/config.toml, e.g. `cargo install --path .`, is one)"
    )]
    NotStatic(PathBuf),
    #[error("{0} is not an x86_64 ELF executable")]
    NotElf(PathBuf),
    #[error(
        "no kernel modules directory under /lib/modules; pass --modules-dir or --kernel-release"
    )]
    NoModules,
    #[error("module {0} is neither in modules.dep nor built into the kernel; check the name")]
    UnknownModule(String),
    #[error(transparent)]
    Cpio(#[from] CpioError),
}

pub struct BuildOptions {
    pub init: PathBuf,
    pub modules_dir: PathBuf,
    pub modules: Vec<String>,
    pub level: i32,
    /// CA certificates (PEM, checked) for HTTPS repositories, carried as
    /// `/etc/imprint/ca.pem`.
    pub ca: Option<Vec<u8>>,
}

pub struct BuildReport {
    pub kernel_release: String,
    pub modules: Vec<String>,
    pub builtin: Vec<String>,
    pub cpio_bytes: u64,
    pub compressed: Vec<u8>,
}

/// The newest release under `/lib/modules` (by version order of the name).
pub fn newest_modules_dir(root: &Path) -> Result<PathBuf, InitramfsError> {
    let mut releases: Vec<String> = std::fs::read_dir(root)
        .map_err(|_| InitramfsError::NoModules)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("modules.dep").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    releases.sort_by_key(|r| version_key(r));
    releases
        .pop()
        .map(|r| root.join(r))
        .ok_or(InitramfsError::NoModules)
}

/// Numeric parts of a kernel release, so that the newest sorts last (as `sort -V`).
pub fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

/// True when the ELF file has no program interpreter (PT_INTERP), i.e. it runs
/// without a dynamic loader.
pub fn is_static_elf(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let le16 = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().ok()?) as usize;
    let (phentsize, phnum) = (le16(54), le16(56));
    if le16(18) != 62 {
        return None; // not x86_64
    }
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let kind = bytes.get(at..at + 4)?;
        if u32::from_le_bytes(kind.try_into().ok()?) == 3 {
            return Some(false);
        }
    }
    Some(true)
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport, InitramfsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| InitramfsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let read_text = |path: &Path| -> Result<String, InitramfsError> {
        Ok(String::from_utf8_lossy(&read(path)?).into_owned())
    };
    let init = read(&opts.init)?;
    match is_static_elf(&init) {
        None => return Err(InitramfsError::NotElf(opts.init.clone())),
        Some(false) => return Err(InitramfsError::NotStatic(opts.init.clone())),
        Some(true) => {}
    }
    let dir = &opts.modules_dir;
    let release = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let index = ModuleIndex::parse(
        &read_text(&dir.join("modules.dep"))?,
        &read_text(&dir.join("modules.alias"))?,
    );
    let builtin_text = read_text(&dir.join("modules.builtin")).unwrap_or_default();
    let builtin_all: BTreeSet<String> = builtin_text.lines().map(module_name).collect();

    let wanted: Vec<String> = opts.modules.iter().map(|m| m.replace('-', "_")).collect();
    let (order, missing) = index.load_order(wanted.iter().map(String::as_str));
    let mut builtin = Vec::new();
    for name in missing {
        if builtin_all.contains(&name) {
            builtin.push(name);
        } else {
            return Err(InitramfsError::UnknownModule(name));
        }
    }
    let keep: BTreeSet<String> = order.iter().cloned().collect();

    let mut archive = Archive::new();
    archive.add_file("init", 0o755, init)?;
    archive.add_symlink("sbin/modprobe", "/init")?;
    // The kernel opens /dev/console for init before anything is mounted.
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    for d in ["proc", "sys", "run", "tmp", "mnt"] {
        archive.add_dir(d, 0o755)?;
    }
    if let Some(pem) = &opts.ca {
        archive.add_file(
            crate::source::INITRAMFS_CA_FILE.trim_start_matches('/'),
            0o644,
            pem.clone(),
        )?;
    }
    let base = format!("lib/modules/{release}");
    for name in &order {
        if let Some(rel) = index.path_of(name) {
            archive.add_file(&format!("{base}/{rel}"), 0o644, read(&dir.join(rel))?)?;
        }
    }
    archive.add_file(
        &format!("{base}/modules.dep"),
        0o644,
        index.deps_for(&keep).into_bytes(),
    )?;
    archive.add_file(
        &format!("{base}/modules.alias"),
        0o644,
        index.aliases_for(&keep).into_bytes(),
    )?;
    archive.add_file(
        &format!("{base}/modules.builtin"),
        0o644,
        builtin_text.into_bytes(),
    )?;

    let mut cpio = Vec::new();
    let cpio_bytes = archive
        .write(&mut cpio)
        .map_err(|source| InitramfsError::Read {
            path: PathBuf::from("<archive>"),
            source,
        })?;
    let compressed =
        zstd::bulk::compress(&cpio, opts.level).map_err(|source| InitramfsError::Read {
            path: PathBuf::from("<zstd>"),
            source,
        })?;
    Ok(BuildReport {
        kernel_release: release,
        modules: order,
        builtin,
        cpio_bytes,
        compressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "5.10.0-30-amd64"];
        v.sort_by_key(|r| version_key(r));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64"]);
    }

    #[test]
    fn static_elf_detection() {
        let mut elf = vec![0u8; 64 + 56 * 2];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18] = 62;
        elf[32] = 64; // phoff
        elf[54] = 56; // phentsize
        elf[56] = 2; // phnum
        elf[64] = 1; // PT_LOAD
        elf[64 + 56] = 6; // PT_PHDR
        assert_eq!(is_static_elf(&elf), Some(true));
        elf[64 + 56] = 3; // PT_INTERP
        assert_eq!(is_static_elf(&elf), Some(false));
        assert_eq!(is_static_elf(b"#!/bin/sh\n"), None);
        elf[64 + 56] = 6;
        elf[56] = 200; // phnum past the end
        assert_eq!(is_static_elf(&elf), None);
    }
}
