//! The fields an entry shares with the default: image, host settings (checked
//! by the deploy environment's own parser), kernel arguments; and file names and
//! escaping for messages.

use super::Common;
use crate::format::cmdline;
use crate::format::digest::ImageRef;
use serde_json::Value;
use std::collections::BTreeMap;

/// The host settings an inventory may give; the server sets the others itself
/// (`imprint.repo`, `imprint.image`, `imprint.hostname`, `imprint.status`,
/// `imprint.user-data`, `imprint.network-config`) from the entry's fields.
const SETTINGS: &[&str] = &[
    "disk",
    "previous",
    "mode",
    "handoff",
    "pubkey",
    "on-error",
    "allow-downgrade",
    "min-issued",
    "jobs",
    "dhcp-timeout",
    "debug",
    "target",
];

pub(super) fn common(
    image: Option<String>,
    settings: BTreeMap<String, Value>,
    extra: Option<Value>,
    local_boot: Option<String>,
) -> Result<Common, String> {
    let image = image
        .map(|i| {
            i.parse::<ImageRef>()
                .map_err(|e| format!("image: {}: {e}", escape(&i)))
        })
        .transpose()?;
    let mut checked = BTreeMap::new();
    for (key, value) in settings {
        if let Some(v) = setting(&key, &value)? {
            checked.insert(key, v);
        }
    }
    let words = match extra {
        None => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err("cmdline: give strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("cmdline: give a string or a list of strings".into()),
    };
    for w in &words {
        if !crate::format::ipxe::is_word(w) {
            return Err(format!(
                "cmdline: {:?} is not one kernel argument (letters, digits and - . _ ~ : / ? = + , @ % * ( ) [ ] only)",
                escape(w)
            ));
        }
        if w.starts_with("imprint.") {
            return Err(format!(
                "cmdline: {:?}: give imprint. keys under settings, where they are checked",
                escape(w)
            ));
        }
    }
    let local_boot = local_boot
        .map(|l| l.parse().map_err(|e| format!("local-boot: {e}")))
        .transpose()?;
    Ok(Common {
        image,
        settings: checked,
        cmdline: words,
        local_boot,
    })
}

/// One `settings` entry as the text after `imprint.KEY=`, checked by the deploy
/// environment's own command-line parser; `None` for a flag that is off.
fn setting(key: &str, value: &Value) -> Result<Option<String>, String> {
    if !SETTINGS.contains(&key) {
        return Err(format!(
            "settings: {:?} is not a host setting (known: {})",
            escape(key),
            SETTINGS.join(", ")
        ));
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Bool(true) => String::new(),
        Value::Bool(false) => return Ok(None),
        _ => return Err(format!("settings: {key}: give a string, number or true")),
    };
    if !text.is_empty() && !crate::format::ipxe::is_word(&text) {
        return Err(format!(
            "settings: {key}: {:?} is not one kernel argument (letters, digits and - . _ ~ : / ? = + , @ % * ( ) [ ] only)",
            escape(&text)
        ));
    }
    let word = if text.is_empty() {
        format!("imprint.{key}")
    } else {
        format!("imprint.{key}={text}")
    };
    // Checked in a command line that is otherwise complete.
    let line = format!("imprint.repo=http://server imprint.image=a:b {word}");
    if let Err(cmdline::CmdlineError(problems)) = cmdline::parse(&line)
        && let Some(p) = problems.iter().find(|p| p.key == format!("imprint.{key}"))
    {
        return Err(format!("settings: {key}: {}", p.message));
    }
    Ok(Some(text))
}

/// A file next to the inventory: one plain name, no directories.
pub(super) fn check_file_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{:?} is not a file name next to the inventory (letters, digits, . _ -)",
            escape(name)
        ))
    }
}

/// `s` as it may be shown in a message: control characters escaped, at most
/// 64 characters.
pub(super) fn escape(s: &str) -> String {
    let head: String = s.chars().take(64).collect();
    let mut out = crate::format::http::printable(&head);
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}
