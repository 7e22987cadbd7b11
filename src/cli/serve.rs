//! `imprint serve`: a repository over HTTP, and with --hosts the provisioning
//! server.

use super::exit::Exit;
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// Accepts captured images (docs/capture.md) under any NAME:TAG from
    /// whoever sends this token (`Authorization: Bearer TOKEN`; 16 characters
    /// or more). Machines whose inventory entry says `capture = "NAME:TAG"`
    /// capture with their own credential instead, without it.
    #[arg(long, env = "IMPRINT_CAPTURE_TOKEN", hide_env_values = true)]
    capture_token: Option<String>,
    /// Secret key file (from `imprint keygen`) that captured images are
    /// signed with when published, issued then.
    #[arg(long)]
    sign_key: Option<PathBuf>,
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
                repo: Some(args.repo.clone()),
            },
        )?),
        None => None,
    };
    for file in [&args.kernel, &args.initrd].into_iter().flatten() {
        std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let capture = imprint::host::serve::CaptureOptions {
        token: args
            .capture_token
            .as_deref()
            .map(imprint::host::access::capture_token)
            .transpose()?,
        sign_key: args
            .sign_key
            .as_deref()
            .map(super::image::read_secret_key)
            .transpose()?,
    };
    let provisioning = imprint::host::serve::Provisioning {
        fleet,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        capture,
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
