//! The TOML read into an [`Inventory`]: the sections, the machines in the file's
//! order, and each entry's problems by its line.

use super::fields::{check_file_name, common, escape};
use super::values::Mac;
use super::{DefaultAction, Defaults, Host, Inventory, Problem};
use crate::format::cmdline;
use crate::format::digest::ImageRef;
use serde_json::Value;
use std::collections::BTreeMap;

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
    capture: Option<String>,
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
        Some(Value::String(s)) if s.len() <= 64 && crate::format::ipxe::is_word(&s) => Some(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(_) => {
            return Err(
                "reprovision: give a number or a short word, and change it to deploy again".into(),
            );
        }
    };
    let capture = raw.capture.map(|c| capture(&c)).transpose()?;
    // One entry says what one next network boot does: read the disk, or
    // write it. Deploying the captured image to the machine itself is a
    // change of its entry (image = in place of capture =) and a reprovision.
    if capture.is_some() && raw.image.is_some() {
        return Err(
            "capture and image: give one; capture = reads the machine's disk into the repository, image = deploys to it (to deploy the captured image here, replace capture = with image = and reprovision)"
                .into(),
        );
    }
    Ok(Host {
        mac,
        line,
        hostname,
        common: common(raw.image, raw.settings, raw.cmdline, raw.local_boot)?,
        user_data: file("user-data", raw.user_data)?,
        network_config: file("network-config", raw.network_config)?,
        reprovision,
        capture,
    })
}

/// A `capture` value: the NAME:TAG a capture is published as (a digest names
/// an image that exists already).
fn capture(value: &str) -> Result<ImageRef, String> {
    match value.parse::<ImageRef>() {
        Ok(tag @ ImageRef::Tag { .. }) => Ok(tag),
        Ok(ImageRef::Digest(_)) => Err(format!(
            "capture: {}: give the NAME:TAG the captured image is published as, not a digest",
            escape(value)
        )),
        Err(e) => Err(format!("capture: {}: {e}", escape(value))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::inventory::LocalBoot;

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
    fn a_capture_names_one_tag_and_never_goes_with_an_image() {
        let text = r#"[hosts."52:54:00:00:00:01"]
capture = "golden:1"
settings = { disk = "/dev/sda" }

[hosts."52:54:00:00:00:02"]
capture = "golden:1"
image = "web:v2"

[hosts."52:54:00:00:00:03"]
capture = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

[hosts."52:54:00:00:00:04"]
capture = "no tag"

[default]
capture = "golden:1"
"#;
        let (inv, problems) = parse(text).unwrap();
        let golden = &inv.hosts[&Mac([0x52, 0x54, 0, 0, 0, 1])];
        assert_eq!(golden.capture, Some("golden:1".parse().unwrap()));
        assert_eq!(golden.common.image, None);
        assert_eq!(inv.hosts.len(), 1);
        let said: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        assert_eq!(said.len(), 4, "{problems:?}");
        assert!(
            said[0].1.contains("capture and image: give one"),
            "{said:?}"
        );
        assert!(said[1].1.contains("not a digest"), "{said:?}");
        assert!(said[2].1.starts_with("capture: no tag"), "{said:?}");
        // Not for every machine the inventory does not list.
        assert!(said[3].1.contains("unknown field `capture`"), "{said:?}");
    }

    #[test]
    fn hostile_names_are_escaped_in_messages() {
        let (_, problems) = parse("[hosts.\"\\u001b[2J<script>\"]\n").unwrap();
        let shown = problems[0].to_string();
        assert!(!shown.contains('\u{1b}'), "{shown}");
        assert!(shown.contains("\\u{1b}"), "{shown}");
    }
}
