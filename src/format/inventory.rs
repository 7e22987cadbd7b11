//! The inventory of `imprint serve --hosts FILE`: what each machine, known by the
//! MAC address it network-boots with, is to run. TOML, edited by hand:
//!
//! ```toml
//! [default]                    # machines not listed below
//! action = "register"          # boot them local and list them (or "deploy")
//! image = "web:v2"             # what "deploy" deploys
//!
//! [hosts."52:54:00:12:34:56"]
//! hostname = "node-1"
//! image = "web:v2"             # or a pinned sha256:… manifest digest
//! settings = { disk = "/dev/vda", handoff = "kexec" }   # imprint.KEY=VALUE
//! cmdline = ["console=ttyS0,115200"]                    # more kernel arguments
//! user-data = "node-1.user-data"     # cloud-init files, next to the inventory
//! network-config = "node-1.network"
//! local-boot = "sanboot"       # exit | sanboot | sanboot:0x81 | chain:URL
//! reprovision = 1              # each new value deploys the machine once more
//! ```
//!
//! A file that is not TOML is rejected whole (the server keeps the inventory it
//! had). An entry that is wrong is reported by its name and line and left out;
//! the others work. Everything here ends up on a kernel command line inside an
//! iPXE script, so values are kept to characters that cannot break out of it
//! ([`super::ipxe::is_word`]).

use super::cmdline;
use super::digest::ImageRef;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// An Ethernet address; shown as iPXE's `${net0/mac}` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    /// `52:54:00:12:34:56`, `52-54-00-12-34-56` or `525400123456`, either case.
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("{:?} is not a MAC address (like 52:54:00:12:34:56)", s);
        let hex: String = if s.len() == 17 {
            let sep = s.as_bytes()[2];
            if !(sep == b':' || sep == b'-') || s.bytes().skip(2).step_by(3).any(|b| b != sep) {
                return Err(bad());
            }
            s.split(sep as char).collect()
        } else {
            s.to_string()
        };
        if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// How iPXE hands a machine that is not to deploy to its own disk. Which works
/// depends on the firmware: `exit` returns to it (UEFI then tries the next boot
/// entry; many BIOSes do too, some stop), `sanboot` boots a BIOS drive directly,
/// `chain` loads a loader from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalBoot {
    Exit,
    /// A BIOS drive number (0x80 is the first disk).
    Sanboot(u8),
    Chain(String),
}

impl FromStr for LocalBoot {
    type Err = String;
    fn from_str(s: &str) -> Result<LocalBoot, String> {
        if s == "exit" {
            return Ok(LocalBoot::Exit);
        }
        if s == "sanboot" {
            return Ok(LocalBoot::Sanboot(0x80));
        }
        if let Some(drive) = s.strip_prefix("sanboot:") {
            let n = drive
                .strip_prefix("0x")
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|n| *n >= 0x80)
                .ok_or_else(|| format!("{drive:?} is not a BIOS disk number (0x80 to 0xff)"))?;
            return Ok(LocalBoot::Sanboot(n));
        }
        if let Some(url) = s.strip_prefix("chain:") {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && super::ipxe::is_word(url);
            return if ok {
                Ok(LocalBoot::Chain(url.to_string()))
            } else {
                Err(format!(
                    "{url:?} is not an http:// or https:// URL iPXE can load (letters, digits and - . _ ~ : / ? = + , @ % * ( ) [ ] only)"
                ))
            };
        }
        Err(format!(
            "{s:?} is not one of exit, sanboot, sanboot:0xNN, chain:URL"
        ))
    }
}

impl fmt::Display for LocalBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalBoot::Exit => write!(f, "exit"),
            LocalBoot::Sanboot(0x80) => write!(f, "sanboot"),
            LocalBoot::Sanboot(n) => write!(f, "sanboot:{n:#04x}"),
            LocalBoot::Chain(url) => write!(f, "chain:{url}"),
        }
    }
}

/// What happens to a machine the inventory does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultAction {
    /// It boots its own disk and is listed, for the operator to add.
    Register,
    /// It gets the default image.
    Deploy,
}

/// What is common to a listed machine and the default for unlisted ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Common {
    pub image: Option<ImageRef>,
    /// `imprint.KEY=VALUE` for the deploy environment (KEY without its prefix;
    /// an empty VALUE stands for a bare flag).
    pub settings: BTreeMap<String, String>,
    /// More kernel arguments.
    pub cmdline: Vec<String>,
    pub local_boot: Option<LocalBoot>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub mac: Mac,
    /// Where the entry starts in the file (1-based), for messages.
    pub line: usize,
    pub hostname: Option<String>,
    pub common: Common,
    /// cloud-init files, by name relative to the inventory's directory.
    pub user_data: Option<String>,
    pub network_config: Option<String>,
    /// A value the operator changes to deploy the machine once more.
    pub reprovision: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub action: DefaultAction,
    pub common: Common,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            action: DefaultAction::Register,
            common: Common::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub defaults: Defaults,
    pub hosts: BTreeMap<Mac, Host>,
}

/// Something wrong in the file, by line and entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {entry}: {message}")]
pub struct Problem {
    pub line: usize,
    /// `hosts."52:54:00:12:34:56"`, `default`, or `file`.
    pub entry: String,
    pub message: String,
}

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

/// The inventory in `text`, with the problems of the entries left out; a file
/// that is not TOML at all is one problem and no inventory.
pub fn parse(text: &str) -> Result<(Inventory, Vec<Problem>), Problem> {
    let top: BTreeMap<String, Value> = basic_toml::from_str(text).map_err(|e| {
        let mut message = e.to_string();
        // The line is given apart; the message need not repeat it.
        if let Some(at) = message.find(" at line ") {
            message.truncate(at);
        }
        Problem {
            line: e.line_col().map_or(1, |(line, _)| line + 1),
            entry: "file".into(),
            message,
        }
    })?;
    let mut inventory = Inventory::default();
    let mut problems = Vec::new();
    for (key, value) in &top {
        let line = line_of(text, key, None);
        match key.as_str() {
            "default" => match defaults(value) {
                Ok(d) => inventory.defaults = d,
                Err(message) => problems.push(Problem {
                    line,
                    entry: "default".into(),
                    message: format!("{message}; machines not listed register and boot local"),
                }),
            },
            "hosts" => {
                let Some(table) = value.as_object() else {
                    problems.push(Problem {
                        line,
                        entry: "hosts".into(),
                        message: "must be a table of machines by MAC address".into(),
                    });
                    continue;
                };
                hosts(text, table, &mut inventory, &mut problems);
            }
            other => problems.push(Problem {
                line,
                entry: escape(other),
                message: "unknown section (known: default, hosts)".into(),
            }),
        }
    }
    problems.sort_by_key(|p| p.line);
    Ok((inventory, problems))
}

/// The line where the key `name` (below `within`, when given) is written: a
/// table header naming it, or else a line that sets it. The parser keeps no
/// positions, and messages need only point the operator at the entry.
fn line_of(text: &str, name: &str, within: Option<&str>) -> usize {
    let names = |line: &str| {
        line.contains(&format!("\"{name}\""))
            || line.contains(&format!("'{name}'"))
            || line.contains(name)
    };
    let header = text.lines().position(|l| {
        let l = l.trim_start();
        l.starts_with('[') && names(l) && within.is_none_or(|w| l.contains(w))
    });
    let setting = || {
        text.lines().position(|l| {
            let l = l.trim_start();
            !l.starts_with('#') && names(l) && l.contains('=')
        })
    };
    header.or_else(setting).map_or(1, |i| i + 1)
}

/// The machines of the `hosts` table, in the file's order (so a repeated
/// machine is reported where it repeats).
fn hosts(
    text: &str,
    table: &serde_json::Map<String, Value>,
    inventory: &mut Inventory,
    problems: &mut Vec<Problem>,
) {
    let mut entries: Vec<(usize, &String, &Value)> = table
        .iter()
        .map(|(name, value)| (line_of(text, name, Some("hosts")), name, value))
        .collect();
    entries.sort_by_key(|(line, _, _)| *line);
    for (line, name, value) in entries {
        let entry = format!("hosts.{}", escape(name));
        let mac = match name.parse::<Mac>() {
            Ok(m) => m,
            Err(message) => {
                problems.push(Problem {
                    line,
                    entry,
                    message,
                });
                continue;
            }
        };
        if let Some(first) = inventory.hosts.get(&mac) {
            problems.push(Problem {
                line,
                entry,
                message: format!(
                    "{mac} is listed already, on line {}; this entry is left out",
                    first.line
                ),
            });
            continue;
        }
        match host(mac, line, value) {
            Ok(h) => {
                inventory.hosts.insert(mac, h);
            }
            Err(message) => problems.push(Problem {
                line,
                entry,
                message: format!("{message}; the machine is treated as not listed"),
            }),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHost {
    hostname: Option<String>,
    image: Option<String>,
    #[serde(default)]
    settings: BTreeMap<String, Value>,
    cmdline: Option<Value>,
    user_data: Option<String>,
    network_config: Option<String>,
    local_boot: Option<String>,
    reprovision: Option<Value>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDefaults {
    action: Option<String>,
    image: Option<String>,
    #[serde(default)]
    settings: BTreeMap<String, Value>,
    cmdline: Option<Value>,
    local_boot: Option<String>,
}

fn serde_message(e: serde_json::Error) -> String {
    // The position is in the parsed value, not the file: leave it out.
    let text = e.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn host(mac: Mac, line: usize, value: &Value) -> Result<Host, String> {
    let raw: RawHost = serde_json::from_value(value.clone()).map_err(serde_message)?;
    let hostname = raw
        .hostname
        .map(|h| cmdline::parse_hostname(&h).map_err(|e| format!("hostname: {e}")))
        .transpose()?;
    let file = |what: &str, name: Option<String>| {
        name.map(|n| check_file_name(&n).map_err(|e| format!("{what}: {e}")))
            .transpose()
    };
    let reprovision = match raw.reprovision {
        None => None,
        Some(Value::String(s)) if s.len() <= 64 && super::ipxe::is_word(&s) => Some(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(_) => {
            return Err(
                "reprovision: give a number or a short word, and change it to deploy again".into(),
            );
        }
    };
    Ok(Host {
        mac,
        line,
        hostname,
        common: common(raw.image, raw.settings, raw.cmdline, raw.local_boot)?,
        user_data: file("user-data", raw.user_data)?,
        network_config: file("network-config", raw.network_config)?,
        reprovision,
    })
}

fn defaults(value: &Value) -> Result<Defaults, String> {
    let raw: RawDefaults = serde_json::from_value(value.clone()).map_err(serde_message)?;
    let action = match raw.action.as_deref() {
        None | Some("register") => DefaultAction::Register,
        Some("deploy") => DefaultAction::Deploy,
        Some(other) => {
            return Err(format!(
                "action: {:?} is not one of register, deploy",
                escape(other)
            ));
        }
    };
    let common = common(raw.image, raw.settings, raw.cmdline, raw.local_boot)?;
    if action == DefaultAction::Deploy && common.image.is_none() {
        return Err("action = \"deploy\" needs an image".into());
    }
    Ok(Defaults { action, common })
}

fn common(
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
        if !super::ipxe::is_word(w) {
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
    if !text.is_empty() && !super::ipxe::is_word(&text) {
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
fn check_file_name(name: &str) -> Result<String, String> {
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
fn escape(s: &str) -> String {
    let head: String = s.chars().take(64).collect();
    let mut out = super::http::printable(&head);
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
# The rack.
[default]
action = "deploy"
image = "web:v2"
local-boot = "exit"

[hosts."52:54:00:12:34:56"]
hostname = "node-1"
image = "db:v7"
settings = { disk = "/dev/vda", handoff = "kexec", allow-downgrade = true, debug = false }
cmdline = ["console=ttyS0,115200", "nomodeset"]
user-data = "node-1.user-data"
network-config = "node-1.network"
local-boot = "sanboot:0x81"
reprovision = 3

[hosts."52-54-00-AA-BB-CC"]
cmdline = "quiet  loglevel=3"
"#;

    #[test]
    fn a_whole_inventory_reads_back() {
        let (inv, problems) = parse(GOOD).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(inv.defaults.action, DefaultAction::Deploy);
        assert_eq!(inv.defaults.common.image, Some("web:v2".parse().unwrap()));
        assert_eq!(inv.defaults.common.local_boot, Some(LocalBoot::Exit));
        let one = &inv.hosts[&"52:54:00:12:34:56".parse().unwrap()];
        assert_eq!(one.line, 8);
        assert_eq!(one.hostname.as_deref(), Some("node-1"));
        assert_eq!(one.common.image, Some("db:v7".parse().unwrap()));
        let settings: Vec<(&str, &str)> = one
            .common
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            settings,
            [
                ("allow-downgrade", ""),
                ("disk", "/dev/vda"),
                ("handoff", "kexec")
            ]
        );
        assert_eq!(one.common.cmdline, ["console=ttyS0,115200", "nomodeset"]);
        assert_eq!(one.user_data.as_deref(), Some("node-1.user-data"));
        assert_eq!(one.network_config.as_deref(), Some("node-1.network"));
        assert_eq!(one.common.local_boot, Some(LocalBoot::Sanboot(0x81)));
        assert_eq!(one.reprovision.as_deref(), Some("3"));
        let two = &inv.hosts[&Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])];
        assert_eq!(two.line, 18);
        assert_eq!(two.common.cmdline, ["quiet", "loglevel=3"]);
        assert_eq!(two.common.image, None);
    }

    #[test]
    fn macs_in_every_spelling_and_nothing_else() {
        let want = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        for s in [
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "525400123456",
            "52:54:00:12:34:56".to_uppercase().as_str(),
        ] {
            assert_eq!(s.parse::<Mac>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:12:34:56");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54-00:12:34:56",
            "52:54:00:12:34:5g",
            "5254001234567",
            "52:54:00:12:34:56:78",
            "+2:54:00:12:34:56",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_entries_are_named_by_line_and_the_rest_work() {
        let text = r#"[hosts."52:54:00:00:00:01"]
hostname = "good-1"

[hosts."not-a-mac"]
hostname = "x"

[hosts."52:54:00:00:00:02"]
hostname = "bad name!"

[hosts."52:54:00:00:00:03"]
colour = "blue"

[hosts."52-54-00-00-00-01"]
hostname = "again"

[hosts."52:54:00:00:00:04"]
settings = { repo = "http://elsewhere" }

[hosts."52:54:00:00:00:05"]
settings = { jobs = "many" }

[hosts."52:54:00:00:00:06"]
cmdline = ["ok", "imprint.disk=/dev/sda"]

[hosts."52:54:00:00:00:07"]
cmdline = ["a${x}"]

[hosts."52:54:00:00:00:08"]
user-data = "../../etc/shadow"

[hosts."52:54:00:00:00:09"]
image = "no tag"

[hosts."52:54:00:00:00:0a"]
local-boot = "sanboot:0x10"

[hosts."52:54:00:00:00:0b"]
hostname = "good-2"
"#;
        let (inv, problems) = parse(text).unwrap();
        let names: Vec<Option<&str>> = inv.hosts.values().map(|h| h.hostname.as_deref()).collect();
        assert_eq!(names, [Some("good-1"), Some("good-2")]);
        let got: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.line, p.entry.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (4, "hosts.not-a-mac"),
                (7, "hosts.52:54:00:00:00:02"),
                (10, "hosts.52:54:00:00:00:03"),
                (13, "hosts.52-54-00-00-00-01"),
                (16, "hosts.52:54:00:00:00:04"),
                (19, "hosts.52:54:00:00:00:05"),
                (22, "hosts.52:54:00:00:00:06"),
                (25, "hosts.52:54:00:00:00:07"),
                (28, "hosts.52:54:00:00:00:08"),
                (31, "hosts.52:54:00:00:00:09"),
                (34, "hosts.52:54:00:00:00:0a"),
            ]
        );
        let text_of = |line: usize| {
            problems
                .iter()
                .find(|p| p.line == line)
                .unwrap()
                .to_string()
        };
        assert!(text_of(10).contains("colour"), "{}", text_of(10));
        assert!(
            text_of(13).contains("listed already, on line 1"),
            "{}",
            text_of(13)
        );
        assert!(
            text_of(16).contains("not a host setting"),
            "{}",
            text_of(16)
        );
        assert!(
            text_of(19).contains("jobs: \"many\" is not a number"),
            "{}",
            text_of(19)
        );
        assert!(text_of(22).contains("under settings"), "{}", text_of(22));
    }

    #[test]
    fn a_file_that_is_not_toml_is_one_problem_with_its_line() {
        let e = parse("[hosts.\"52:54:00:00:00:01\"]\nhostname = \"a\"\nhostname = \"b\"\n")
            .unwrap_err();
        assert_eq!((e.line, e.entry.as_str()), (3, "file"));
        let e = parse("[default]\naction = \n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn a_bad_default_falls_back_to_register_and_says_so() {
        let (inv, problems) = parse("[default]\naction = \"deploy\"\n\n[other]\n").unwrap();
        assert_eq!(inv.defaults, Defaults::default());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("needs an image"));
        assert_eq!(problems[1].entry, "other");
    }

    #[test]
    fn hostile_names_are_escaped_in_messages() {
        let (_, problems) = parse("[hosts.\"\\u001b[2J<script>\"]\n").unwrap();
        let shown = problems[0].to_string();
        assert!(!shown.contains('\u{1b}'), "{shown}");
        assert!(shown.contains("\\u{1b}"), "{shown}");
    }

    #[test]
    fn local_boot_methods_read_and_print_back() {
        for s in [
            "exit",
            "sanboot",
            "sanboot:0x81",
            "chain:http://boot/grub.efi",
        ] {
            assert_eq!(s.parse::<LocalBoot>().unwrap().to_string(), s);
        }
        for bad in [
            "reboot",
            "sanboot:0x7f",
            "sanboot:80",
            "chain:ftp://x",
            "chain:http://a b",
            "chain:http://${x}",
        ] {
            assert!(bad.parse::<LocalBoot>().is_err(), "{bad}");
        }
    }
}
