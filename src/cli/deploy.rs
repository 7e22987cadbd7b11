//! Deploying from a host: deploy an image to a disk or file, and disk verify.

use super::exit::Exit;
use super::parse_image_ref;
use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Subcommand};
use imprint::engine::{self, DeployOptions, DiskTarget, Progress, Trust};
use imprint::format::signature;
use imprint::source::{CaRoots, DirSource, HttpSource, Proxy, RetryPolicy, Source, SystemResolver};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Exit 0 only if the disk holds exactly the image's bytes.
    Verify(DiskVerifyArgs),
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

/// Where a repository is read from: a directory or a URL.
#[derive(Args)]
// The group names its members: --timeout goes with either, so it is not one.
#[group(skip)]
#[command(group(ArgGroup::new("source").args(["repo", "url"]).required(true)))]
pub(super) struct SourceArgs {
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
pub(super) fn ca_roots(ca: Option<&Path>, url: &str) -> Result<Option<CaRoots>> {
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
    pub(super) fn open(&self, connections: usize) -> Result<Box<dyn Source>> {
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
    pub(super) fn resolve(
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

pub(super) fn human_bytes(n: u64) -> String {
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

pub(super) fn progress_line(p: &Progress) -> String {
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
