//! Commands run on a host: image add/ls/inspect, repo check, keygen, serve,
//! deploy, disk verify and initramfs build.

use super::exit::Exit;
use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Subcommand};
use imprint::engine::{self, DeployError, DeployOptions, DiskTarget, Progress, Trust};
use imprint::format::digest::ImageRef;
use imprint::format::http::printable;
use imprint::format::manifest::{self, BootFacts, ChunkKind, Firmware, Manifest};
use imprint::format::signature;
use imprint::host::initramfs;
use imprint::host::repo::{self, AddOptions, LocalRepo};
use imprint::source::{CaRoots, DirSource, HttpSource, Proxy, RetryPolicy, Source, SystemResolver};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Chunk, compress and store a raw disk image.
    Add(ImageAddArgs),
    /// List the tags in a repository.
    Ls(ImageLsArgs),
    /// Show what a manifest says.
    Inspect(ImageInspectArgs),
    /// Sign a tag's manifest as that release (or sign it again in the current
    /// format), keeping other signers' signatures.
    Sign(ImageSignArgs),
}

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Check that every chunk every manifest references is present and intact.
    Check(RepoCheckArgs),
}

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Exit 0 only if the disk holds exactly the image's bytes.
    Verify(DiskVerifyArgs),
}

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
pub struct ImageSignArgs {
    #[arg(long)]
    repo: PathBuf,
    /// NAME:TAG whose manifest to sign.
    reference: String,
    /// Secret key file (from `imprint keygen`).
    #[arg(long)]
    sign_key: PathBuf,
    /// When the release is issued, in Unix seconds (default: now).
    #[arg(long)]
    issued: Option<u64>,
    /// When the release expires: a span after it is issued (90d, 12h, 2w),
    /// a UTC date (2027-01-31) or Unix seconds. Deploy environments refuse
    /// it after that, by their clock. Default: it does not expire.
    #[arg(long)]
    expires: Option<String>,
}

#[derive(Args)]
pub struct ImageAddArgs {
    #[arg(long)]
    repo: PathBuf,
    /// NAME:TAG to record the image under.
    reference: String,
    /// Raw disk image file.
    image: PathBuf,
    /// Chunk size: a power of two from 64K to 64M (suffixes K, M).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    chunk_size: u64,
    /// zstd compression level.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Secret key file (from `imprint keygen`) to sign the manifest with.
    #[arg(long)]
    sign_key: Option<PathBuf>,
    /// When the signed release is issued, in Unix seconds (default: now).
    /// Deploy environments refuse to go back to an earlier one.
    #[arg(long, requires = "sign_key")]
    issued: Option<u64>,
    /// When the signed release expires: a span after it is issued (90d, 12h,
    /// 2w), a UTC date (2027-01-31) or Unix seconds. Deploy environments
    /// refuse it after that, by their clock. Default: it does not expire.
    #[arg(long, requires = "sign_key")]
    expires: Option<String>,
    /// Architecture the image needs (uname -m style).
    #[arg(long)]
    arch: Option<String>,
    /// For kexec hand-off: GPT partition number holding the kernel and initrd.
    #[arg(long, requires = "kernel")]
    boot_partition: Option<u32>,
    /// For kexec hand-off: kernel path inside that partition.
    #[arg(long, requires = "boot_partition")]
    kernel: Option<String>,
    /// For kexec hand-off: initrd path inside that partition.
    #[arg(long, requires = "boot_partition")]
    initrd: Option<String>,
    /// For kexec hand-off: the installed kernel's command line.
    #[arg(long, requires = "boot_partition", default_value = "")]
    cmdline: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
}

impl ImageAddArgs {
    fn boot_facts(&self) -> Option<BootFacts> {
        let (Some(partition), Some(kernel)) = (self.boot_partition, &self.kernel) else {
            return None;
        };
        Some(BootFacts {
            partition,
            kernel: kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
        })
    }
}

#[derive(Args)]
pub struct ImageLsArgs {
    #[arg(long)]
    repo: PathBuf,
}

#[derive(Args)]
pub struct ImageInspectArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// NAME:TAG or sha256:<hex>.
    reference: String,
    #[arg(long)]
    json: bool,
    /// Public key (base64) the manifest must be signed with.
    #[arg(long)]
    pubkey: Option<String>,
}

#[derive(Args)]
pub struct RepoCheckArgs {
    #[arg(long)]
    repo: PathBuf,
    #[arg(long)]
    jobs: Option<usize>,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Secret key file to create (mode 0600); the public key goes to FILE.pub.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long)]
    repo: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Connections open at once (one thread each); more are refused with 503.
    /// Default: 1024, or fewer when the open-file limit is lower.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Seconds a client has to send a request head.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a kept-alive connection may sit idle between requests.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// Seconds a body read or a response write may stall.
    #[arg(long, default_value_t = 30)]
    io_timeout: u64,
    /// Connections one client address may have open at once (a cache in
    /// front of the server may need more). Default: a quarter of
    /// --max-connections, and at least 64 (a deploy's most).
    #[arg(long)]
    max_connections_per_client: Option<usize>,
    /// Status events of deploy environments this server did not boot (static
    /// boot scripts, media) must carry this token (`Authorization: Bearer
    /// TOKEN`, or `?token=TOKEN` in their imprint.status= URL). Without it, a
    /// name takes events only from the address that first reported it, until
    /// it has been quiet for 10 minutes. Machines this server boots report
    /// with a credential of their own deploy instead.
    #[arg(long, env = "IMPRINT_STATUS_TOKEN")]
    status_token: Option<String>,
    /// A file holding the operator's token (one line, 16 characters or more):
    /// needed for actions (reprovision) and to see what machines reported.
    /// Default with --hosts: DATA/operator-token, made on the first start.
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// What clients without the operator's token see on the page, /machines
    /// and /status: `counts` (how many machines in each phase, and each one's
    /// phase and progress, without names, addresses, images or errors),
    /// `none`, or `full` (everything: for networks where every client is
    /// trusted).
    #[arg(long, default_value = "counts")]
    public_view: imprint::host::serve::PublicView,
    /// Machines the status table keeps (the least recently heard go first).
    #[arg(long, default_value_t = 4096)]
    status_machines: usize,
    /// Inventory (TOML): what each machine, by MAC, deploys. With it, the server
    /// answers /boot.ipxe for network-booting machines and remembers them.
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Where the server remembers each machine (with --hosts).
    #[arg(long, default_value = "/var/lib/imprint/serve")]
    data: PathBuf,
    /// The deploy environment's kernel, served as /boot/vmlinuz.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The deploy environment's initramfs (`imprint initramfs build`), served as
    /// /boot/initramfs.img.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Deploys a machine may fail in a row before its boot script holds it.
    #[arg(long, default_value_t = imprint::format::provision::DEFAULT_ATTEMPTS)]
    attempts: u32,
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Send a machine through the deploy again on its next network boot (and
    /// lift a hold after failed deploys).
    Reprovision(ReprovisionArgs),
}

#[derive(Args)]
pub struct ReprovisionArgs {
    /// The machine's MAC address.
    mac: String,
    /// The `imprint serve --hosts` server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's operator token.
    #[arg(long, env = "IMPRINT_OPERATOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the operator token (the server's --operator-token-file,
    /// or DATA/operator-token). Default: /var/lib/imprint/serve/operator-token,
    /// where a server on this host with the default --data keeps it.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Where `imprint serve --hosts` with the default --data keeps its operator
/// token.
const DEFAULT_TOKEN_FILE: &str = "/var/lib/imprint/serve/operator-token";

pub fn reprovision(args: &ReprovisionArgs) -> Result<Exit> {
    let mac: imprint::format::inventory::Mac = args
        .mac
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{e}"))?;
    let url = format!(
        "{}/machines/{}/reprovision",
        args.server.trim_end_matches('/'),
        mac.to_string().replace(':', "-")
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let token = match (args.token.as_deref().filter(|t| !t.is_empty()), &args.token_file) {
        (Some(token), _) => token.to_string(),
        (None, Some(file)) => imprint::host::access::read_token(file)?,
        (None, None) => imprint::host::access::read_token(Path::new(DEFAULT_TOKEN_FILE))
            .with_context(|| {
                "the operator's token: give --token-file FILE (the server's --operator-token-file, or DATA/operator-token) or set IMPRINT_OPERATOR_TOKEN"
            })?,
    };
    let request = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"));
    let mut response = request.send_empty().with_context(|| {
        format!(
            "asking {} to reprovision {mac}; is imprint serve running there?",
            args.server
        )
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let text = imprint::format::http::printable(text.trim());
    if status != 200 {
        bail!("{} answered {status}: {text}", args.server);
    }
    println!("{text}");
    Ok(Exit::Success)
}

#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// NAME:TAG or sha256:<hex> (a digest pins the manifest).
    #[arg(long)]
    image: String,
    /// Block device or file to write.
    #[arg(long)]
    disk: PathBuf,
    /// Chunks fetched and written in parallel.
    #[arg(long, default_value_t = imprint::format::cmdline::DEFAULT_JOBS)]
    jobs: usize,
    /// Public key (base64) the manifest must be signed with.
    #[arg(long)]
    pubkey: Option<String>,
}

#[derive(Args)]
pub struct DiskVerifyArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long)]
    image: String,
    #[arg(long)]
    disk: PathBuf,
    #[arg(long)]
    pubkey: Option<String>,
    #[arg(long, default_value_t = 4)]
    jobs: usize,
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

/// Where a repository is read from: a directory or a URL.
#[derive(Args)]
// The group names its members: --timeout goes with either, so it is not one.
#[group(skip)]
#[command(group(ArgGroup::new("source").args(["repo", "url"]).required(true)))]
struct SourceArgs {
    /// Repository directory.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Repository URL (http[s]://host:port[/path]).
    #[arg(long)]
    url: Option<String>,
    /// Seconds to wait for a connection or for data before retrying.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// CA certificates (PEM) an https:// repository's certificate must chain
    /// to; default $SSL_CERT_FILE or the system's bundle.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// The CA roots for `url`: `--ca FILE`, else the system's (https:// only).
fn ca_roots(ca: Option<&Path>, url: &str) -> Result<Option<CaRoots>> {
    if let Some(file) = ca {
        return Ok(Some(CaRoots::load(file)?));
    }
    if !url.starts_with("https://") {
        return Ok(None);
    }
    match CaRoots::system() {
        Some(roots) => Ok(Some(roots?)),
        None => bail!(
            "no CA bundle on this system (looked at $SSL_CERT_FILE, {}); give --ca FILE",
            imprint::source::SYSTEM_CA_FILES.join(", ")
        ),
    }
}

impl SourceArgs {
    fn open(&self, connections: usize) -> Result<Box<dyn Source>> {
        match (&self.repo, &self.url) {
            (Some(dir), _) => {
                if !dir.is_dir() {
                    bail!(
                        "repository {} is not a directory; pass the folder `imprint image add` wrote",
                        dir.display()
                    );
                }
                Ok(Box::new(DirSource::new(dir)))
            }
            (None, Some(url)) => {
                let timeout = Duration::from_secs(self.timeout.max(1));
                let proxy = imprint::source::proxy_from_env(url, |k| std::env::var(k).ok())
                    .map(|p| Proxy::new(&p, Arc::new(SystemResolver), timeout, connections))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("http_proxy: {e}"))?;
                let source = HttpSource::new(
                    url,
                    Arc::new(SystemResolver),
                    timeout,
                    connections,
                    ca_roots(self.ca.as_deref(), url)?,
                )?;
                Ok(Box::new(source.with_proxy(proxy)))
            }
            (None, None) => bail!("give --repo DIR or --url URL"),
        }
    }

    /// Opens the repository and resolves `image` to a trusted manifest.
    fn resolve(
        &self,
        image: &str,
        pubkey: Option<&str>,
        connections: usize,
    ) -> Result<(Box<dyn Source>, engine::Resolved)> {
        let image = parse_image_ref(image)?;
        let pubkey = pubkey.map(signature::parse_public_key).transpose()?;
        let source = self.open(connections)?;
        if connections > 1 {
            source.preconnect(connections);
        }
        let resolved = engine::resolve(
            source.as_ref(),
            &image,
            pubkey.as_ref(),
            &RetryPolicy::default(),
        )?;
        Ok((source, resolved))
    }
}

fn parse_image_ref(text: &str) -> Result<ImageRef> {
    text.parse::<ImageRef>()
        .map_err(|e| DeployError::BadRef {
            image: text.to_string(),
            reason: e.to_string(),
        })
        .map_err(Into::into)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `65536`, `64K`, `1M`, `1MiB`, `2G` (binary units).
fn parse_size(text: &str) -> Result<u64, String> {
    imprint::format::cmdline::parse_size(text)
        .ok_or_else(|| format!("{text:?} is not a size (examples: 65536, 64K, 1M)"))
}

fn split_reference(reference: &str) -> Result<(&str, &str)> {
    reference
        .split_once(':')
        .with_context(|| format!("image reference {reference:?} must be NAME:TAG"))
}

pub fn image_add(args: &ImageAddArgs) -> Result<Exit> {
    let reference = &args.reference;
    let (name, tag) = split_reference(reference)?;
    let chunk_size = u32::try_from(args.chunk_size)
        .ok()
        .filter(|c| {
            c.is_power_of_two() && (manifest::MIN_CHUNK_SIZE..=manifest::MAX_CHUNK_SIZE).contains(c)
        })
        .with_context(|| {
            format!(
                "chunk size {} must be a power of two from 64K to 64M",
                args.chunk_size
            )
        })?;
    let sign_key = args.sign_key.as_deref().map(read_secret_key).transpose()?;
    let issued = args.issued.unwrap_or_else(unix_now);
    let local = LocalRepo::open_or_create(&args.repo)?;
    let opts = AddOptions {
        chunk_size,
        level: args.level,
        jobs: args.jobs.unwrap_or_else(cores),
        sign_key,
        arch: args.arch.clone(),
        boot: args.boot_facts(),
        issued,
        expires: expiry(args.expires.as_deref(), issued)?,
    };
    let report = repo::add_image(&local, name, tag, &args.image, &opts)
        .with_context(|| format!("adding {} as {reference}", args.image.display()))?;
    println!("added {reference} {}", report.digest);
    println!("  logical size  {} bytes", report.size);
    println!("  chunks        {}", report.chunks);
    println!("  zero chunks   {}", report.zero_chunks);
    println!("  new chunks    {}", report.new_chunks);
    println!("  bytes stored  {}", report.bytes_stored);
    println!(
        "  image stored  {} bytes compressed",
        report.image_stored_bytes
    );
    Ok(Exit::Success)
}

pub fn image_ls(args: &ImageLsArgs) -> Result<Exit> {
    let local = LocalRepo::open(&args.repo)?;
    for (name, tag, digest) in local.list_refs()? {
        match local.load_manifest(&digest) {
            Ok(m) => println!(
                "{}:{}\t{digest}\t{} bytes",
                printable(&name),
                printable(&tag),
                m.size
            ),
            Err(e) => println!(
                "{}:{}\t{digest}\tunreadable: {}",
                printable(&name),
                printable(&tag),
                printable(&e.to_string())
            ),
        }
    }
    Ok(Exit::Success)
}

fn read_secret_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret key {}", path.display()))?;
    signature::parse_secret_key(&text)
        .with_context(|| format!("reading secret key {}", path.display()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn image_sign(args: &ImageSignArgs) -> Result<Exit> {
    let (name, tag) = split_reference(&args.reference)?;
    let key = read_secret_key(&args.sign_key)?;
    let local = LocalRepo::open(&args.repo)?;
    let digest = local.resolve_ref(name, tag)?;
    let issued = args.issued.unwrap_or_else(unix_now);
    let expires = expiry(args.expires.as_deref(), issued)?;
    let release = local
        .sign(&key, name, tag, &digest, issued, expires)
        .with_context(|| format!("signing {}", args.reference))?;
    local.sync_dir("manifests/sha256")?;
    let until = release
        .expires
        .map_or(String::new(), |e| format!(", expires {e}"));
    println!(
        "signed {name}:{tag} {digest} ({} bytes, issued {}{until})",
        release.size, release.issued
    );
    Ok(Exit::Success)
}

/// `--expires`, read against the release's issue time.
fn expiry(text: Option<&str>, issued: u64) -> Result<Option<u64>> {
    let Some(text) = text else { return Ok(None) };
    let expires = imprint::format::signature::parse_when(text, Some(issued))
        .map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
    if expires <= issued {
        bail!("--expires: {expires} is not after the release is issued ({issued})");
    }
    Ok(Some(expires))
}

pub fn image_inspect(args: &ImageInspectArgs) -> Result<Exit> {
    let (_, resolved) = args
        .source
        .resolve(&args.reference, args.pubkey.as_deref(), 1)?;
    if args.json {
        // Through a Value, whose maps keep their keys sorted: the document has
        // always listed them so.
        let doc = serde_json::to_value(InspectJson::new(&resolved))?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(Exit::Success);
    }
    let m = &resolved.manifest;
    let zero = m
        .chunks
        .iter()
        .filter(|c| c.kind == ChunkKind::Zero)
        .count();
    // Manifest strings come from the repository: shown escaped.
    println!("image     {}", printable(&m.name));
    println!("digest    {}", resolved.digest);
    println!("trust     {}", trust_text(resolved.trust));
    println!("format    v{}", m.version);
    println!("size      {} bytes", m.size);
    println!(
        "chunks    {} of {} bytes ({} zero)",
        m.chunks.len(),
        m.chunk_size,
        zero
    );
    println!("stored    {} bytes compressed", m.stored_bytes());
    let firmware: Vec<&str> = m.requirements.firmware.iter().map(firmware_name).collect();
    println!(
        "needs     arch {}, firmware {}, disk >= {} bytes",
        printable(m.requirements.arch.as_deref().unwrap_or("any")),
        if firmware.is_empty() {
            "unknown".to_string()
        } else {
            firmware.join("+")
        },
        m.requirements.min_disk_size
    );
    match &m.layout {
        Some(l) => {
            println!(
                "layout    GPT, disk {}, {}-byte sectors",
                l.disk_guid, l.sector_size
            );
            for p in &l.partitions {
                println!(
                    "  part {:>2}  lba {:>10}-{:<10} type {} uuid {} {:?}",
                    p.number, p.first_lba, p.last_lba, p.type_guid, p.unique_guid, p.name
                );
            }
        }
        None => println!("layout    none (no GPT)"),
    }
    if let Some(b) = &m.boot {
        println!(
            "boot      partition {} kernel {} initrd {} cmdline {:?}",
            b.partition,
            printable(&b.kernel),
            printable(b.initrd.as_deref().unwrap_or("-")),
            b.cmdline
        );
    }
    Ok(Exit::Success)
}

fn trust_text(trust: Trust) -> &'static str {
    match trust {
        Trust::Pinned => "pinned by digest",
        Trust::Signed => "signed by the given key",
        Trust::Unverified => "unverified (no digest pin, no public key)",
    }
}

fn trust_name(trust: Trust) -> &'static str {
    match trust {
        Trust::Pinned => "pinned",
        Trust::Signed => "signed",
        Trust::Unverified => "unverified",
    }
}

fn firmware_name(firmware: &Firmware) -> &'static str {
    match firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    }
}

/// `image inspect --json`: the manifest as scripts read it, digests in hex and
/// GUIDs as text.
#[derive(Serialize)]
struct InspectJson<'a> {
    digest: String,
    trust: &'static str,
    version: u32,
    name: &'a str,
    size: u64,
    chunk_size: u32,
    stored_bytes: u64,
    requirements: RequirementsJson<'a>,
    layout: Option<LayoutJson<'a>>,
    boot: Option<BootJson<'a>>,
    chunks: Vec<ChunkJson>,
}

#[derive(Serialize)]
struct RequirementsJson<'a> {
    arch: Option<&'a str>,
    firmware: Vec<&'static str>,
    min_disk_size: u64,
}

#[derive(Serialize)]
struct LayoutJson<'a> {
    sector_size: u32,
    disk_guid: String,
    first_usable_lba: u64,
    last_usable_lba: u64,
    partitions: Vec<PartitionJson<'a>>,
}

#[derive(Serialize)]
struct PartitionJson<'a> {
    number: u32,
    type_guid: String,
    unique_guid: String,
    first_lba: u64,
    last_lba: u64,
    attributes: u64,
    name: &'a str,
}

#[derive(Serialize)]
struct BootJson<'a> {
    partition: u32,
    kernel: &'a str,
    initrd: Option<&'a str>,
    cmdline: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ChunkJson {
    Data {
        offset: u64,
        length: u32,
        sha256: String,
        blake3: String,
        stored_size: u32,
    },
    Zero {
        offset: u64,
        length: u32,
    },
}

impl<'a> InspectJson<'a> {
    fn new(resolved: &'a engine::Resolved) -> Self {
        let m: &'a Manifest = &resolved.manifest;
        InspectJson {
            digest: resolved.digest.to_string(),
            trust: trust_name(resolved.trust),
            version: m.version,
            name: &m.name,
            size: m.size,
            chunk_size: m.chunk_size,
            stored_bytes: m.stored_bytes(),
            requirements: RequirementsJson {
                arch: m.requirements.arch.as_deref(),
                firmware: m.requirements.firmware.iter().map(firmware_name).collect(),
                min_disk_size: m.requirements.min_disk_size,
            },
            layout: m.layout.as_ref().map(|l| LayoutJson {
                sector_size: l.sector_size,
                disk_guid: l.disk_guid.to_string(),
                first_usable_lba: l.first_usable_lba,
                last_usable_lba: l.last_usable_lba,
                partitions: l
                    .partitions
                    .iter()
                    .map(|p| PartitionJson {
                        number: p.number,
                        type_guid: p.type_guid.to_string(),
                        unique_guid: p.unique_guid.to_string(),
                        first_lba: p.first_lba,
                        last_lba: p.last_lba,
                        attributes: p.attributes,
                        name: &p.name,
                    })
                    .collect(),
            }),
            boot: m.boot.as_ref().map(|b| BootJson {
                partition: b.partition,
                kernel: &b.kernel,
                initrd: b.initrd.as_deref(),
                cmdline: &b.cmdline,
            }),
            chunks: m
                .chunks
                .iter()
                .map(|c| match c.kind {
                    ChunkKind::Data {
                        sha256,
                        blake3,
                        stored_size,
                    } => ChunkJson::Data {
                        offset: c.offset,
                        length: c.length,
                        sha256: sha256.hex(),
                        blake3: blake3::Hash::from_bytes(blake3).to_hex().to_string(),
                        stored_size,
                    },
                    ChunkKind::Zero => ChunkJson::Zero {
                        offset: c.offset,
                        length: c.length,
                    },
                })
                .collect(),
        }
    }
}

pub fn repo_check(args: &RepoCheckArgs) -> Result<Exit> {
    let local = LocalRepo::open(&args.repo)?;
    let report = repo::check(&local, args.jobs.unwrap_or_else(cores))?;
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    println!(
        "checked {} manifests, {} chunks: {} problems",
        report.manifests,
        report.chunks_checked,
        report.problems.len()
    );
    Ok(if report.problems.is_empty() {
        Exit::Success
    } else {
        Exit::Failure
    })
}

pub fn keygen(args: &KeygenArgs) -> Result<Exit> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = &args.out;
    let seed = imprint::sys::random_bytes::<32>().context("reading /dev/urandom")?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = signature::public_key_text(&key.verifying_key());
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "creating secret key {} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    file.write_all(signature::secret_key_text(&key).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing secret key {}", out.display()))?;
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("writing public key {}", pub_path.display()))?;
    println!("{public}");
    Ok(Exit::Success)
}

pub fn serve(args: &ServeArgs) -> Result<Exit> {
    // Before any thread starts, so every thread inherits it: SIGTERM and SIGINT
    // are taken by the thread below, not by the default action.
    imprint::sys::block_termination_signals().context("blocking SIGTERM")?;
    // Two descriptors per connection at most (the socket and a file).
    let files = imprint::sys::raise_open_file_limit();
    let max_connections = args
        .max_connections
        .unwrap_or_else(|| 1024.min((files.saturating_sub(64) / 2) as usize))
        .max(1);
    let limits = imprint::host::serve::Limits {
        max_connections,
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        io_timeout: Duration::from_secs(args.io_timeout.max(1)),
        // A deploy environment opens up to 64 (imprint.jobs=): a client
        // gets that many, or a quarter of all, whichever is more.
        max_per_client: args
            .max_connections_per_client
            .unwrap_or((max_connections / 4).max(max_connections.min(64)))
            .max(1),
        status_token: args.status_token.clone().filter(|t| !t.is_empty()),
        operator_token: match (&args.operator_token_file, &args.hosts) {
            (Some(file), _) => Some(imprint::host::access::read_token(file)?),
            (None, Some(_)) => {
                std::fs::create_dir_all(&args.data)
                    .with_context(|| format!("creating {}", args.data.display()))?;
                let file = args.data.join("operator-token");
                let token = imprint::host::access::read_or_make_token(&file)?;
                log::info!(
                    "the operator's token is in {} (imprint host commands on this host read it)",
                    file.display()
                );
                Some(token)
            }
            (None, None) => None,
        },
        public_view: args.public_view,
        status_machines: args.status_machines,
        ..Default::default()
    };
    let fleet = match &args.hosts {
        Some(hosts) => Some(imprint::host::fleet::Fleet::open(
            imprint::host::fleet::FleetOptions {
                hosts: hosts.clone(),
                data: args.data.clone(),
                attempts: args.attempts.max(1),
            },
        )?),
        None => None,
    };
    for file in [&args.kernel, &args.initrd].into_iter().flatten() {
        std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let provisioning = imprint::host::serve::Provisioning {
        fleet,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
    };
    let server = imprint::host::serve::RepoServer::bind_provisioning(
        &args.repo,
        &args.listen,
        limits,
        provisioning,
    )?;
    server.watch_inventory();
    let addr = server
        .local_addr()
        .context("the server is not listening on an IP address")?;
    // Whoever started the server reads this line to learn the port.
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{addr}")?;
    out.flush()?;
    log::info!("serving up to {max_connections} connections at once");
    let stopper = Arc::clone(&server);
    std::thread::spawn(move || {
        let signal = imprint::sys::wait_for_termination();
        // Refusing first, so that once this line is out no connection is taken.
        stopper.shutdown();
        log::info!(
            "signal {signal}: no new connections; finishing the {} open",
            stopper.open_connections()
        );
    });
    server.run();
    let left = server.drain(Duration::from_secs(60));
    if left > 0 {
        log::warn!("stopped with {left} connections still open after 60 s");
    }
    Ok(Exit::Success)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn progress_line(p: &Progress) -> String {
    let pct = if p.total_bytes == 0 {
        100.0
    } else {
        p.done_bytes as f64 * 100.0 / p.total_bytes as f64
    };
    let eta = p
        .eta()
        .map(|d| format!("{}s", d.as_secs()))
        .unwrap_or_else(|| "?".into());
    format!(
        "{pct:5.1}% written {} skipped {} fetched {} {:.1} MB/s eta {eta}",
        human_bytes(p.written_bytes + p.zeroed_bytes),
        human_bytes(p.skipped_bytes),
        human_bytes(p.fetched_bytes),
        p.rate_mb_s(),
    )
}

pub fn deploy(args: &DeployArgs) -> Result<Exit> {
    let image = &args.image;
    let disk = &args.disk;
    let jobs = args.jobs.clamp(1, 64);
    // The disk's first bytes are read while the manifest is fetched: the
    // scan starts there.
    let preread = engine::Preread::start(disk);
    let (src, resolved) = args.source.resolve(image, args.pubkey.as_deref(), jobs)?;
    log::debug!(
        "read {} MiB of {} ahead",
        preread.finish() >> 20,
        disk.display()
    );
    let opts = DeployOptions {
        jobs,
        ..DeployOptions::default()
    };
    if resolved.trust == Trust::Unverified {
        log::warn!(
            "{image} is trusted only because the repository says so; pin a digest or pass --pubkey"
        );
    }
    let m = &resolved.manifest;
    let target = DiskTarget::open_for_write(disk, m.requirements.min_disk_size.max(m.size))?;
    log::info!(
        "deploying {} {} ({}) to {}",
        m.name,
        resolved.digest,
        human_bytes(m.size),
        disk.display()
    );
    // The install sequence's order for the boot records: a deploy cut short
    // leaves a disk that does not look bootable, never a half-written one that does.
    let result = engine::write_image(src.as_ref(), m, &target, &opts, &|p| {
        eprintln!("imprint: {}", progress_line(p));
    });
    let p = result.with_context(|| format!("deploying to {}", disk.display()))?;
    println!(
        "deploy complete: image={} bytes={} written={} zeroed={} skipped={} fetched={} \
         chunks={} fetched_chunks={} skipped_chunks={} retries={} seconds={:.2} rate={:.1}MB/s \
         worker_fetch_s={:.2} worker_verify_s={:.2} worker_disk_s={:.2}",
        resolved.digest,
        p.total_bytes,
        p.written_bytes,
        p.zeroed_bytes,
        p.skipped_bytes,
        p.fetched_bytes,
        p.chunks,
        p.chunks_fetched,
        p.chunks_skipped,
        p.retries,
        p.elapsed.as_secs_f64(),
        p.rate_mb_s(),
        p.fetch_time.as_secs_f64(),
        p.verify_time.as_secs_f64(),
        p.disk_time.as_secs_f64(),
    );
    Ok(Exit::Success)
}

pub fn disk_verify(args: &DiskVerifyArgs) -> Result<Exit> {
    let disk = args.disk.display();
    let (_, resolved) = args
        .source
        .resolve(&args.image, args.pubkey.as_deref(), 1)?;
    let target = DiskTarget::open_for_read(&args.disk)?;
    let report = engine::verify(&resolved.manifest, &target, args.jobs.clamp(1, 64));
    for e in &report.errors {
        println!("error: {e}");
    }
    if report.too_small {
        println!(
            "{disk} is smaller than the image ({} bytes)",
            resolved.manifest.size
        );
    }
    for offset in report.mismatched.iter().take(20) {
        println!("mismatch: chunk at offset {offset}");
    }
    if report.ok() {
        println!(
            "{disk} holds {} exactly ({} chunks)",
            resolved.digest, report.chunks
        );
        Ok(Exit::Success)
    } else {
        println!(
            "{disk} does not hold {}: {} of {} chunks differ",
            resolved.digest,
            report.mismatched.len(),
            report.chunks
        );
        Ok(Exit::Failure)
    }
}

/// The CA bundle an initramfs carries: `--ca`, else the system's; its bytes and
/// what they hold.
fn initramfs_ca(args: &InitramfsBuildArgs) -> Result<Option<(Vec<u8>, CaRoots)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert!(parse_size("1Q").is_err());
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("").is_err() && parse_size("B").is_err() && parse_size("K").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
