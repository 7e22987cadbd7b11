//! `imprint host`: the operator's view of, and actions on, the machines a
//! running provisioning server (`imprint serve --hosts`) knows.

use super::exit::Exit;
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use imprint::format::hardware::{self, Hardware};
use imprint::format::http::printable;
use imprint::format::inventory::Mac;
use imprint::format::manifest::Requirements;
use imprint::source::{Client, HttpSource, RetryPolicy, SystemResolver};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum HostCommand {
    /// Send a machine through the deploy again on its next network boot (and
    /// lift a hold after failed deploys).
    Reprovision(ReprovisionArgs),
    /// What the server knows of a machine: its entry, its state, and the
    /// hardware its deploy environment last reported.
    Show(ShowArgs),
    /// The machines the server knows, a line each; with --compatible, only
    /// those whose reported hardware meets an image's requirements.
    Ls(LsArgs),
}

/// How to reach the server as its operator.
#[derive(Args)]
pub struct ServerArgs {
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
    /// CA certificates (PEM) an https:// server's certificate must chain to;
    /// default $SSL_CERT_FILE or the system's bundle.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(Args)]
pub struct ReprovisionArgs {
    /// The machine's MAC address.
    mac: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The machine's MAC address.
    mac: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct LsArgs {
    /// Only the machines that meet this image's requirements (firmware,
    /// architecture, disk size), as read from the server's repository. The
    /// others, and machines that have not reported their hardware, are
    /// counted on standard error.
    #[arg(long, value_name = "NAME:TAG")]
    compatible: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Where `imprint serve --hosts` with the default --data keeps its operator
/// token.
pub(super) const DEFAULT_TOKEN_FILE: &str = "/var/lib/imprint/serve/operator-token";

/// Largest `/machines` document read (a few KB a machine).
const MAX_MACHINES_DOC: u64 = 64 << 20;

/// A client for the server, and the operator's `Authorization` value.
fn operator(args: &ServerArgs) -> Result<(Client, String)> {
    let roots = super::deploy::ca_roots(args.ca.as_deref(), &args.server)?;
    let client = Client::new(Arc::new(SystemResolver), Duration::from_secs(30), roots, 0);
    let token = match (args.token.as_deref().filter(|t| !t.is_empty()), &args.token_file) {
        (Some(token), _) => token.to_string(),
        (None, Some(file)) => imprint::host::access::read_token(file)?,
        (None, None) => imprint::host::access::read_token(Path::new(DEFAULT_TOKEN_FILE))
            .with_context(|| {
                "the operator's token: give --token-file FILE (the server's --operator-token-file, or DATA/operator-token) or set IMPRINT_OPERATOR_TOKEN"
            })?,
    };
    Ok((client, format!("Bearer {token}")))
}

fn parse_mac(text: &str) -> Result<Mac> {
    text.parse().map_err(|e: String| anyhow!("{e}"))
}

pub fn reprovision(args: &ReprovisionArgs) -> Result<Exit> {
    let mac = parse_mac(&args.mac)?;
    let server = &args.server.server;
    let url = format!(
        "{}/machines/{}/reprovision",
        server.trim_end_matches('/'),
        mac.to_string().replace(':', "-")
    );
    let (client, authorization) = operator(&args.server)?;
    let mut answer = Vec::new();
    let response = client
        .post(
            &url,
            Some(&authorization),
            ("text/plain", b""),
            4096,
            &mut answer,
        )
        .with_context(|| {
            format!("asking {server} to reprovision {mac}; is imprint serve running there?")
        })?;
    let text = printable(String::from_utf8_lossy(&answer).trim());
    if response.status != 200 {
        bail!("{server} answered {}: {text}", response.status);
    }
    println!("{text}");
    Ok(Exit::Success)
}

/// The server's `/machines` document, as its operator sees it.
fn machines(args: &ServerArgs) -> Result<Vec<Value>> {
    let server = &args.server;
    let url = format!("{}/machines", server.trim_end_matches('/'));
    let (client, authorization) = operator(args)?;
    let mut body = Vec::new();
    let response = client
        .get(&url, Some(&authorization), MAX_MACHINES_DOC, &mut body)
        .with_context(|| {
            format!("asking {server} for its machines; is imprint serve running there?")
        })?;
    if response.status != 200 {
        bail!(
            "{server} answered {}: {}",
            response.status,
            printable(String::from_utf8_lossy(&body).trim())
        );
    }
    let mut doc: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not answer JSON: is it imprint serve --hosts?"))?;
    match doc["machines"].take() {
        Value::Array(machines) => Ok(machines),
        _ => bail!("{url} lists no machines: is it imprint serve --hosts?"),
    }
}

pub fn show(args: &ShowArgs) -> Result<Exit> {
    let mac = parse_mac(&args.mac)?;
    let wanted = mac.to_string();
    let entry = machines(&args.server)?
        .into_iter()
        .find(|m| m["mac"].as_str() == Some(wanted.as_str()))
        .ok_or_else(|| {
            anyhow!(
                "{} knows no machine {mac}: not in its inventory, and never heard from",
                args.server.server
            )
        })?;
    for line in describe(&entry) {
        println!("{line}");
    }
    Ok(Exit::Success)
}

pub fn ls(args: &LsArgs) -> Result<Exit> {
    let requirements = match &args.compatible {
        Some(reference) => Some(requirements_of(&args.server, reference)?),
        None => None,
    };
    let (mut unknown, mut unmet) = (0, Vec::new());
    for m in machines(&args.server)? {
        let hardware: Option<Hardware> = serde_json::from_value(m["hardware"].clone()).ok();
        let text = |key: &str| printable(m[key].as_str().unwrap_or("-"));
        if let Some(requirements) = &requirements {
            let Some(hw) = &hardware else {
                unknown += 1;
                continue;
            };
            let why = hardware::unmet_platform(requirements, hw)
                .or_else(|| hardware::unmet_disk(requirements, hw));
            if let Some(why) = why {
                unmet.push(format!("{}: {why}", text("mac")));
                continue;
            }
        }
        println!(
            "{}  {}  {}  {}",
            text("mac"),
            text("hostname"),
            text("next"),
            hardware.map_or("hardware not reported".into(), |h| h.bounded().summary())
        );
    }
    if let Some(reference) = &args.compatible {
        for line in &unmet {
            eprintln!("does not meet {reference}: {line}");
        }
        if unknown > 0 {
            eprintln!(
                "{unknown} machines have not reported their hardware yet (they do at their next deploy)"
            );
        }
    }
    Ok(Exit::Success)
}

/// What the image `reference` in the server's repository requires.
fn requirements_of(args: &ServerArgs, reference: &str) -> Result<Requirements> {
    let image = super::parse_image_ref(reference)?;
    let roots = super::deploy::ca_roots(args.ca.as_deref(), &args.server)?;
    let source = HttpSource::new(
        &args.server,
        Arc::new(SystemResolver),
        Duration::from_secs(30),
        1,
        roots,
    )?;
    let resolved = imprint::engine::resolve(&source, &image, None, &RetryPolicy::default())
        .with_context(|| format!("reading {reference} from {}", args.server))?;
    Ok(resolved.manifest.requirements)
}

/// A machine's entry in `/machines`, a line each; every value printable.
fn describe(m: &Value) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => printable(s),
        Value::Null => "-".to_string(),
        other => printable(&other.to_string()),
    };
    let state = &m["state"];
    let mut lines = vec![
        format!("machine: {}", text(&m["mac"])),
        format!("host name: {}", text(&m["hostname"])),
        format!("image: {}", text(&m["image"])),
        format!("next boot: {}", text(&m["next"])),
        format!("phase: {}", text(&state["phase"])),
        format!(
            "deploys: {}; failures: {}; last error: {}",
            text(&state["deploys"]),
            text(&state["failures"]),
            text(&state["last_error"])
        ),
        format!("deployed: {}", text(&state["completed"])),
    ];
    if let Some(why) = m["held"].as_str() {
        lines.push(format!("held: {}", printable(why)));
    }
    match m["hardware_details"].as_array() {
        Some(details) => {
            lines.push("hardware:".into());
            lines.extend(details.iter().map(|l| format!("  {}", text(l))));
        }
        None => {
            lines.push("hardware: not reported yet (it is, at the machine's next deploy)".into())
        }
    }
    lines
}
