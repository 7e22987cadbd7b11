//! `imprint media build`: a boot medium that deploys with no network. A raw disk
//! image for a USB stick (GPT, one FAT32 partition), or with `iso` a hybrid ISO
//! 9660 image for virtual CD/DVD media that boots from a stick too. Both carry
//! the kernel, the deploy initramfs, a command line naming the medium as the
//! repository (`imprint.repo=media:LABEL`), and a repository holding only the
//! refs, manifests, signatures and chunks the chosen images need.
//!
//! The boot loaders are Debian's, as its own installer media use them:
//! SYSLINUX (ISOLINUX on an ISO) for BIOS, GRUB for UEFI (syslinux.efi cannot
//! start from an El Torito image). The file systems are made by Debian's tools
//! (mkfs.vfat, mtools, sfdisk, xorriso), which this module runs.

use crate::engine::{self, Resolved};
use crate::format::cmdline::{DEFAULT_MEDIA_DIR, MediaId, RepoSource};
use crate::format::digest::{Digest, ImageRef};
use crate::format::manifest::ChunkKind;
use crate::format::repository::{chunk_path, manifest_path, ref_path, signature_path};
use crate::source::{DirSource, RetryPolicy};
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

mod images;
use images::{
    GPTMBR, GRUB_EFI_MODULES, ISOHDPFX, ISOLINUX_BIN, MENU_MODULES, Parts, SYSLINUX_MODULES,
    build_grub_efi, build_iso, build_raw, grub_cfg, run_with_env,
};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{tool} is missing; install Debian's {package} (`scripts/deps media`)")]
    MissingTool { tool: String, package: &'static str },
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        tool: String,
        status: String,
        output: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{image}: {source}")]
    Resolve {
        image: String,
        source: engine::DeployError,
    },
    #[error(
        "{path} is missing or damaged in the repository ({reason}); run `imprint repo check` and add the image again"
    )]
    Damaged { path: String, reason: String },
    #[error("label {0:?}: use 1 to 11 characters A-Z, 0-9 and _ (what both FAT and ISO 9660 keep)")]
    BadLabel(String),
    #[error("no image given: name at least one with --image")]
    NoImage,
    #[error("{path}: {problems}; fix the inventory")]
    Inventory { path: PathBuf, problems: String },
    #[error(
        "kernel command-line extra {0:?} is not an argument GRUB and SYSLINUX pass on as it is: give letters, digits and - . _ ~ : / ? = + , @ % * ( ) [ ] only (arguments apart by spaces)"
    )]
    BadArgument(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MediaError + '_ {
    move |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the medium is made of.
pub struct Options {
    pub out: PathBuf,
    pub repo: PathBuf,
    /// The images it carries; the first is the one deployed by default.
    pub images: Vec<ImageRef>,
    pub iso: bool,
    pub label: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Extra kernel command-line arguments for every entry.
    pub cmdline: Vec<String>,
    /// The manifests must be signed with this key; the deploy checks it too.
    pub pubkey: Option<(String, VerifyingKey)>,
    /// Per-machine choices (`imprint serve --hosts` format), by MAC.
    pub hosts: Option<PathBuf>,
    /// A network repository for what the medium lacks or holds damaged.
    pub network_repo: Option<String>,
    /// Seconds the boot menu waits when there are several images.
    pub menu_timeout: u32,
}

pub struct Report {
    pub images: Vec<(String, Digest)>,
    pub chunks: usize,
    pub chunk_bytes: u64,
    pub size: u64,
}

fn need_file(file: (&str, &'static str)) -> Result<(), MediaError> {
    if Path::new(file.0).exists() {
        Ok(())
    } else {
        Err(MediaError::MissingTool {
            tool: file.0.to_string(),
            package: file.1,
        })
    }
}

/// Runs a tool, turning a missing one into the package that brings it.
fn run(tool: &str, package: &'static str, args: &[&str]) -> Result<(), MediaError> {
    run_with_env(tool, package, args, &[])
}

/// A label both FAT (11 characters) and ISO 9660 keep as given.
pub fn check_label(label: &str) -> Result<(), MediaError> {
    let ok = !label.is_empty()
        && label.len() <= 11
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(MediaError::BadLabel(label.to_string()))
    }
}

/// One boot entry: a title and its kernel command line.
struct Entry {
    title: String,
    args: String,
}

/// The command line of every entry: the medium as the repository (then the
/// network one, if any), the image, the operator's extras.
fn entries(opts: &Options, images: &[(String, Digest)]) -> Vec<Entry> {
    let medium = RepoSource::Media {
        by: MediaId::Label(opts.label.clone()),
        dir: DEFAULT_MEDIA_DIR.to_string(),
    };
    let mut repo = medium.to_string();
    if let Some(url) = &opts.network_repo {
        repo.push(',');
        repo.push_str(url);
    }
    let mut common = format!("console=tty0 console=ttyS0,115200 panic=-1 imprint.repo={repo}");
    if let Some((text, _)) = &opts.pubkey {
        common.push_str(&format!(" imprint.pubkey={text}"));
    }
    for word in opts
        .cmdline
        .iter()
        .flat_map(|extra| extra.split_whitespace())
    {
        common.push(' ');
        common.push_str(word);
    }
    opts.images
        .iter()
        .zip(images)
        .map(|(image, (name, digest))| Entry {
            title: format!("imprint: deploy {image} ({name}, {})", &digest.hex()[..12]),
            args: format!("{common} imprint.image={image}"),
        })
        .collect()
}

/// A directory removed when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts `from` at `to` in the staging tree: a hard link where the file
/// systems allow it, a copy otherwise.
fn place(from: &Path, to: &Path) -> Result<u64, MediaError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    // A link to a link would carry the link (e.g. /vmlinuz) onto the medium.
    let from = &std::fs::canonicalize(from).map_err(io_err(from))?;
    let len = std::fs::metadata(from).map_err(io_err(from))?.len();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(io_err(from))?;
    }
    Ok(len)
}

fn write(to: &Path, content: &[u8]) -> Result<(), MediaError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::write(to, content).map_err(io_err(to))
}

/// The repository's files the images need, checked present and whole (by
/// size: the deploy verifies every byte), staged under `repo/`. The report
/// says all but the medium's size.
fn stage_repository(opts: &Options, more: &[ImageRef], stage: &Path) -> Result<Report, MediaError> {
    let source = DirSource::new(&opts.repo);
    let policy = RetryPolicy {
        attempts: 1,
        ..RetryPolicy::default()
    };
    let mut files: BTreeSet<String> = BTreeSet::new();
    let mut chunks: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut images = Vec::new();
    for (i, image) in opts.images.iter().chain(more).enumerate() {
        let resolved: Resolved = engine::resolve(
            &source,
            image,
            opts.pubkey.as_ref().map(|(_, k)| k),
            &policy,
        )
        .map_err(|source| MediaError::Resolve {
            image: image.to_string(),
            source,
        })?;
        if let ImageRef::Tag { name, tag } = image {
            files.insert(ref_path(name, tag));
        }
        files.insert(manifest_path(&resolved.digest));
        let sig = signature_path(&resolved.digest);
        if opts.repo.join(&sig).exists() {
            files.insert(sig);
        }
        for chunk in &resolved.manifest.chunks {
            if let ChunkKind::Data {
                sha256,
                stored_size,
                ..
            } = chunk.kind
            {
                chunks.insert((chunk_path(&sha256), stored_size));
            }
        }
        // The report names the boot entries' images.
        if i < opts.images.len() {
            images.push((resolved.manifest.name.clone(), resolved.digest));
        }
    }
    let repo = stage.join(DEFAULT_MEDIA_DIR);
    for f in &files {
        place(&opts.repo.join(f), &repo.join(f))?;
    }
    let mut bytes = 0;
    for (path, stored) in &chunks {
        let from = opts.repo.join(path);
        let len = std::fs::metadata(&from)
            .map_err(|e| MediaError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .len();
        if len != u64::from(*stored) {
            return Err(MediaError::Damaged {
                path: path.clone(),
                reason: format!("{len} bytes, the manifest says {stored}"),
            });
        }
        bytes += place(&from, &repo.join(path))?;
    }
    Ok(Report {
        images,
        chunks: chunks.len(),
        chunk_bytes: bytes,
        size: 0,
    })
}

/// The inventory for the medium, checked whole (a medium cannot be fixed once
/// it is in a machine), with the cloud-init files its entries name put where
/// the deploy reads them; returns the images its entries name.
fn stage_inventory(hosts: &Path, tree: &Path) -> Result<Vec<ImageRef>, MediaError> {
    use crate::format::inventory;
    use crate::format::provision::host_file;
    const LIMIT: u64 = 1 << 20;
    let len = std::fs::metadata(hosts).map_err(io_err(hosts))?.len();
    if len > LIMIT {
        return Err(MediaError::Inventory {
            path: hosts.to_path_buf(),
            problems: format!("{len} bytes, more than an inventory's {LIMIT}"),
        });
    }
    let text = std::fs::read_to_string(hosts).map_err(io_err(hosts))?;
    let bad = |problems: String| MediaError::Inventory {
        path: hosts.to_path_buf(),
        problems,
    };
    let (inventory, problems) = inventory::parse(&text).map_err(|p| bad(p.to_string()))?;
    if !problems.is_empty() {
        let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(bad(all.join("; ")));
    }
    let dir = hosts.parent().unwrap_or(Path::new("."));
    let repo = tree.join(DEFAULT_MEDIA_DIR);
    let mut images = Vec::new();
    images.extend(inventory.defaults.common.image.clone());
    for (mac, host) in &inventory.hosts {
        images.extend(host.common.image.clone());
        for (file, name) in [
            (&host.user_data, "user-data"),
            (&host.network_config, "network-config"),
        ] {
            if let Some(file) = file {
                place(&dir.join(file), &repo.join(host_file(*mac, name)))?;
            }
        }
    }
    place(hosts, &tree.join(crate::format::cmdline::MEDIA_INVENTORY))?;
    Ok(images)
}

/// Builds the medium `opts` describes at `opts.out`.
pub fn build(opts: &Options) -> Result<Report, MediaError> {
    check_label(&opts.label)?;
    if opts.images.is_empty() {
        return Err(MediaError::NoImage);
    }
    // Each goes into the boot loaders' configuration files on a kernel line.
    if let Some(bad) = opts
        .cmdline
        .iter()
        .flat_map(|extra| extra.split_whitespace())
        .chain(opts.network_repo.as_deref())
        .find(|a| !crate::format::ipxe::is_word(a))
    {
        return Err(MediaError::BadArgument(crate::format::http::printable(bad)));
    }
    need_file(GRUB_EFI_MODULES)?;
    if opts.iso {
        need_file(ISOLINUX_BIN)?;
        need_file(ISOHDPFX)?;
    } else {
        need_file(GPTMBR)?;
    }
    for m in MENU_MODULES {
        need_file((&format!("{SYSLINUX_MODULES}/{m}"), "syslinux-common"))?;
    }
    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stage = Staging(parent.join(format!(
        ".{}.imprint-media-{}",
        opts.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&stage.0);
    let tree = stage.0.join("tree");
    std::fs::create_dir_all(&tree).map_err(io_err(&tree))?;

    let more = match &opts.hosts {
        Some(hosts) => stage_inventory(hosts, &tree)?,
        None => Vec::new(),
    };
    let mut report = stage_repository(opts, &more, &tree)?;
    let images = report.images.clone();
    place(&opts.kernel, &tree.join("boot/vmlinuz"))?;
    place(&opts.initramfs, &tree.join("boot/initramfs.img"))?;
    let entries = entries(opts, &images);
    write(
        &tree.join("boot/grub/grub.cfg"),
        grub_cfg(&entries, opts.menu_timeout).as_bytes(),
    )?;
    // GRUB for UEFI finds this medium's file system by a file only it has.
    let id = medium_id(&images);
    let marker = format!("/imprint/medium-{id}");
    write(&tree.join(marker.trim_start_matches('/')), b"")?;
    let described = serde_json::json!({
        "label": opts.label,
        "images": images.iter().zip(&opts.images).map(|((name, digest), r)| serde_json::json!({
            "ref": r.to_string(), "name": name, "digest": digest.to_string()
        })).collect::<Vec<_>>(),
        "network_repo": opts.network_repo,
    });
    write(
        &tree.join("imprint/medium.json"),
        serde_json::to_string_pretty(&described)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let grub_efi = stage.0.join("bootx64.efi");
    build_grub_efi(&stage.0, &grub_efi, &marker)?;

    let tmp = stage.0.join("medium");
    let parts = Parts {
        opts,
        stage: &stage.0,
        tree: &tree,
        entries: &entries,
        grub_efi: &grub_efi,
        out: &tmp,
    };
    if opts.iso {
        build_iso(&parts)?;
    } else {
        build_raw(&parts)?;
    }
    std::fs::rename(&tmp, &opts.out).map_err(io_err(&opts.out))?;
    report.size = std::fs::metadata(&opts.out)
        .map_err(io_err(&opts.out))?
        .len();
    Ok(report)
}

/// A name for this medium's marker: from what it holds and when it was made.
fn medium_id(images: &[(String, Digest)]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for (_, d) in images {
        h.update(d.hex().as_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::images::{grub_cfg, syslinux_cfg};
    use super::*;

    fn options(images: &[&str], network: Option<&str>) -> Options {
        Options {
            out: PathBuf::from("m.img"),
            repo: PathBuf::from("repo"),
            images: images.iter().map(|i| i.parse().unwrap()).collect(),
            iso: false,
            label: "USB_7".into(),
            kernel: PathBuf::from("vmlinuz"),
            initramfs: PathBuf::from("initramfs.img"),
            cmdline: vec!["imprint.disk=/dev/sda".into()],
            pubkey: None,
            hosts: None,
            network_repo: network.map(String::from),
            menu_timeout: 3,
        }
    }

    fn digest(b: u8) -> Digest {
        Digest::of(&[b])
    }

    /// What would mean something to GRUB or SYSLINUX on a kernel line is
    /// refused before anything is built.
    #[test]
    fn extras_that_are_not_one_plain_argument_are_refused() {
        for bad in ["a;b", "x$y", "{braces}", "ok a\"b", "--", "#c"] {
            let mut opts = options(&["web:v3"], None);
            opts.cmdline.push(bad.into());
            assert!(
                matches!(build(&opts), Err(MediaError::BadArgument(_))),
                "{bad}"
            );
        }
        let opts = options(&["web:v3"], Some("http://mirror/repo;reboot"));
        assert!(matches!(build(&opts), Err(MediaError::BadArgument(_))));
    }

    #[test]
    fn every_entry_names_the_medium_then_the_network_and_its_image() {
        let opts = options(&["web:v3", "db:v1"], Some("https://mirror.example/repo"));
        let images = [
            ("web".to_string(), digest(1)),
            ("db".to_string(), digest(2)),
        ];
        let e = entries(&opts, &images);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0].args,
            "console=tty0 console=ttyS0,115200 panic=-1 \
             imprint.repo=media:USB_7,https://mirror.example/repo imprint.disk=/dev/sda imprint.image=web:v3"
        );
        assert!(e[1].args.ends_with(" imprint.image=db:v1"), "{}", e[1].args);
        assert!(e[0].title.starts_with("imprint: deploy web:v3 (web, "));

        // Several images: a menu that waits; the first is the default.
        let syslinux = syslinux_cfg(&e, opts.menu_timeout);
        assert!(syslinux.contains("UI menu.c32\n"), "{syslinux}");
        assert!(
            syslinux.contains("TIMEOUT 30\nDEFAULT entry0\n"),
            "{syslinux}"
        );
        assert!(syslinux.contains(&format!("  APPEND {}\n", e[1].args)));
        let grub = grub_cfg(&e, opts.menu_timeout);
        assert!(grub.contains("set default=0\nset timeout=3\n"), "{grub}");
        assert_eq!(grub.matches("menuentry '").count(), 2);
        assert!(grub.contains(&format!("  linux /boot/vmlinuz {}\n", e[0].args)));

        // One image: straight to it.
        let one = entries(&options(&["web:v3"], None), &images[..1]);
        assert!(
            one[0].args.contains(" imprint.repo=media:USB_7 "),
            "{}",
            one[0].args
        );
        assert!(syslinux_cfg(&one, 3).contains("PROMPT 0\nTIMEOUT 0\n"));
        assert!(grub_cfg(&one, 3).contains("set timeout=0\n"));
    }

    #[test]
    fn labels_are_what_fat_and_iso_keep() {
        for good in ["IMPRINT", "A", "MEDIA_2026"] {
            assert!(check_label(good).is_ok(), "{good}");
        }
        for bad in ["", "imprint", "TWELVE_CHARS", "A B", "A-B", "É"] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }
}
