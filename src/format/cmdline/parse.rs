//! The command line split into words and read key by key into a [`Config`],
//! every problem collected by its key.

use super::config::{
    CmdlineError, Config, DEFAULT_JOBS, DEFAULT_MEDIA_DIR, DEFAULT_MEDIA_LABEL, ErrorPolicy,
    Handoff, IpConfig, MAX_CREDENTIAL, MediaId, Mode, Problem, RepoSource, Secret,
};
use super::values::{
    parse_bootif, parse_disk, parse_hostname, parse_ip, parse_repo, parse_repo_path, parse_url,
};
use crate::format::digest::ImageRef;
use crate::format::signature;
use std::time::Duration;

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
    "imprint.capture-token",
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

/// What a capture needs beyond a deploy: one server to upload to, a name and
/// tag to store under, and a credential.
fn capture_needs(cfg: &Config, problems: &mut Vec<Problem>) {
    let mut say = |key: &str, message: &str| {
        problems.push(Problem {
            key: key.into(),
            message: message.into(),
        })
    };
    match cfg.repo.as_slice() {
        [RepoSource::Url(_)] => {}
        _ => say(
            "imprint.repo",
            "a capture needs one http:// or https:// repository: the imprint serve that stores it",
        ),
    }
    if matches!(cfg.image, Some(ImageRef::Digest(_))) {
        say(
            "imprint.image",
            "a capture is stored under NAME:TAG, not a digest",
        );
    }
    if cfg.capture_token.is_none() && cfg.credential.is_none() {
        say(
            "imprint.capture-token",
            "a capture needs the server's capture token (or the credential a provisioning server gives)",
        );
    }
}

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
        capture_token: None,
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
            "imprint.proxy" => crate::format::http::parse_proxy_url(&value)
                .map(|_| cfg.proxy = Some(value.clone())),
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
            "imprint.capture-token" => {
                if value.len() <= MAX_CREDENTIAL && value.bytes().all(|b| b.is_ascii_graphic()) {
                    cfg.capture_token = Some(Secret(value.clone()));
                    Ok(())
                } else {
                    Err(format!(
                        "must be up to {MAX_CREDENTIAL} printable characters without spaces"
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
                    ("capture", Mode::Capture),
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
                signature::parse_when(&value, None).map(|t| cfg.min_issued = Some(t))
            }
            "ip" => parse_ip(&value).map(|v| cfg.ip = v),
            "BOOTIF" => parse_bootif(&value).map(|v| cfg.bootif = Some(v)),
            _ => Ok(()),
        };
        if let Err(message) = result {
            problem(&mut problems, &key, message);
        }
    }
    if cfg.mode == Mode::Capture {
        capture_needs(&cfg, &mut problems);
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
