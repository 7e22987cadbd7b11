//! Repository commands: image add, ls, inspect and sign, repo check, keygen.

use super::deploy::SourceArgs;
use super::exit::Exit;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use imprint::engine::{self, Trust};
use imprint::format::http::printable;
use imprint::format::manifest::{self, BootFacts, ChunkKind, Firmware, Manifest};
use imprint::format::signature;
use imprint::host::repo::{self, AddOptions, LocalRepo};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Chunk, compress and store a raw disk image.
    Add(Box<ImageAddArgs>),
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
    /// Firmware the image boots with: bios or uefi, repeated for both.
    /// Default: what its partitions show (an ESP for UEFI, a BIOS boot
    /// partition or boot code for BIOS). Machines started with other firmware
    /// are refused before anything is written.
    #[arg(long, value_parser = ["bios", "uefi"])]
    firmware: Vec<String>,
    /// The smallest disk the image may go to (512M, 20G, ...), when larger
    /// than the image: machines with none are refused before anything is
    /// written.
    #[arg(long, value_name = "SIZE")]
    min_disk: Option<String>,
    /// The memory a machine needs (2G, 512M, ...): machines with less are
    /// refused before anything is written.
    #[arg(long, value_name = "SIZE")]
    min_memory: Option<String>,
    /// The DMI product name a machine must report (`imprint host show` prints
    /// it): for an image made for one model.
    #[arg(long, value_name = "NAME")]
    product: Option<String>,
    /// A kernel driver some device of the machine must be bound to (e.g.
    /// `megaraid_sas`), repeated for more: for an image whose OS carries only
    /// some drivers.
    #[arg(long = "driver", value_name = "DRIVER")]
    drivers: Vec<String>,
    /// Mark the image as a copy of one configured machine: each deploy of it
    /// removes what must be unique per machine (machine id, SSH host keys,
    /// leases, cloud-init's instance; docs/capture.md lists it).
    #[arg(long)]
    generalize: bool,
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

pub(super) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `65536`, `64K`, `1M`, `1MiB`, `2G` (binary units).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    imprint::format::cmdline::parse_size(text)
        .ok_or_else(|| format!("{text:?} is not a size (examples: 65536, 64K, 1M)"))
}

pub(super) fn split_reference(reference: &str) -> Result<(&str, &str)> {
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
        firmware: (!args.firmware.is_empty()).then(|| firmware_of(&args.firmware)),
        min_disk: size_option("--min-disk", args.min_disk.as_deref())?,
        min_memory: size_option("--min-memory", args.min_memory.as_deref())?.unwrap_or(0),
        product: args.product.clone(),
        drivers: args.drivers.clone(),
        generalize: args.generalize,
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

pub(super) fn read_secret_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret key {}", path.display()))?;
    signature::parse_secret_key(&text)
        .with_context(|| format!("reading secret key {}", path.display()))
}

pub(super) fn unix_now() -> u64 {
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
pub(super) fn expiry(text: Option<&str>, issued: u64) -> Result<Option<u64>> {
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
    println!("format    v{}", m.version());
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
    if m.requirements.min_memory > 0 {
        println!("          memory >= {} bytes", m.requirements.min_memory);
    }
    if let Some(product) = &m.requirements.product {
        println!("          product {}", printable(product));
    }
    if !m.requirements.drivers.is_empty() {
        println!(
            "          drivers {}",
            printable(&m.requirements.drivers.join(" "))
        );
    }
    if m.generalized {
        println!("generalized: each deploy gets a fresh machine identity");
    }
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

pub(super) fn trust_text(trust: Trust) -> &'static str {
    match trust {
        Trust::Pinned => "pinned by digest",
        Trust::Signed => "signed by the given key",
        Trust::Unverified => "unverified (no digest pin, no public key)",
    }
}

pub(super) fn trust_name(trust: Trust) -> &'static str {
    match trust {
        Trust::Pinned => "pinned",
        Trust::Signed => "signed",
        Trust::Unverified => "unverified",
    }
}

/// The firmware named by `--firmware` options (bios, uefi).
pub(super) fn firmware_of(names: &[String]) -> Vec<Firmware> {
    names
        .iter()
        .map(|f| match f.as_str() {
            "uefi" => Firmware::Uefi,
            _ => Firmware::Bios,
        })
        .collect()
}

/// A size given as an option (512M, 20G), if given.
fn size_option(flag: &str, value: Option<&str>) -> Result<Option<u64>> {
    value
        .map(|s| {
            imprint::format::cmdline::parse_size(s)
                .with_context(|| format!("{flag} {s:?}: give a size such as 512M or 20G"))
        })
        .transpose()
}

pub(super) fn firmware_name(firmware: &Firmware) -> &'static str {
    match firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    }
}

/// `image inspect --json`: the manifest as scripts read it, digests in hex and
/// GUIDs as text.
#[derive(Serialize)]
pub(super) struct InspectJson<'a> {
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
    generalized: bool,
    chunks: Vec<ChunkJson>,
}

#[derive(Serialize)]
pub(super) struct RequirementsJson<'a> {
    arch: Option<&'a str>,
    firmware: Vec<&'static str>,
    min_disk_size: u64,
    min_memory: u64,
    product: Option<&'a str>,
    drivers: &'a [String],
}

#[derive(Serialize)]
pub(super) struct LayoutJson<'a> {
    sector_size: u32,
    disk_guid: String,
    first_usable_lba: u64,
    last_usable_lba: u64,
    partitions: Vec<PartitionJson<'a>>,
}

#[derive(Serialize)]
pub(super) struct PartitionJson<'a> {
    number: u32,
    type_guid: String,
    unique_guid: String,
    first_lba: u64,
    last_lba: u64,
    attributes: u64,
    name: &'a str,
}

#[derive(Serialize)]
pub(super) struct BootJson<'a> {
    partition: u32,
    kernel: &'a str,
    initrd: Option<&'a str>,
    cmdline: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum ChunkJson {
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
            version: m.version(),
            name: &m.name,
            size: m.size,
            chunk_size: m.chunk_size,
            stored_bytes: m.stored_bytes(),
            requirements: RequirementsJson {
                arch: m.requirements.arch.as_deref(),
                firmware: m.requirements.firmware.iter().map(firmware_name).collect(),
                min_disk_size: m.requirements.min_disk_size,
                min_memory: m.requirements.min_memory,
                product: m.requirements.product.as_deref(),
                drivers: &m.requirements.drivers,
            },
            generalized: m.generalized,
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
