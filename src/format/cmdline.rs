//! The kernel command line of the deploy environment, parsed into a typed config.
//!
//! Every `imprint.` key is known by name; an unknown key or a malformed value is a
//! problem reported by that name, and all problems are reported together so an
//! operator fixes the boot entry once. Nothing here touches a device.

use super::digest::ImageRef;
use super::signature;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Chunks in flight by default (`imprint.jobs=`, `--jobs`): enough fetches
/// under way to keep a 1 Gbit/s link with a 20 ms round trip busy with 1 MiB
/// chunks, and the disk and the cores busy meanwhile. Fewer where memory is
/// short (`engine::fit_jobs`).
pub const DEFAULT_JOBS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where repository files come from, asked in order (`imprint.repo=`, comma-
    /// separated; default: the medium labelled [`DEFAULT_MEDIA_LABEL`]).
    pub repo: Vec<RepoSource>,
    pub image: Option<ImageRef>,
    pub disk: Option<DiskSelector>,
    pub mode: Mode,
    pub previous: Option<DiskSelector>,
    pub handoff: Handoff,
    /// Base64 ed25519 public key the manifest must be signed with.
    pub pubkey: Option<String>,
    /// URL status events are POSTed to.
    pub status: Option<String>,
    /// The credential a provisioning server gave this deploy: its status
    /// events and the host's files are sent and fetched with it.
    pub credential: Option<Secret>,
    /// Forward proxy (`http://host:port`) for `http://` repositories.
    pub proxy: Option<String>,
    pub on_error: ErrorPolicy,
    pub hostname: Option<String>,
    /// Name under which this machine reports status (default: its MAC address).
    pub target: Option<String>,
    /// cloud-init user-data for this host: a file in the repository.
    pub user_data: Option<String>,
    /// cloud-init network-config for this host: a file in the repository.
    pub network_config: Option<String>,
    /// Deploy a signed release older than the one the disk holds.
    pub allow_downgrade: bool,
    /// Refuse a signed release issued before this (Unix seconds): a fresh
    /// disk has no record to refuse a replayed old release by.
    pub min_issued: Option<u64>,
    /// Deploy even when the target's record says it holds the image already.
    pub redeploy: bool,
    pub jobs: usize,
    /// How long DHCP may take before the error policy runs.
    pub dhcp_timeout: Duration,
    pub ip: IpConfig,
    /// MAC address of the interface the machine booted from (PXE `BOOTIF=`).
    pub bootif: Option<[u8; 6]>,
}

/// One place `imprint.repo=` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoSource {
    /// `http://…` or `https://…`.
    Url(String),
    /// `media:LABEL[/DIR]` or `media:UUID=…[/DIR]`: a directory (default
    /// [`DEFAULT_MEDIA_DIR`]) on a file system of a medium.
    Media { by: MediaId, dir: String },
}

/// How a medium's file system is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaId {
    Label(String),
    Uuid(String),
}

impl fmt::Display for RepoSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoSource::Url(url) => f.write_str(url),
            RepoSource::Media { by, dir } => {
                match by {
                    MediaId::Label(l) => write!(f, "media:{l}")?,
                    MediaId::Uuid(u) => write!(f, "media:UUID={u}")?,
                }
                if dir != DEFAULT_MEDIA_DIR {
                    write!(f, "/{dir}")?;
                }
                Ok(())
            }
        }
    }
}

/// The label of the medium `imprint media build` makes, and the repository
/// the deploy environment looks for when `imprint.repo=` is not given.
pub const DEFAULT_MEDIA_LABEL: &str = "IMPRINT";
/// Where a medium keeps its repository.
pub const DEFAULT_MEDIA_DIR: &str = "repo";
/// Where a medium keeps its per-machine choices (`imprint media build --hosts`).
pub const MEDIA_INVENTORY: &str = "imprint/hosts.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Deploy,
    Upgrade,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    Reboot,
    Poweroff,
    Kexec,
}

/// What PID 1 does after a fatal error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    Reboot,
    Poweroff,
    Retry,
}

/// A value that is not to be shown: its `Debug` says only that it is there.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Longest `imprint.credential=`.
pub const MAX_CREDENTIAL: usize = 256;

/// `imprint.disk=`: a device path, or hints that must all match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSelector {
    Path(String),
    Hints(DiskHints),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskHints {
    pub serial: Option<String>,
    pub model: Option<String>,
    /// Approximate size in bytes; a disk matches within 5%.
    pub size: Option<u64>,
    /// A name under /dev/disk/by-path.
    pub by_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpConfig {
    Dhcp,
    Off,
    Static(StaticIp),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub device: Option<String>,
    pub dns: Vec<Ipv4Addr>,
}

/// One thing wrong with the command line, named by its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("kernel command line: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct CmdlineError(pub Vec<Problem>);

const KNOWN: &[&str] = &[
    "imprint.repo",
    "imprint.image",
    "imprint.disk",
    "imprint.mode",
    "imprint.previous",
    "imprint.handoff",
    "imprint.pubkey",
    "imprint.status",
    "imprint.credential",
    "imprint.proxy",
    "imprint.on-error",
    "imprint.hostname",
    "imprint.target",
    "imprint.user-data",
    "imprint.network-config",
    "imprint.allow-downgrade",
    "imprint.min-issued",
    "imprint.redeploy",
    "imprint.jobs",
    "imprint.dhcp-timeout",
    "imprint.debug",
];

/// Splits a command line the way the kernel does: on whitespace outside double
/// quotes, quotes removed; everything after a lone `--` belongs to init's argv.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    if let Some(end) = out.iter().position(|w| w == "--") {
        out.truncate(end);
    }
    out
}

/// Parses the whole command line. Keys without the `imprint.` prefix other than
/// `ip=` and `BOOTIF=` belong to the kernel and are ignored.
pub fn parse(cmdline: &str) -> Result<Config, CmdlineError> {
    let mut cfg = Config {
        repo: Vec::new(),
        proxy: None,
        image: None,
        disk: None,
        mode: Mode::Deploy,
        previous: None,
        handoff: Handoff::Reboot,
        pubkey: None,
        status: None,
        credential: None,
        on_error: ErrorPolicy::Poweroff,
        hostname: None,
        target: None,
        user_data: None,
        network_config: None,
        allow_downgrade: false,
        min_issued: None,
        redeploy: false,
        jobs: DEFAULT_JOBS,
        dhcp_timeout: Duration::from_secs(60),
        ip: IpConfig::Dhcp,
        bootif: None,
    };
    let mut problems: Vec<Problem> = Vec::new();
    fn problem(problems: &mut Vec<Problem>, key: &str, message: String) {
        problems.push(Problem {
            key: key.to_string(),
            message,
        })
    }
    for word in split(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (word.clone(), String::new()),
        };
        if key.starts_with("imprint.") {
            if !KNOWN.contains(&key.as_str()) {
                problem(
                    &mut problems,
                    &key,
                    format!("unknown key (known: {})", KNOWN.join(" ")),
                );
                continue;
            }
            let flag = [
                "imprint.debug",
                "imprint.allow-downgrade",
                "imprint.redeploy",
            ];
            if value.is_empty() && !flag.contains(&key.as_str()) {
                problem(&mut problems, &key, "needs a value (key=value)".into());
                continue;
            }
        }
        let result: Result<(), String> = match key.as_str() {
            "imprint.repo" => parse_repo(&value).map(|v| cfg.repo = v),
            "imprint.proxy" => {
                super::http::parse_proxy_url(&value).map(|_| cfg.proxy = Some(value.clone()))
            }
            "imprint.status" => parse_url(&value).map(|v| cfg.status = Some(v)),
            "imprint.credential" => {
                let ok = value.len() <= MAX_CREDENTIAL
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if ok {
                    cfg.credential = Some(Secret(value.clone()));
                    Ok(())
                } else {
                    Err(format!(
                        "must be up to {MAX_CREDENTIAL} letters, digits, - and _ (as the provisioning server gives it)"
                    ))
                }
            }
            "imprint.image" => value
                .parse::<ImageRef>()
                .map(|v| cfg.image = Some(v))
                .map_err(|e| e.to_string()),
            "imprint.disk" => parse_disk(&value).map(|v| cfg.disk = Some(v)),
            "imprint.previous" => parse_disk(&value).map(|v| cfg.previous = Some(v)),
            "imprint.mode" => choice(
                &value,
                &[
                    ("deploy", Mode::Deploy),
                    ("upgrade", Mode::Upgrade),
                    ("rollback", Mode::Rollback),
                ],
            )
            .map(|v| cfg.mode = v),
            "imprint.handoff" => choice(
                &value,
                &[
                    ("reboot", Handoff::Reboot),
                    ("poweroff", Handoff::Poweroff),
                    ("kexec", Handoff::Kexec),
                ],
            )
            .map(|v| cfg.handoff = v),
            "imprint.on-error" => choice(
                &value,
                &[
                    ("reboot", ErrorPolicy::Reboot),
                    ("poweroff", ErrorPolicy::Poweroff),
                    ("retry", ErrorPolicy::Retry),
                ],
            )
            .map(|v| cfg.on_error = v),
            "imprint.pubkey" => signature::parse_public_key(&value)
                .map(|_| cfg.pubkey = Some(value.clone()))
                .map_err(|e| e.to_string()),
            "imprint.hostname" => parse_hostname(&value).map(|v| cfg.hostname = Some(v)),
            "imprint.target" => {
                if value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic()) {
                    cfg.target = Some(value.clone());
                    Ok(())
                } else {
                    Err("must be up to 128 printable characters".into())
                }
            }
            "imprint.user-data" => parse_repo_path(&value).map(|v| cfg.user_data = Some(v)),
            "imprint.network-config" => {
                parse_repo_path(&value).map(|v| cfg.network_config = Some(v))
            }
            "imprint.jobs" => match value.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => {
                    cfg.jobs = n;
                    Ok(())
                }
                _ => Err(format!("{value:?} is not a number from 1 to 64")),
            },
            "imprint.dhcp-timeout" => match value.parse::<u64>() {
                Ok(n) if (1..=3600).contains(&n) => {
                    cfg.dhcp_timeout = Duration::from_secs(n);
                    Ok(())
                }
                _ => Err(format!(
                    "{value:?} is not a number of seconds from 1 to 3600"
                )),
            },
            "imprint.debug" => Ok(()),
            "imprint.redeploy" => flag(&value).map(|()| cfg.redeploy = true),
            "imprint.allow-downgrade" => flag(&value).map(|()| cfg.allow_downgrade = true),
            "imprint.min-issued" => {
                super::signature::parse_when(&value, None).map(|t| cfg.min_issued = Some(t))
            }
            "ip" => parse_ip(&value).map(|v| cfg.ip = v),
            "BOOTIF" => parse_bootif(&value).map(|v| cfg.bootif = Some(v)),
            _ => Ok(()),
        };
        if let Err(message) = result {
            problem(&mut problems, &key, message);
        }
    }
    if cfg.mode != Mode::Rollback {
        if cfg.repo.is_empty() {
            cfg.repo = vec![RepoSource::Media {
                by: MediaId::Label(DEFAULT_MEDIA_LABEL.into()),
                dir: DEFAULT_MEDIA_DIR.into(),
            }];
        }
        if cfg.image.is_none() && !problems.iter().any(|p| p.key == "imprint.image") {
            problem(
                &mut problems,
                "imprint.image",
                "is required (NAME:TAG or sha256:<hex>)".into(),
            );
        }
    }
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(CmdlineError(problems))
    }
}

/// The error policy alone, read leniently: it must be known even when the rest of
/// the command line is broken.
pub fn error_policy(cmdline: &str) -> ErrorPolicy {
    split(cmdline)
        .iter()
        .filter_map(|w| w.strip_prefix("imprint.on-error="))
        .next_back()
        .and_then(|v| {
            choice(
                v,
                &[
                    ("reboot", ErrorPolicy::Reboot),
                    ("poweroff", ErrorPolicy::Poweroff),
                    ("retry", ErrorPolicy::Retry),
                ],
            )
            .ok()
        })
        .unwrap_or(ErrorPolicy::Poweroff)
}

/// A key that is on when given, bare or as 1, yes or true.
fn flag(value: &str) -> Result<(), String> {
    match value {
        "" | "1" | "yes" | "true" => Ok(()),
        _ => Err(format!("{value:?}: give it bare, or as 1, yes or true")),
    }
}

fn choice<T: Copy>(value: &str, options: &[(&str, T)]) -> Result<T, String> {
    options
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            format!("{value:?} is not one of {}", names.join(", "))
        })
}

/// `imprint.repo=`: sources separated by commas, each an http(s) URL or a medium.
fn parse_repo(value: &str) -> Result<Vec<RepoSource>, String> {
    let mut out = Vec::new();
    for part in value.split(',') {
        if part.is_empty() {
            return Err(format!("{value:?} has an empty source between commas"));
        }
        let source =
            match part.strip_prefix("media:") {
                Some(medium) => parse_medium(medium)?,
                None => RepoSource::Url(parse_url(part).map_err(|e| {
                    format!("{e} (or media:LABEL for a repository on a boot medium)")
                })?),
            };
        if out.contains(&source) {
            return Err(format!("{value:?} names {part} twice"));
        }
        out.push(source);
    }
    if out.len() > 4 {
        return Err(format!("{value:?}: at most 4 sources"));
    }
    Ok(out)
}

/// `LABEL[/DIR]` or `UUID=…[/DIR]`.
fn parse_medium(value: &str) -> Result<RepoSource, String> {
    let (id, dir) = match value.split_once('/') {
        Some((id, dir)) => (id, parse_repo_path(dir)?),
        None => (value, DEFAULT_MEDIA_DIR.to_string()),
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 36
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    let by = match id.strip_prefix("UUID=") {
        Some(uuid) if plain(uuid) => MediaId::Uuid(uuid.to_string()),
        None if plain(id) => MediaId::Label(id.to_string()),
        _ => {
            return Err(format!(
                "media:{value} must name a file system label or UUID=… (letters, digits, _ . -), then optionally /DIR"
            ));
        }
    };
    Ok(RepoSource::Media { by, dir })
}

fn parse_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or_else(|| format!("{value:?} must be an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{value:?} has a bad port"));
    }
    Ok(value.to_string())
}

/// A file in the repository: a relative path of plain names.
fn parse_repo_path(value: &str) -> Result<String, String> {
    let ok = value.len() <= 255
        && value.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a path in the repository (names of letters, digits, . _ - joined by /, e.g. hosts/node-1/user-data)"
        ))
    }
}

pub(crate) fn parse_hostname(value: &str) -> Result<String, String> {
    let ok = value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!("{value:?} is not a valid host name"))
    }
}

/// A size in bytes: `1000`, `64K`, `512M`, `20G`, `2T` (binary units, any case,
/// with an optional `B` or `iB`: `1MiB`, `2gb`). Shared by the kernel command line
/// and the host's command line.
pub fn parse_size(value: &str) -> Option<u64> {
    let upper = value.trim().to_ascii_uppercase();
    let v = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' => (&v[..v.len() - 1], 10),
        b'M' => (&v[..v.len() - 1], 20),
        b'G' => (&v[..v.len() - 1], 30),
        b'T' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn parse_disk(value: &str) -> Result<DiskSelector, String> {
    if value.starts_with("/dev/") {
        if value.contains("..") {
            return Err(format!("{value:?} must not contain .."));
        }
        return Ok(DiskSelector::Path(value.to_string()));
    }
    let mut hints = DiskHints::default();
    for part in value.split(',') {
        let (k, v) = part.split_once(':').ok_or_else(|| {
            format!("{part:?} is neither a /dev path nor a hint like serial:X, model:X, size:20G, by-path:X")
        })?;
        if v.is_empty() {
            return Err(format!("hint {k} needs a value"));
        }
        match k {
            "serial" => hints.serial = Some(v.to_string()),
            "model" => hints.model = Some(v.to_string()),
            "by-path" => hints.by_path = Some(v.to_string()),
            "size" => {
                hints.size =
                    Some(parse_size(v).ok_or_else(|| format!("{v:?} is not a size like 20G"))?)
            }
            _ => {
                return Err(format!(
                    "unknown disk hint {k:?} (serial, model, size, by-path)"
                ));
            }
        }
    }
    Ok(DiskSelector::Hints(hints))
}

/// The kernel's `ip=` syntax:
/// `ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>`,
/// or `ip=dhcp|on|any|off|none`.
fn parse_ip(value: &str) -> Result<IpConfig, String> {
    match value {
        "dhcp" | "on" | "any" | "both" => return Ok(IpConfig::Dhcp),
        "off" | "none" => return Ok(IpConfig::Off),
        _ => {}
    }
    let fields: Vec<&str> = value.split(':').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    let addr = |i: usize, what: &str| -> Result<Option<Ipv4Addr>, String> {
        match field(i) {
            "" => Ok(None),
            s => s
                .parse()
                .map(Some)
                .map_err(|_| format!("{what} {s:?} is not an IPv4 address")),
        }
    };
    if !matches!(field(6), "" | "off" | "none" | "static") {
        if matches!(field(6), "dhcp" | "on" | "any") {
            return Ok(IpConfig::Dhcp);
        }
        return Err(format!(
            "autoconf {:?} is not supported (off or dhcp)",
            field(6)
        ));
    }
    let address = addr(0, "client address")?
        .ok_or_else(|| format!("{value:?}: static ip= needs a client address"))?;
    let prefix = match addr(3, "netmask")? {
        None => 24,
        Some(mask) => {
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(format!("netmask {mask} is not contiguous"));
            }
            bits.leading_ones() as u8
        }
    };
    let hostname = match field(4) {
        "" => None,
        h => Some(parse_hostname(h)?),
    };
    let device = match field(5) {
        "" => None,
        d => Some(d.to_string()),
    };
    let dns = [addr(7, "dns0")?, addr(8, "dns1")?]
        .into_iter()
        .flatten()
        .collect();
    Ok(IpConfig::Static(StaticIp {
        address,
        prefix,
        gateway: addr(2, "gateway")?,
        hostname,
        device,
        dns,
    }))
}

/// `BOOTIF=01-52-54-00-12-34-56` (hardware type 1, then the MAC), as PXELINUX and
/// iPXE pass it; a bare MAC with `-` or `:` is accepted too.
fn parse_bootif(value: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = value.split(['-', ':']).collect();
    let mac = match parts.len() {
        7 if parts[0] == "01" => &parts[1..],
        6 => &parts[..],
        _ => {
            return Err(format!(
                "{value:?} is not a MAC address like 01-52-54-00-12-34-56"
            ));
        }
    };
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(mac) {
        *o = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("{value:?} is not a MAC address"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "imprint.repo=http://10.0.2.2:8080 imprint.image=os:v1";

    #[test]
    fn repositories_on_media_and_networks_are_asked_in_order() {
        let media = |by: MediaId, dir: &str| RepoSource::Media {
            by,
            dir: dir.into(),
        };
        let cfg = parse("imprint.repo=media:USB_1,https://mirror.example/repo imprint.image=os:v1")
            .unwrap();
        assert_eq!(
            cfg.repo,
            [
                media(MediaId::Label("USB_1".into()), DEFAULT_MEDIA_DIR),
                RepoSource::Url("https://mirror.example/repo".into()),
            ]
        );
        let cfg =
            parse("imprint.repo=media:UUID=2026-12-01-10-00-00-00/images/x imprint.image=os:v1")
                .unwrap();
        assert_eq!(
            cfg.repo,
            [media(
                MediaId::Uuid("2026-12-01-10-00-00-00".into()),
                "images/x"
            )]
        );
        assert_eq!(
            cfg.repo[0].to_string(),
            "media:UUID=2026-12-01-10-00-00-00/images/x"
        );
        // Not given: the medium imprint media build makes.
        let cfg = parse("imprint.image=os:v1").unwrap();
        assert_eq!(
            cfg.repo,
            [media(
                MediaId::Label(DEFAULT_MEDIA_LABEL.into()),
                DEFAULT_MEDIA_DIR
            )]
        );
        assert_eq!(cfg.repo[0].to_string(), "media:IMPRINT");
    }

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split(r#"a=1  b="x y" "c=3" -- init args"#),
            vec!["a=1", "b=x y", "c=3"]
        );
        assert_eq!(split(""), Vec::<String>::new());
    }

    #[test]
    fn full_command_line() {
        let key = signature::public_key_text(
            &ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key(),
        );
        let cfg = parse(&format!(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 quiet {BASE} imprint.disk=serial:ABC,size:20G \
             imprint.mode=upgrade imprint.previous=/dev/vdb imprint.handoff=kexec \
             imprint.pubkey={key} imprint.status=http://10.0.2.2:8080/status \
             imprint.on-error=retry imprint.hostname=node-1.example imprint.jobs=8 \
             BOOTIF=01-52-54-00-12-34-56 ip=10.0.2.15::10.0.2.2:255.255.255.0:h:eth0:off:10.0.2.3"
        ))
        .unwrap();
        assert_eq!(cfg.repo, [RepoSource::Url("http://10.0.2.2:8080".into())]);
        assert_eq!(cfg.image, Some("os:v1".parse().unwrap()));
        assert_eq!(
            cfg.disk,
            Some(DiskSelector::Hints(DiskHints {
                serial: Some("ABC".into()),
                size: Some(20 << 30),
                ..DiskHints::default()
            }))
        );
        assert_eq!(cfg.mode, Mode::Upgrade);
        assert_eq!(cfg.previous, Some(DiskSelector::Path("/dev/vdb".into())));
        assert_eq!(cfg.handoff, Handoff::Kexec);
        assert_eq!(cfg.pubkey, Some(key));
        assert_eq!(cfg.on_error, ErrorPolicy::Retry);
        assert_eq!(cfg.hostname.as_deref(), Some("node-1.example"));
        assert_eq!(cfg.jobs, 8);
        assert_eq!(cfg.bootif, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(
            cfg.ip,
            IpConfig::Static(StaticIp {
                address: "10.0.2.15".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.0.2.2".parse().unwrap()),
                hostname: Some("h".into()),
                device: Some("eth0".into()),
                dns: vec!["10.0.2.3".parse().unwrap()],
            })
        );
    }

    #[test]
    fn defaults() {
        let cfg = parse(BASE).unwrap();
        assert_eq!(cfg.mode, Mode::Deploy);
        assert_eq!(cfg.handoff, Handoff::Reboot);
        assert_eq!(cfg.on_error, ErrorPolicy::Poweroff);
        assert_eq!(cfg.ip, IpConfig::Dhcp);
        assert_eq!(cfg.jobs, DEFAULT_JOBS);
        assert_eq!(cfg.disk, None);
    }

    /// The provisioning server's credential and the freshness floor: read,
    /// checked, and never shown by `Debug`.
    #[test]
    fn a_credential_and_a_minimum_issue_time() {
        let c = parse(&format!(
            "{BASE} imprint.credential=abc-DEF_123 imprint.min-issued=2027-01-31"
        ))
        .unwrap();
        assert_eq!(c.credential, Some(Secret("abc-DEF_123".into())));
        assert_eq!(c.min_issued, Some(1_801_353_600));
        assert!(!format!("{c:?}").contains("abc-DEF_123"));
        let c = parse(&format!("{BASE} imprint.min-issued=1801353600")).unwrap();
        assert_eq!(c.min_issued, Some(1_801_353_600));
        for bad in [
            "imprint.credential=a;b",
            "imprint.credential=a$b",
            "imprint.min-issued=soon",
            "imprint.min-issued=90d",
        ] {
            let key = bad.split('=').next().unwrap();
            assert_eq!(problems(&format!("{BASE} {bad}")), [key], "{bad}");
        }
        let long = "a".repeat(MAX_CREDENTIAL + 1);
        assert_eq!(
            problems(&format!("{BASE} imprint.credential={long}")),
            ["imprint.credential"]
        );
    }

    fn problems(cmdline: &str) -> Vec<String> {
        parse(cmdline)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.key)
            .collect()
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        assert_eq!(
            problems(&format!("{BASE} imprint.colour=blue")),
            ["imprint.colour"]
        );
        assert_eq!(
            problems(&format!("{BASE} imprint.handoff=teleport")),
            ["imprint.handoff"]
        );
        assert_eq!(
            problems(&format!("{BASE} imprint.jobs=0")),
            ["imprint.jobs"]
        );
        assert_eq!(
            problems(&format!("{BASE} imprint.pubkey=abc")),
            ["imprint.pubkey"]
        );
        assert_eq!(
            problems(&format!("{BASE} imprint.disk=vda")),
            ["imprint.disk"]
        );
        assert_eq!(
            problems(&format!("{BASE} imprint.disk=size:lots")),
            ["imprint.disk"]
        );
        assert_eq!(
            problems(&format!("{BASE} imprint.hostname=-bad-")),
            ["imprint.hostname"]
        );
        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", "a b", "x/.."] {
            assert_eq!(
                problems(&format!("{BASE} \"imprint.user-data={bad}\"")),
                ["imprint.user-data"],
                "{bad}"
            );
        }
        assert_eq!(
            problems(&format!("{BASE} imprint.network-config=a/../b")),
            ["imprint.network-config"]
        );
        let cfg = parse(&format!(
            "{BASE} imprint.user-data=hosts/node-1/user-data imprint.network-config=hosts/node-1/net.yaml"
        ))
        .unwrap();
        assert_eq!(cfg.user_data.as_deref(), Some("hosts/node-1/user-data"));
        assert_eq!(cfg.network_config.as_deref(), Some("hosts/node-1/net.yaml"));
        assert_eq!(
            problems(&format!("{BASE} imprint.status=ftp://x")),
            ["imprint.status"]
        );
        assert_eq!(problems(&format!("{BASE} ip=1.2.3:::")), ["ip"]);
        assert_eq!(
            problems(&format!("{BASE} ip=10.0.0.2::10.0.0.1:255.0.255.0")),
            ["ip"]
        );
        assert_eq!(problems(&format!("{BASE} BOOTIF=zz")), ["BOOTIF"]);
        assert_eq!(
            problems(&format!("{BASE} imprint.proxy=https://squid:3128")),
            ["imprint.proxy"]
        );
        let cfg = parse(&format!("{BASE} imprint.proxy=http://10.0.2.2:3128")).unwrap();
        assert_eq!(cfg.proxy.as_deref(), Some("http://10.0.2.2:3128"));
        assert_eq!(problems(&format!("{BASE} imprint.mode")), ["imprint.mode"]);
        assert_eq!(
            problems("imprint.repo=media: imprint.image=os:v1"),
            ["imprint.repo"]
        );
        assert_eq!(
            problems("imprint.repo=media:a/../b imprint.image=os:v1"),
            ["imprint.repo"]
        );
        assert_eq!(
            problems("imprint.repo=media:A,,http://h imprint.image=os:v1"),
            ["imprint.repo"]
        );
        assert_eq!(
            problems("imprint.repo=media:A,media:A imprint.image=os:v1"),
            ["imprint.repo"]
        );
        assert_eq!(
            problems("imprint.repo=http://h imprint.image=../x"),
            ["imprint.image"]
        );
        // All at once, in order.
        assert_eq!(
            problems("imprint.repo=x imprint.image=os:v1 imprint.bogus=1 imprint.jobs=99"),
            ["imprint.repo", "imprint.bogus", "imprint.jobs"]
        );
        let err = parse(&format!("{BASE} imprint.colour=blue")).unwrap_err();
        assert!(err.to_string().contains("imprint.colour: unknown key"));
    }

    #[test]
    fn rollback_needs_no_repository() {
        let cfg = parse("imprint.mode=rollback").unwrap();
        assert_eq!(cfg.mode, Mode::Rollback);
    }

    #[test]
    fn ip_shorthands_and_bare_macs() {
        assert_eq!(parse(&format!("{BASE} ip=off")).unwrap().ip, IpConfig::Off);
        assert_eq!(
            parse(&format!("{BASE} ip=::::::dhcp")).unwrap().ip,
            IpConfig::Dhcp
        );
        assert_eq!(
            parse(&format!("{BASE} BOOTIF=52:54:00:12:34:56"))
                .unwrap()
                .bootif,
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 1u64;
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(x % 90) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(b" =:.,-\"imprint.diskpjob0123/"[(x % 28) as usize] as char);
            }
            let _ = parse(&s);
            let _ = parse(&format!("{BASE} imprint.disk={s} ip={s} BOOTIF={s}"));
        }
    }
}
