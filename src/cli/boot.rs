//! What boots a machine into the deploy environment: initramfs build and media
//! build.

use super::exit::Exit;
use super::parse_image_ref;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use imprint::format::signature;
use imprint::host::initramfs;
use imprint::source::CaRoots;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum MediaCommand {
    /// Write a bootable medium (USB stick image, or hybrid ISO) that deploys
    /// from the repository it carries, with no network.
    Build(MediaBuildArgs),
}

#[derive(Args)]
pub struct MediaBuildArgs {
    /// The image file to write (a raw disk image; with --iso an ISO 9660 image).
    #[arg(long)]
    out: PathBuf,
    /// The repository the images are taken from.
    #[arg(long)]
    repo: PathBuf,
    /// An image to carry, NAME:TAG or sha256:<hex> (repeatable; the first is
    /// deployed by default, the others are boot menu entries).
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// A hybrid ISO for virtual CD/DVD media, which boots from a stick too.
    #[arg(long)]
    iso: bool,
    /// The medium's file system label, which the deploy finds it by.
    #[arg(long, default_value = imprint::format::cmdline::DEFAULT_MEDIA_LABEL)]
    label: String,
    /// Extra kernel command-line argument for every entry (repeatable), e.g.
    /// imprint.disk=/dev/sda or imprint.handoff=poweroff.
    #[arg(long = "cmdline", value_name = "ARG", allow_hyphen_values = true)]
    cmdline: Vec<String>,
    /// Base64 ed25519 public key the images must be signed with (checked now
    /// and by the deploy).
    #[arg(long)]
    pubkey: Option<String>,
    /// Per-machine choices by MAC, in `imprint serve --hosts` format.
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// A network repository for chunks the medium lacks or holds damaged
    /// (none: the medium alone).
    #[arg(long, value_name = "URL")]
    network_repo: Option<String>,
    /// Seconds the boot menu waits, when there are several images.
    #[arg(long, default_value_t = 5)]
    menu_timeout: u32,
    /// The kernel (default: /boot/vmlinuz-RELEASE of the newest /lib/modules).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The deploy initramfs (default: one built now, as `imprint initramfs build`).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// CA certificates (PEM) for an https:// --network-repo, carried in the
    /// initramfs built now (default: this system's bundle).
    #[arg(long, value_name = "FILE", conflicts_with = "initramfs")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum InitramfsCommand {
    /// Write a zstd-compressed newc archive holding /init and kernel modules.
    Build(InitramfsBuildArgs),
}

#[derive(Args)]
pub struct InitramfsBuildArgs {
    #[arg(long)]
    out: PathBuf,
    /// Kernel release whose modules to take (from /lib/modules/RELEASE).
    #[arg(long, conflicts_with = "modules_dir")]
    kernel_release: Option<String>,
    /// Modules directory (default: the newest under /lib/modules).
    #[arg(long)]
    modules_dir: Option<PathBuf>,
    /// Extra module to carry (repeatable); the default set is always included.
    #[arg(long = "module")]
    modules: Vec<String>,
    /// The static imprint binary to run as /init (default: this program).
    #[arg(long)]
    init: Option<PathBuf>,
    /// CA certificates (PEM) that https:// repositories and status servers are
    /// checked against (default: $SSL_CERT_FILE or this system's bundle).
    #[arg(long, value_name = "FILE", conflicts_with = "no_ca")]
    ca: Option<PathBuf>,
    /// Carry no CA certificates: the deploy environment then refuses https://.
    #[arg(long)]
    no_ca: bool,
}

/// The CA bundle an initramfs carries: `--ca`, else the system's; its bytes and
/// what they hold.
pub(super) fn initramfs_ca(args: &InitramfsBuildArgs) -> Result<Option<(Vec<u8>, CaRoots)>> {
    if args.no_ca {
        return Ok(None);
    }
    let Some(path) = args.ca.clone().or_else(CaRoots::system_path) else {
        return Ok(None);
    };
    let (roots, pem) = CaRoots::load_pem(&path)?;
    Ok(Some((pem, roots)))
}

pub fn initramfs_build(args: &InitramfsBuildArgs) -> Result<Exit> {
    let out = &args.out;
    let modules_dir = match (&args.modules_dir, &args.kernel_release) {
        (Some(dir), _) => dir.clone(),
        (None, Some(release)) => Path::new("/lib/modules").join(release),
        (None, None) => initramfs::newest_modules_dir(Path::new("/lib/modules"))?,
    };
    let init = match &args.init {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding this program's path")?,
    };
    let modules: Vec<String> = initramfs::DEFAULT_MODULES
        .iter()
        .map(|s| s.to_string())
        .chain(args.modules.iter().cloned())
        .collect();
    let ca = initramfs_ca(args)?;
    let report = initramfs::build(&initramfs::BuildOptions {
        init: init.clone(),
        modules_dir: modules_dir.clone(),
        modules,
        level: 19,
        ca: ca.as_ref().map(|(pem, _)| pem.clone()),
    })
    .with_context(|| format!("building an initramfs from {}", modules_dir.display()))?;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &report.compressed)
        .and_then(|()| std::fs::rename(&tmp, out))
        .with_context(|| format!("writing {}", out.display()))?;
    let init_size = std::fs::metadata(&init).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {}: {} bytes (zstd; {} bytes uncompressed), kernel {}, /init {} bytes, {} modules",
        out.display(),
        report.compressed.len(),
        report.cpio_bytes,
        report.kernel_release,
        init_size,
        report.modules.len()
    );
    if !report.builtin.is_empty() {
        println!("built into the kernel: {}", report.builtin.join(" "));
    }
    match &ca {
        Some((pem, roots)) => println!(
            "CA certificates for https: {} from {} ({} bytes)",
            roots.len(),
            roots.origin(),
            pem.len()
        ),
        None => println!("CA certificates for https: none (https:// repositories are refused)"),
    }
    Ok(Exit::Success)
}

pub fn media_build(args: &MediaBuildArgs) -> Result<Exit> {
    use imprint::host::media;
    let images = args
        .images
        .iter()
        .map(|i| parse_image_ref(i))
        .collect::<Result<Vec<_>>>()?;
    let pubkey = args
        .pubkey
        .as_deref()
        .map(|k| signature::parse_public_key(k).map(|key| (k.to_string(), key)))
        .transpose()?;
    if let Some(url) = &args.network_repo
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("--network-repo {url:?} must be an http:// or https:// URL");
    }
    let release_dir = initramfs::newest_modules_dir(Path::new("/lib/modules"))?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => {
            let release = release_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Path::new("/boot").join(format!("vmlinuz-{release}"))
        }
    };
    if !kernel.is_file() {
        bail!(
            "no kernel at {}; give --kernel FILE (Debian's linux-image-amd64 installs one)",
            kernel.display()
        );
    }
    // Built next to the output, removed once the medium holds it.
    let built = args.out.with_extension("initramfs.tmp");
    let initramfs = match &args.initramfs {
        Some(i) => i.clone(),
        None => {
            initramfs_build(&InitramfsBuildArgs {
                out: built.clone(),
                kernel_release: None,
                modules_dir: Some(release_dir.clone()),
                modules: Vec::new(),
                init: None,
                ca: args.ca.clone(),
                no_ca: false,
            })?;
            built.clone()
        }
    };
    let result = media::build(&media::Options {
        out: args.out.clone(),
        repo: args.repo.clone(),
        images,
        iso: args.iso,
        label: args.label.clone(),
        kernel,
        initramfs,
        cmdline: args.cmdline.clone(),
        pubkey,
        hosts: args.hosts.clone(),
        network_repo: args.network_repo.clone(),
        menu_timeout: args.menu_timeout,
    });
    if args.initramfs.is_none() {
        let _ = std::fs::remove_file(&built);
    }
    let report = result.with_context(|| format!("building the medium {}", args.out.display()))?;
    for (i, (name, digest)) in report.images.iter().enumerate() {
        let default = if i == 0 { " (default)" } else { "" };
        println!("image {}: {name} {digest}{default}", args.images[i]);
    }
    println!(
        "wrote {}: {} bytes ({}), label {}, {} chunks ({} bytes) in its repository",
        args.out.display(),
        report.size,
        if args.iso {
            "hybrid ISO 9660: CD/DVD or USB stick"
        } else {
            "USB stick image"
        },
        args.label,
        report.chunks,
        report.chunk_bytes
    );
    Ok(Exit::Success)
}
