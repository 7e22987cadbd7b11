//! `imprint capture`: a disk (or a disk image file) read into a repository
//! served by `imprint serve --capture-token`, as the deploy environment's
//! `imprint.mode=capture` does on the machine itself.

use super::exit::Exit;
use anyhow::{Context, Result, bail};
use clap::Args;
use imprint::capture::{self, CaptureOptions, upload::HttpStore};
use imprint::format::digest::ImageRef;
use imprint::format::hardware::human_size;
use imprint::source::{Client, RetryPolicy, SystemResolver};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct CaptureArgs {
    /// The disk to read (a block device or an image file); opened read-only.
    /// Capture a disk nothing has mounted read-write.
    #[arg(long)]
    disk: PathBuf,
    /// The `imprint serve` that stores it (its base URL).
    #[arg(long)]
    server: String,
    /// NAME:TAG to store it under.
    #[arg(long)]
    image: String,
    /// The server's capture token (`imprint serve --capture-token`).
    #[arg(long, env = "IMPRINT_CAPTURE_TOKEN", hide_env_values = true)]
    token: String,
    /// Chunk size in bytes (a power of two, 64K to 64M).
    #[arg(long, default_value_t = imprint::format::manifest::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// zstd level of the chunks.
    #[arg(long, default_value_t = 3)]
    level: i32,
    /// Firmware the image boots with: bios or uefi, repeated for both.
    /// Default: what the disk shows.
    #[arg(long, value_parser = ["bios", "uefi"])]
    firmware: Vec<String>,
    /// Threads reading, hashing and compressing (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// CA certificates (PEM) an https:// server's certificate must chain to;
    /// default $SSL_CERT_FILE or the system's bundle.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

pub fn capture(args: &CaptureArgs) -> Result<Exit> {
    let (name, tag) = match args.image.parse::<ImageRef>()? {
        ImageRef::Tag { name, tag } => (name, tag),
        ImageRef::Digest(_) => bail!("--image: a capture is stored under NAME:TAG, not a digest"),
    };
    let file = std::fs::File::open(&args.disk)
        .with_context(|| format!("opening {}", args.disk.display()))?;
    let size = imprint::sys::size_of(&file)
        .with_context(|| format!("reading the size of {}", args.disk.display()))?;
    let roots = super::deploy::ca_roots(args.ca.as_deref(), &args.server)?;
    let client = Client::new(Arc::new(SystemResolver), Duration::from_secs(60), roots, 4);
    let store = HttpStore::new(
        client,
        &args.server,
        &args.token,
        None,
        RetryPolicy::default(),
    );
    let opts = CaptureOptions {
        chunk_size: args.chunk_size,
        level: args.level,
        jobs: args.jobs.unwrap_or_else(super::image::cores),
        firmware: super::image::firmware_of(&args.firmware),
        ..CaptureOptions::default()
    };
    let started = Instant::now();
    let disk_name = args.disk.display().to_string();
    let report = capture::capture(
        &file,
        size,
        &disk_name,
        (&name, &tag),
        &opts,
        &store,
        &|_| {},
    )
    .with_context(|| format!("capturing {disk_name} as {name}:{tag}"))?;
    let digest = report.digest.map(|d| d.to_string()).unwrap_or_default();
    println!("captured {name}:{tag} {digest}");
    for p in &report.partitions {
        println!(
            "  partition {:>2}  {} of {} in use, read as {}",
            p.number,
            human_size(p.used),
            human_size(p.len),
            p.kind
        );
    }
    println!("  disk          {} bytes", report.disk_size);
    println!("  image         {} bytes", report.image_size);
    println!("  used          {} bytes", report.used_bytes);
    println!("  read          {} bytes", report.read_bytes);
    println!("  chunks        {}", report.chunks);
    println!("  zero chunks   {}", report.zero_chunks);
    println!(
        "  uploaded      {} chunks, {} bytes",
        report.uploaded_chunks, report.uploaded_bytes
    );
    println!("  already there {} chunks", report.present_chunks);
    println!("  seconds       {:.2}", started.elapsed().as_secs_f64());
    Ok(Exit::Success)
}
