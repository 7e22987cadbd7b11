//! The syntax of single values: repositories and media, URLs, repository paths,
//! host names, sizes, disks, the kernel's `ip=` and PXE's `BOOTIF=`.

use super::config::{
    DEFAULT_MEDIA_DIR, DiskHints, DiskSelector, IpConfig, MediaId, RepoSource, StaticIp,
};
use std::net::Ipv4Addr;

/// `imprint.repo=`: sources separated by commas, each an http(s) URL or a medium.
pub(super) fn parse_repo(value: &str) -> Result<Vec<RepoSource>, String> {
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

pub(super) fn parse_url(value: &str) -> Result<String, String> {
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
pub(super) fn parse_repo_path(value: &str) -> Result<String, String> {
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

pub(super) fn parse_disk(value: &str) -> Result<DiskSelector, String> {
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
pub(super) fn parse_ip(value: &str) -> Result<IpConfig, String> {
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
pub(super) fn parse_bootif(value: &str) -> Result<[u8; 6], String> {
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
