//! The `imprint` command: host tooling (image add, serve, deploy, verify).

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use imprint::engine::{self, DeployError, DeployOptions, DiskTarget, Progress, Trust};
use imprint::format::digest::ImageRef;
use imprint::format::manifest::ChunkKind;
use imprint::format::signature;
use imprint::host::repo::{self, AddOptions, LocalRepo};
use imprint::source::{DirSource, FetchError, HttpSource, RetryPolicy, Source, SystemResolver};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (verification mismatch, repository problems, other errors)
  2  usage error
  3  manifest not trusted or invalid (bad pin, bad signature, malformed manifest or ref)
  4  target problem (cannot open, too small, busy, write error)
  5  source problem (not found, denied, server or network failure after retries)";

#[derive(Parser)]
#[command(
    name = "imprint",
    version,
    about = "Verified, resumable, delta-aware disk imaging",
    after_help = EXIT_CODES
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add, list and inspect images in a repository.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Repository maintenance.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Create an ed25519 key pair for signing manifests.
    Keygen {
        /// Secret key file to create (mode 0600); the public key goes to FILE.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve a repository over HTTP, and collect status events.
    Serve {
        #[arg(long)]
        repo: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Threads answering requests.
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
    /// Deploy an image onto a disk or file.
    #[command(after_help = EXIT_CODES)]
    Deploy {
        #[command(flatten)]
        source: SourceArgs,
        /// NAME:TAG or sha256:<hex> (a digest pins the manifest).
        #[arg(long)]
        image: String,
        /// Block device or file to write.
        #[arg(long)]
        disk: PathBuf,
        /// Chunks fetched and written in parallel.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Public key (base64) the manifest must be signed with.
        #[arg(long)]
        pubkey: Option<String>,
    },
    /// Disk checks.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// In the installed OS: read the state record, apply host settings, commit.
    Firstboot {
        /// Root of the installed OS to apply settings to.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// In the installed OS: print what the state record says.
    Status,
    /// Undo an upgrade that has not committed (BIOS: restore the old boot record).
    Rollback,
    /// In the installed OS: capture its configuration for the next OS to migrate.
    PrepareUpgrade {
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Build the deploy environment's initramfs.
    #[command(subcommand)]
    Initramfs(InitramfsCommand),
}

#[derive(Subcommand)]
enum InitramfsCommand {
    /// Write a zstd-compressed newc archive holding /init and kernel modules.
    Build {
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
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Chunk, compress and store a raw disk image.
    Add {
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
    },
    /// List the tags in a repository.
    Ls {
        #[arg(long)]
        repo: PathBuf,
    },
    /// Show what a manifest says.
    Inspect {
        #[command(flatten)]
        source: SourceArgs,
        /// NAME:TAG or sha256:<hex>.
        reference: String,
        #[arg(long)]
        json: bool,
        /// Public key (base64) the manifest must be signed with.
        #[arg(long)]
        pubkey: Option<String>,
    },
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Check that every chunk every manifest references is present and intact.
    Check {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        jobs: Option<usize>,
    },
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Exit 0 only if the disk holds exactly the image's bytes.
    Verify {
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
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct SourceArgs {
    /// Repository directory.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Repository URL (http://host:port[/path]).
    #[arg(long)]
    url: Option<String>,
    /// Seconds to wait for a connection or for data before retrying.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
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
            (None, Some(url)) => Ok(Box::new(HttpSource::new(
                url,
                Arc::new(SystemResolver),
                Duration::from_secs(self.timeout.max(1)),
                connections,
            )?)),
            (None, None) => bail!("give --repo DIR or --url URL"),
        }
    }
}

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    if argv0.ends_with("modprobe") {
        let args: Vec<String> = std::env::args().collect();
        return ExitCode::from(imprint::pid1::modprobe_main(&args) as u8);
    }
    if imprint::sys::is_pid1() {
        imprint::pid1::main();
    }
    let cli = Cli::parse();
    Logger::install(cli.verbose);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imprint: error: {}", imprint::error_text(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(d) = cause.downcast_ref::<DeployError>() {
            return match d {
                DeployError::Fetch(_) => 5,
                DeployError::Target(_) | DeployError::TargetIo { .. } => 4,
                _ => 3,
            };
        }
        if cause.is::<FetchError>() {
            return 5;
        }
        if cause.is::<engine::TargetError>() {
            return 4;
        }
        if cause.is::<signature::SignatureError>() {
            return 3;
        }
    }
    1
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Image(ImageCommand::Add {
            repo,
            reference,
            image,
            chunk_size,
            level,
            sign_key,
            arch,
            jobs,
            boot_partition,
            kernel,
            initrd,
            cmdline,
        }) => {
            let boot = match (boot_partition, kernel) {
                (Some(partition), Some(kernel)) => Some(imprint::format::manifest::BootFacts {
                    partition,
                    kernel,
                    initrd,
                    cmdline,
                }),
                _ => None,
            };
            image_add(
                &repo, &reference, &image, chunk_size, level, sign_key, arch, jobs, boot,
            )
        }
        Command::Image(ImageCommand::Ls { repo }) => image_ls(&repo),
        Command::Image(ImageCommand::Inspect {
            source,
            reference,
            json,
            pubkey,
        }) => image_inspect(&source, &reference, json, pubkey.as_deref()),
        Command::Repo(RepoCommand::Check { repo, jobs }) => repo_check(&repo, jobs),
        Command::Keygen { out } => keygen(&out),
        Command::Serve {
            repo,
            listen,
            threads,
        } => serve(&repo, &listen, threads),
        Command::Deploy {
            source,
            image,
            disk,
            jobs,
            pubkey,
        } => deploy(&source, &image, &disk, jobs, pubkey.as_deref()),
        Command::Disk(DiskCommand::Verify {
            source,
            image,
            disk,
            pubkey,
            jobs,
        }) => disk_verify(&source, &image, &disk, pubkey.as_deref(), jobs),
        Command::Firstboot { root } => {
            imprint::installed::firstboot::run(&root, &mut print_firstboot)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let r = imprint::installed::status()?;
            println!("disk        {}", r.device);
            println!("generation  {}", r.generation);
            println!("mode        {}", r.record.mode.as_str());
            println!("deployed as {}", r.record.deployed_mode.as_str());
            println!(
                "image       {} {}",
                r.record.image_name, r.record.image_digest
            );
            println!("deployed at {} (Unix time)", r.record.deployed_at);
            for (k, v) in &r.record.settings {
                println!("setting     {k}={v}");
            }
            if let Some(b) = &r.record.bundle {
                println!("bundle      slot {} {} bytes {}", b.slot, b.len, b.sha256);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback => {
            for line in imprint::installed::rollback()? {
                println!("imprint rollback: {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::PrepareUpgrade { root } => {
            let r = imprint::installed::prepare_upgrade(&root)?;
            println!(
                "imprint prepare-upgrade: captured {} entries ({} bytes, {}) into {}",
                r.entries, r.bundle.len, r.bundle.sha256, r.device
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Initramfs(InitramfsCommand::Build {
            out,
            kernel_release,
            modules_dir,
            modules,
            init,
        }) => initramfs_build(&out, kernel_release, modules_dir, modules, init),
    }
}

fn print_firstboot(event: imprint::installed::firstboot::Event) {
    use imprint::installed::firstboot::Event;
    let p = "imprint firstboot:";
    match event {
        Event::Found {
            device,
            generation,
            record,
        } => {
            println!("{p} disk={device} generation={generation}");
            println!("{p} mode={}", record.mode.as_str());
            println!("{p} image={} {}", record.image_name, record.image_digest);
            for (k, v) in &record.settings {
                println!("{p} setting {k}={v}");
            }
        }
        Event::AbandonedUpgrade { device, record } => println!(
            "{p} the upgrade to {} {} on {device} never committed; marked rolled-back",
            record.image_name, record.image_digest
        ),
        Event::NothingToDo(mode) => println!("{p} nothing to do ({})", mode.as_str()),
        Event::NoBundle { device } => println!(
            "{p} {device} has no configuration bundle (prepare-upgrade was not run); nothing to migrate"
        ),
        Event::Migrated {
            device,
            restored,
            total,
        } => {
            println!(
                "{p} migrated {} of {total} entries from {device}",
                restored.len()
            );
            for path in restored {
                println!("{p} migrated {path}");
            }
        }
        Event::BootOrder(n) => println!("{p} Boot{n:04X} is now first in BootOrder"),
        Event::Committed => println!("{p} committed"),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = match t
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        s if s.ends_with('K') => (s[..s.len() - 1].to_string(), 1u64 << 10),
        s if s.ends_with('M') => (s[..s.len() - 1].to_string(), 1 << 20),
        s if s.ends_with('G') => (s[..s.len() - 1].to_string(), 1 << 30),
        s => (s.to_string(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not a size (examples: 65536, 64K, 1M)"))
}

fn parse_image_ref(text: &str) -> Result<ImageRef> {
    text.parse::<ImageRef>()
        .map_err(|e| DeployError::BadRef {
            image: text.to_string(),
            reason: e.to_string(),
        })
        .map_err(Into::into)
}

fn parse_pubkey(text: Option<&str>) -> Result<Option<ed25519_dalek::VerifyingKey>> {
    Ok(match text {
        Some(t) => Some(signature::parse_public_key(t)?),
        None => None,
    })
}

#[allow(clippy::too_many_arguments)]
fn image_add(
    repo: &Path,
    reference: &str,
    image: &Path,
    chunk_size: u64,
    level: i32,
    sign_key: Option<PathBuf>,
    arch: Option<String>,
    jobs: Option<usize>,
    boot: Option<imprint::format::manifest::BootFacts>,
) -> Result<ExitCode> {
    let Some((name, tag)) = reference.split_once(':') else {
        bail!("image reference {reference:?} must be NAME:TAG");
    };
    let chunk_size = u32::try_from(chunk_size)
        .ok()
        .filter(|c| {
            c.is_power_of_two()
                && (imprint::format::manifest::MIN_CHUNK_SIZE
                    ..=imprint::format::manifest::MAX_CHUNK_SIZE)
                    .contains(c)
        })
        .with_context(|| {
            format!("chunk size {chunk_size} must be a power of two from 64K to 64M")
        })?;
    let sign_key = match sign_key {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading secret key {}", path.display()))?;
            Some(
                signature::parse_secret_key(&text)
                    .with_context(|| format!("reading secret key {}", path.display()))?,
            )
        }
        None => None,
    };
    let local = LocalRepo::open_or_create(repo)?;
    let opts = AddOptions {
        chunk_size,
        level,
        jobs: jobs.unwrap_or_else(cores),
        sign_key,
        arch,
        boot,
    };
    let report = repo::add_image(&local, name, tag, image, &opts)
        .with_context(|| format!("adding {} as {reference}", image.display()))?;
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
    Ok(ExitCode::SUCCESS)
}

fn image_ls(repo: &Path) -> Result<ExitCode> {
    let local = LocalRepo::open(repo)?;
    for (name, tag, digest) in local.list_refs()? {
        match local.load_manifest(&digest) {
            Ok(m) => println!("{name}:{tag}\t{digest}\t{} bytes", m.size),
            Err(e) => println!("{name}:{tag}\t{digest}\tunreadable: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn image_inspect(
    source: &SourceArgs,
    reference: &str,
    json: bool,
    pubkey: Option<&str>,
) -> Result<ExitCode> {
    let (_, resolved) = open_and_resolve(source, reference, pubkey, 1)?;
    let m = &resolved.manifest;
    let zero = m
        .chunks
        .iter()
        .filter(|c| c.kind == ChunkKind::Zero)
        .count();
    let firmware: Vec<String> = m
        .requirements
        .firmware
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    if json {
        let doc = serde_json::json!({
            "digest": resolved.digest.to_string(),
            "trust": format!("{:?}", resolved.trust).to_lowercase(),
            "version": m.version,
            "name": m.name,
            "size": m.size,
            "chunk_size": m.chunk_size,
            "stored_bytes": m.stored_bytes(),
            "requirements": {
                "arch": m.requirements.arch,
                "firmware": firmware,
                "min_disk_size": m.requirements.min_disk_size,
            },
            "layout": m.layout.as_ref().map(|l| serde_json::json!({
                "sector_size": l.sector_size,
                "disk_guid": l.disk_guid.to_string(),
                "first_usable_lba": l.first_usable_lba,
                "last_usable_lba": l.last_usable_lba,
                "partitions": l.partitions.iter().map(|p| serde_json::json!({
                    "number": p.number,
                    "type_guid": p.type_guid.to_string(),
                    "unique_guid": p.unique_guid.to_string(),
                    "first_lba": p.first_lba,
                    "last_lba": p.last_lba,
                    "attributes": p.attributes,
                    "name": p.name,
                })).collect::<Vec<_>>(),
            })),
            "boot": m.boot.as_ref().map(|b| serde_json::json!({
                "partition": b.partition,
                "kernel": b.kernel,
                "initrd": b.initrd,
                "cmdline": b.cmdline,
            })),
            "chunks": m.chunks.iter().map(|c| match c.kind {
                ChunkKind::Data { sha256, blake3, stored_size } => serde_json::json!({
                    "offset": c.offset, "length": c.length, "kind": "data",
                    "sha256": sha256.hex(), "blake3": hex(&blake3), "stored_size": stored_size,
                }),
                ChunkKind::Zero => serde_json::json!({
                    "offset": c.offset, "length": c.length, "kind": "zero",
                }),
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("image     {}", m.name);
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
    println!(
        "needs     arch {}, firmware {}, disk >= {} bytes",
        m.requirements.arch.as_deref().unwrap_or("any"),
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
            b.kernel,
            b.initrd.as_deref().unwrap_or("-"),
            b.cmdline
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the repository and resolves `image` to a trusted manifest.
fn open_and_resolve(
    source: &SourceArgs,
    image: &str,
    pubkey: Option<&str>,
    connections: usize,
) -> Result<(Box<dyn Source>, engine::Resolved)> {
    let image = parse_image_ref(image)?;
    let pubkey = parse_pubkey(pubkey)?;
    let src = source.open(connections)?;
    let resolved = engine::resolve(
        src.as_ref(),
        &image,
        pubkey.as_ref(),
        &RetryPolicy::default(),
    )?;
    Ok((src, resolved))
}

fn trust_text(trust: Trust) -> &'static str {
    match trust {
        Trust::Pinned => "pinned by digest",
        Trust::Signed => "signed by the given key",
        Trust::Unverified => "unverified (no digest pin, no public key)",
    }
}

fn repo_check(repo: &Path, jobs: Option<usize>) -> Result<ExitCode> {
    let local = LocalRepo::open(repo)?;
    let report = repo::check(&local, jobs.unwrap_or_else(cores))?;
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
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn keygen(out: &Path) -> Result<ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
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
    Ok(ExitCode::SUCCESS)
}

fn serve(repo: &Path, listen: &str, threads: usize) -> Result<ExitCode> {
    let server = imprint::host::serve::RepoServer::bind(repo, listen)?;
    let addr = server
        .local_addr()
        .context("the server is not listening on an IP address")?;
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    server.run(threads);
    Ok(ExitCode::SUCCESS)
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

fn deploy(
    source: &SourceArgs,
    image: &str,
    disk: &Path,
    jobs: usize,
    pubkey: Option<&str>,
) -> Result<ExitCode> {
    let jobs = jobs.clamp(1, 64);
    let (src, resolved) = open_and_resolve(source, image, pubkey, jobs)?;
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
    let result = engine::deploy(src.as_ref(), m, &target, &opts, &|p| {
        eprintln!("imprint: {}", progress_line(p));
    });
    let p = result.with_context(|| format!("deploying to {}", disk.display()))?;
    println!(
        "deploy complete: image={} bytes={} written={} zeroed={} skipped={} fetched={} \
         chunks={} fetched_chunks={} skipped_chunks={} retries={} seconds={:.2} rate={:.1}MB/s",
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
        p.rate_mb_s()
    );
    Ok(ExitCode::SUCCESS)
}

fn disk_verify(
    source: &SourceArgs,
    image: &str,
    disk: &Path,
    pubkey: Option<&str>,
    jobs: usize,
) -> Result<ExitCode> {
    let (_, resolved) = open_and_resolve(source, image, pubkey, 1)?;
    let target = DiskTarget::open_for_read(disk)?;
    let report = engine::verify(&resolved.manifest, &target, jobs.clamp(1, 64));
    for e in &report.errors {
        println!("error: {e}");
    }
    if report.too_small {
        println!(
            "{} is smaller than the image ({} bytes)",
            disk.display(),
            resolved.manifest.size
        );
    }
    for offset in report.mismatched.iter().take(20) {
        println!("mismatch: chunk at offset {offset}");
    }
    if report.ok() {
        println!(
            "{} holds {} exactly ({} chunks)",
            disk.display(),
            resolved.digest,
            report.chunks
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} does not hold {}: {} of {} chunks differ",
            disk.display(),
            resolved.digest,
            report.mismatched.len(),
            report.chunks
        );
        Ok(ExitCode::FAILURE)
    }
}

fn initramfs_build(
    out: &Path,
    kernel_release: Option<String>,
    modules_dir: Option<PathBuf>,
    extra: Vec<String>,
    init: Option<PathBuf>,
) -> Result<ExitCode> {
    use imprint::host::initramfs;
    let modules_dir = match (modules_dir, kernel_release) {
        (Some(dir), _) => dir,
        (None, Some(release)) => Path::new("/lib/modules").join(release),
        (None, None) => initramfs::newest_modules_dir(Path::new("/lib/modules"))?,
    };
    let init = match init {
        Some(p) => p,
        None => std::env::current_exe().context("finding this program's path")?,
    };
    let mut modules: Vec<String> = initramfs::DEFAULT_MODULES
        .iter()
        .map(|s| s.to_string())
        .collect();
    modules.extend(extra);
    let report = initramfs::build(&initramfs::BuildOptions {
        init: init.clone(),
        modules_dir: modules_dir.clone(),
        modules,
        level: 19,
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
    Ok(ExitCode::SUCCESS)
}

/// Log lines go to stderr as `imprint: <level>: <message>`.
struct Logger {
    level: log::LevelFilter,
}

impl Logger {
    fn install(verbose: u8) {
        let level = match verbose {
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        let logger = Box::leak(Box::new(Logger { level }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_lowercase();
            eprintln!("imprint: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
