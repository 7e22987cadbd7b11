//! What a network-booting machine is told to do, decided by `imprint serve` from
//! the inventory and what it remembers of the machine; and the iPXE script that
//! says it. Pure: the server stores the [`Machine`] records and serves the text.
//!
//! The rules, in order:
//! 1. A machine the inventory does not list, with `[default] action = "register"`
//!    (the default), boots its own disk; it is remembered and shown, for the
//!    operator to add.
//! 2. A machine whose deploy completed boots its own disk, on every boot after,
//!    until it is reprovisioned (`imprint host reprovision MAC`, or a new value
//!    of its entry's `reprovision`). A changed `image` alone never redeploys: a
//!    reboot does not wipe a machine by surprise.
//! 3. Otherwise it deploys (or, when its entry says `capture = "NAME:TAG"`, its
//!    disk is captured as that image; the published image completes it), up to
//!    `attempts` times in a row; a deploy that never
//!    reported its end counts as failed (the machine's next deploy environment
//!    says it started, or its script is asked for while it is under way). After
//!    that it holds: iPXE shows the last error and asks the server again every
//!    minute, so a reprovision takes effect without touching it.
//!
//! Deciding changes nothing: what a machine is remembered as moves only on the
//! events of its deploy environment (which carry its credential) and on the
//! operator's actions, never on a script asked for.

use crate::format::digest::ImageRef;
use crate::format::inventory::{Common, DefaultAction, Inventory, LocalBoot, Mac};
use crate::format::ipxe::{self, Piece};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Deploys a machine may fail in a row before it holds.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// What the server remembers of one machine. (Fields a later version adds read
/// as their defaults from an earlier one's files.)
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Machine {
    /// Deploy environments sent to it, ever.
    pub deploys: u32,
    /// Deploys failed (or never finished) since the last one that completed.
    pub failures: u32,
    pub last_error: Option<String>,
    /// A deploy environment was sent and has not reported its end.
    pub in_progress: bool,
    /// The manifest digest of the last deploy that completed.
    pub completed: Option<String>,
    /// Its installed OS committed that deploy.
    pub committed: bool,
    /// The inventory's `reprovision` value the last completed deploy answered.
    pub reprovisioned: Option<String>,
    /// `imprint host reprovision` asked for another deploy.
    pub reprovision_asked: bool,
    /// The inventory's `reprovision` value when the deploy under way was sent.
    pub pending_token: Option<String>,
    /// The manifest digest the deploy under way reported.
    pub image_seen: Option<String>,
    /// The last phase heard (a status event's, or `registered`).
    pub phase: Option<String>,
    /// When it was last heard from (an event), Unix seconds.
    pub last_seen: u64,
    /// Counts the deploys a credential may be for: it moves on when a deploy
    /// completes and when the machine is reprovisioned, so credentials given
    /// out before stop counting.
    pub generation: u64,
    /// The SHA-256 of the credential of the deploy environment that started
    /// last: its events, and its installed OS's report, are taken.
    pub credential: Option<String>,
    /// The NAME:TAG its last capture was published as, until a deploy
    /// completes after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured: Option<String>,
    /// What its deploy environment last said of its hardware.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware: Option<super::hardware::Hardware>,
}

/// The firmware iPXE runs on (its `${platform}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Bios,
    Efi,
}

impl Platform {
    /// iPXE's `${platform}`: `pcbios` or `efi`; anything else is taken as BIOS.
    pub fn from_ipxe(s: &str) -> Platform {
        if s == "efi" {
            Platform::Efi
        } else {
            Platform::Bios
        }
    }
}

/// A deploy, as the kernel command line will say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deploy {
    pub image: ImageRef,
    pub hostname: Option<String>,
    /// `imprint.KEY=VALUE`, the default's then the host's.
    pub settings: BTreeMap<String, String>,
    pub cmdline: Vec<String>,
    pub user_data: Option<String>,
    pub network_config: Option<String>,
    /// 1 for the first try after a success or a reprovision.
    pub attempt: u32,
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Deploy(Box<Deploy>),
    /// Into the deploy environment to read its disk and publish it as
    /// `image` (a tag), with the settings and arguments a deploy would have.
    Capture(Box<Deploy>),
    Local {
        method: LocalBoot,
        why: Why,
    },
    Hold(String),
}

/// Why a machine boots its own disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Not in the inventory, and unknown machines only register.
    Registered,
    /// Its deploy completed.
    Deployed,
    /// Its capture was published.
    Captured,
}

/// The boot of machine `mac`, which the server remembers as `machine`.
pub fn decide(
    inventory: &Inventory,
    mac: Mac,
    machine: &Machine,
    platform: Platform,
    attempts: u32,
) -> Decision {
    let entry = inventory.hosts.get(&mac);
    let defaults = &inventory.defaults;
    let local = |why| {
        let method = entry
            .and_then(|h| h.common.local_boot.clone())
            .or_else(|| defaults.common.local_boot.clone())
            .unwrap_or(match platform {
                // sanboot reaches the first disk whatever the boot order says;
                // EFI iPXE cannot sanboot a local disk, and returning to the boot
                // manager goes on to the next entry.
                Platform::Bios => LocalBoot::Sanboot(0x80),
                Platform::Efi => LocalBoot::Exit,
            });
        Decision::Local { method, why }
    };
    if entry.is_none() && defaults.action == DefaultAction::Register {
        return local(Why::Registered);
    }
    let token = entry.and_then(|h| h.reprovision.as_ref());
    let reprovision =
        machine.reprovision_asked || (token.is_some() && token != machine.reprovisioned.as_ref());
    if machine.completed.is_some() && !reprovision {
        return local(match machine.captured {
            Some(_) => Why::Captured,
            None => Why::Deployed,
        });
    }
    let capture = entry.and_then(|h| h.capture.clone());
    let what = capture.as_ref().map_or("deploy", |_| "capture");
    let attempts = attempts.max(1);
    // A deploy under way whose machine asks for a script again has ended
    // without saying so (a reset, a power loss, a crash).
    let failures = machine.failures + u32::from(machine.in_progress);
    if failures >= attempts {
        let last = machine
            .last_error
            .as_deref()
            .unwrap_or("no error was reported");
        let last = if machine.in_progress {
            format!(
                "the last one did not report its end (a reset, a power loss or a crash), the one before: {last}"
            )
        } else {
            format!("last: {last}")
        };
        return Decision::Hold(format!(
            "the {what} failed {failures} times in a row, {last}; fix it, then run: imprint host reprovision {mac}",
        ));
    }
    let host_common = entry.map(|h| &h.common);
    let Some(image) = capture
        .clone()
        .or_else(|| host_common.and_then(|c| c.image.clone()))
        .or_else(|| defaults.common.image.clone())
    else {
        return Decision::Hold(format!(
            "no image for {mac}: give it one in the inventory (image = \"NAME:TAG\"), or a default"
        ));
    };
    let merged = |pick: fn(&Common) -> Vec<(String, String)>| {
        let mut out: BTreeMap<String, String> = pick(&defaults.common).into_iter().collect();
        if let Some(c) = host_common {
            out.extend(pick(c));
        }
        out
    };
    let mut cmdline = defaults.common.cmdline.clone();
    if let Some(c) = host_common {
        cmdline.extend(c.cmdline.iter().cloned());
    }
    if capture.is_some() {
        let mut settings = merged(|c| c.settings.clone().into_iter().collect());
        // The mode is the capture's; the rest (which disk, the status
        // target, debug) is read as a deploy reads it.
        settings.remove("mode");
        return Decision::Capture(Box::new(Deploy {
            image,
            hostname: entry.and_then(|h| h.hostname.clone()),
            settings,
            cmdline,
            user_data: None,
            network_config: None,
            attempt: failures + 1,
            attempts,
        }));
    }
    Decision::Deploy(Box::new(Deploy {
        image,
        hostname: entry.and_then(|h| h.hostname.clone()),
        settings: merged(|c| c.settings.clone().into_iter().collect()),
        cmdline,
        user_data: entry.and_then(|h| h.user_data.clone()),
        network_config: entry.and_then(|h| h.network_config.clone()),
        attempt: failures + 1,
        attempts,
    }))
}

/// Where a host's cloud-init file `name` lives in a repository (served by
/// `imprint serve --hosts`, or on a medium).
pub fn host_file(mac: Mac, name: &str) -> String {
    format!("hosts/{}/{name}", mac.to_string().replace(':', "-"))
}

/// The kernel arguments that say deploy `d` to machine `mac`: the image, its
/// name, its cloud-init files, its settings and extra arguments.
pub fn deploy_args(d: &Deploy, mac: Mac) -> Vec<String> {
    let mut args = vec![format!("imprint.image={}", d.image)];
    if let Some(h) = &d.hostname {
        args.push(format!("imprint.hostname={h}"));
    }
    if d.user_data.is_some() {
        args.push(format!("imprint.user-data={}", host_file(mac, "user-data")));
    }
    if d.network_config.is_some() {
        args.push(format!(
            "imprint.network-config={}",
            host_file(mac, "network-config")
        ));
    }
    args.extend(host_args(d));
    args
}

/// A deploy's or capture's settings (`imprint.KEY=VALUE`, or `imprint.KEY`
/// for a flag) and extra arguments.
fn host_args(d: &Deploy) -> impl Iterator<Item = String> + '_ {
    let settings = d.settings.iter().map(|(k, v)| match v.is_empty() {
        true => format!("imprint.{k}"),
        false => format!("imprint.{k}={v}"),
    });
    settings.chain(d.cmdline.iter().cloned())
}

/// The kernel arguments that send a machine to capture its disk as `d.image`
/// (its credential may upload that tag only): the mode, the tag, its
/// settings and extra arguments.
pub fn capture_args(d: &Deploy) -> Vec<String> {
    let mut args = vec![
        "imprint.mode=capture".to_string(),
        format!("imprint.image={}", d.image),
    ];
    args.extend(host_args(d));
    args
}

/// Where the script's URLs point.
pub struct Server<'a> {
    /// `http://host:port` as the machines reach it.
    pub base: &'a str,
    /// The kernel and initramfs, under `base`.
    pub kernel: &'a str,
    pub initrd: &'a str,
}

/// The iPXE script for `decision`; a deploy carries `credential`, the one its
/// deploy environment reports with. Everything in it that came from a machine
/// or the inventory passes [`ipxe::safe`]: a message is words of an `echo`, an
/// argument is one word, whatever they held.
pub fn script(decision: &Decision, mac: Mac, server: &Server, credential: Option<&str>) -> String {
    let mut s = String::from("#!ipxe\n");
    match decision {
        Decision::Deploy(d) | Decision::Capture(d) => {
            let capture = matches!(decision, Decision::Capture(_));
            let _ = writeln!(
                s,
                "echo imprint: {} {} {} {} (attempt {} of {})",
                if capture { "capturing" } else { "deploying" },
                text(&d.image.to_string()),
                if capture { "from" } else { "to" },
                text(d.hostname.as_deref().unwrap_or(&mac.to_string())),
                d.attempt,
                d.attempts
            );
            let mut args = vec![
                format!("initrd={}", file_name(server.initrd)),
                format!("imprint.repo={}", server.base),
                format!("imprint.status={}/status", server.base),
                format!("imprint.target={mac}"),
                format!("BOOTIF=01-{}", mac.to_string().replace(':', "-")),
            ];
            if !capture {
                // The server decided on a deploy: the deploy environment must
                // not skip it for finding the image already on the disk.
                args.push("imprint.redeploy".to_string());
            }
            if let Some(c) = credential {
                args.push(format!("imprint.credential={c}"));
            }
            if capture {
                args.extend(capture_args(d));
            } else {
                args.extend(deploy_args(d, mac));
            }
            let args: Vec<String> = args.iter().map(|a| word(a).into_owned()).collect();
            let _ = writeln!(
                s,
                "kernel {}{} {}",
                word(server.base),
                word(server.kernel),
                args.join(" ")
            );
            let _ = writeln!(s, "initrd {}{}", word(server.base), word(server.initrd));
            s.push_str("boot\n");
        }
        Decision::Local { method, why } => {
            let _ = writeln!(
                s,
                "echo imprint: {mac} {}; booting its own disk",
                match why {
                    Why::Registered => "is not in the inventory (registered)",
                    Why::Deployed => "is deployed",
                    Why::Captured => "is captured",
                }
            );
            match method {
                LocalBoot::Exit => s.push_str("exit\n"),
                LocalBoot::Sanboot(drive) => {
                    let _ = writeln!(s, "sanboot --no-describe --drive {drive:#04x}");
                }
                LocalBoot::Chain(url) => {
                    let _ = writeln!(s, "chain {}", word(url));
                }
            }
            // Reached only when that method failed: say so rather than loop.
            let _ = writeln!(
                s,
                "echo imprint: booting the disk with {method} failed; set local-boot for {mac} in the inventory (exit, sanboot, sanboot:0xNN, chain:URL)"
            );
            s.push_str("shell\n");
        }
        Decision::Hold(message) => {
            let _ = writeln!(s, "echo imprint: {mac}: {}", text(message));
            s.push_str("echo imprint: asking again in 60 s\nsleep 60\n");
            let _ = writeln!(
                s,
                "chain {}/boot.ipxe?mac=${{net0/mac}}&platform=${{platform}}",
                word(server.base)
            );
        }
    }
    s
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn text(value: &str) -> std::borrow::Cow<'_, str> {
    ipxe::safe(value, Piece::Text)
}

fn word(value: &str) -> std::borrow::Cow<'_, str> {
    ipxe::safe(value, Piece::Word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::inventory;

    const MAC: &str = "52:54:00:12:34:56";

    fn inv(text: &str) -> Inventory {
        let (inv, problems) = inventory::parse(text).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        inv
    }

    fn mac() -> Mac {
        MAC.parse().unwrap()
    }

    fn listed() -> Inventory {
        inv(r#"
[default]
cmdline = ["console=ttyS0"]
settings = { on-error = "reboot" }

[hosts."52:54:00:12:34:56"]
hostname = "node-1"
image = "web:v2"
settings = { disk = "/dev/vda", on-error = "retry" }
user-data = "node-1.yaml"
"#)
    }

    fn deploy_of(d: Decision) -> Deploy {
        match d {
            Decision::Deploy(d) => *d,
            other => panic!("not a deploy: {other:?}"),
        }
    }

    /// The table: each state a machine can be in, and what it boots.
    #[test]
    fn the_decision_table() {
        let inv = listed();
        let fresh = Machine::default();
        let done = Machine {
            deploys: 1,
            completed: Some("sha256:aa".into()),
            ..Machine::default()
        };
        let failing = |n| Machine {
            deploys: n,
            failures: n,
            last_error: Some("no disk of 4 GB".into()),
            ..Machine::default()
        };
        let d = deploy_of(decide(&inv, mac(), &fresh, Platform::Bios, 3));
        assert_eq!((d.attempt, d.attempts), (1, 3));
        assert_eq!(d.image.to_string(), "web:v2");
        assert_eq!(
            decide(&inv, mac(), &done, Platform::Bios, 3),
            Decision::Local {
                method: LocalBoot::Sanboot(0x80),
                why: Why::Deployed
            }
        );
        assert_eq!(
            decide(&inv, mac(), &done, Platform::Efi, 3),
            Decision::Local {
                method: LocalBoot::Exit,
                why: Why::Deployed
            }
        );
        assert_eq!(
            deploy_of(decide(&inv, mac(), &failing(2), Platform::Bios, 3)).attempt,
            3
        );
        // A deploy under way whose machine asks again ended without a word:
        // it counts, without anything being changed.
        let under_way = |failures| Machine {
            in_progress: true,
            ..failing(failures)
        };
        assert_eq!(
            deploy_of(decide(&inv, mac(), &under_way(1), Platform::Bios, 3)).attempt,
            3
        );
        match decide(&inv, mac(), &under_way(2), Platform::Bios, 3) {
            Decision::Hold(m) => assert!(
                m.contains("failed 3 times in a row, the last one did not report its end"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        match decide(&inv, mac(), &failing(3), Platform::Bios, 3) {
            Decision::Hold(m) => {
                assert!(
                    m.contains("failed 3 times in a row, last: no disk of 4 GB"),
                    "{m}"
                );
                assert!(
                    m.contains(&format!("imprint host reprovision {MAC}")),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Reprovisioned: by the command, which also lifts a hold...
        let asked = Machine {
            reprovision_asked: true,
            failures: 0,
            ..done.clone()
        };
        assert_eq!(
            deploy_of(decide(&inv, mac(), &asked, Platform::Bios, 3)).attempt,
            1
        );
        // ...or by a new value in the inventory, once.
        let mut bumped = inv.clone();
        bumped.hosts.get_mut(&mac()).unwrap().reprovision = Some("2".into());
        deploy_of(decide(&bumped, mac(), &done, Platform::Bios, 3));
        let answered = Machine {
            reprovisioned: Some("2".into()),
            ..done.clone()
        };
        assert!(matches!(
            decide(&bumped, mac(), &answered, Platform::Bios, 3),
            Decision::Local {
                why: Why::Deployed,
                ..
            }
        ));
        // A new image alone does not redeploy.
        let mut changed = inv.clone();
        changed.hosts.get_mut(&mac()).unwrap().common.image = Some("web:v3".parse().unwrap());
        assert!(matches!(
            decide(&changed, mac(), &done, Platform::Bios, 3),
            Decision::Local { .. }
        ));
    }

    #[test]
    fn unlisted_machines_register_or_get_the_default() {
        let other: Mac = "52:54:00:00:00:99".parse().unwrap();
        assert_eq!(
            decide(&listed(), other, &Machine::default(), Platform::Efi, 3),
            Decision::Local {
                method: LocalBoot::Exit,
                why: Why::Registered
            }
        );
        let inv =
            inv("[default]\naction = \"deploy\"\nimage = \"base:1\"\nlocal-boot = \"exit\"\n");
        let d = deploy_of(decide(&inv, other, &Machine::default(), Platform::Bios, 3));
        assert_eq!((d.image.to_string(), d.hostname), ("base:1".into(), None));
        let listed_without_image =
            inventory::parse("[hosts.\"52:54:00:12:34:56\"]\nhostname = \"a\"\n")
                .unwrap()
                .0;
        assert!(matches!(
            decide(&listed_without_image, mac(), &Machine::default(), Platform::Bios, 3),
            Decision::Hold(m) if m.contains("no image")
        ));
    }

    #[test]
    fn a_deploy_script_carries_the_host_and_its_settings() {
        let d = decide(&listed(), mac(), &Machine::default(), Platform::Bios, 3);
        let server = Server {
            base: "http://10.0.2.2:8080",
            kernel: "/boot/vmlinuz",
            initrd: "/boot/initramfs.img",
        };
        let credential = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let s = script(&d, mac(), &server, Some(credential));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "#!ipxe");
        assert_eq!(
            lines[1],
            "echo imprint: deploying web:v2 to node-1 (attempt 1 of 3)"
        );
        assert_eq!(
            lines[2],
            "kernel http://10.0.2.2:8080/boot/vmlinuz initrd=initramfs.img imprint.repo=http://10.0.2.2:8080 \
             imprint.status=http://10.0.2.2:8080/status imprint.target=52:54:00:12:34:56 \
             BOOTIF=01-52-54-00-12-34-56 imprint.redeploy imprint.credential=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA imprint.image=web:v2 imprint.hostname=node-1 imprint.user-data=hosts/52-54-00-12-34-56/user-data \
             imprint.disk=/dev/vda imprint.on-error=retry console=ttyS0"
        );
        assert_eq!(lines[3], "initrd http://10.0.2.2:8080/boot/initramfs.img");
        assert_eq!(lines[4], "boot");
        // The deploy environment's own parser takes the command line as it is.
        let cmdline = lines[2]
            .split_once(' ')
            .unwrap()
            .1
            .split_once(' ')
            .unwrap()
            .1;
        let config = crate::format::cmdline::parse(cmdline).unwrap();
        assert_eq!(config.hostname.as_deref(), Some("node-1"));
        assert_eq!(config.bootif, Some(mac().0));
    }

    #[test]
    fn a_capture_entry_captures_until_published_then_boots_its_disk() {
        let inv = inv(r#"
[default]
image = "web:v2"
cmdline = ["console=ttyS0"]

[hosts."52:54:00:12:34:56"]
hostname = "golden-src"
capture = "golden:1"
settings = { disk = "/dev/vda", mode = "upgrade" }
user-data = "x.yaml"
"#);
        let d = decide(&inv, mac(), &Machine::default(), Platform::Bios, 3);
        let Decision::Capture(c) = &d else {
            panic!("not a capture: {d:?}")
        };
        // Its own tag wins over the default image; its settings but the mode
        // go with it.
        assert_eq!(c.image.to_string(), "golden:1");
        assert_eq!(c.settings.keys().collect::<Vec<_>>(), ["disk"]);
        let server = Server {
            base: "http://10.0.2.2:8080",
            kernel: "/boot/vmlinuz",
            initrd: "/boot/initramfs.img",
        };
        let credential = "B".repeat(40);
        let s = script(&d, mac(), &server, Some(&credential));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[1],
            "echo imprint: capturing golden:1 from golden-src (attempt 1 of 3)"
        );
        assert_eq!(
            lines[2],
            format!(
                "kernel http://10.0.2.2:8080/boot/vmlinuz initrd=initramfs.img imprint.repo=http://10.0.2.2:8080 \
                 imprint.status=http://10.0.2.2:8080/status imprint.target=52:54:00:12:34:56 \
                 BOOTIF=01-52-54-00-12-34-56 imprint.credential={credential} imprint.mode=capture \
                 imprint.image=golden:1 imprint.disk=/dev/vda console=ttyS0"
            )
        );
        // Published: its own disk, said as such, until reprovisioned.
        let captured = Machine {
            completed: Some(format!("sha256:{}", "cd".repeat(32))),
            captured: Some("golden:1".into()),
            ..Machine::default()
        };
        let local = decide(&inv, mac(), &captured, Platform::Bios, 3);
        assert_eq!(
            local,
            Decision::Local {
                method: LocalBoot::Sanboot(0x80),
                why: Why::Captured
            }
        );
        assert!(script(&local, mac(), &server, None).contains(" is captured; "));
        let asked = Machine {
            reprovision_asked: true,
            ..captured
        };
        assert!(matches!(
            decide(&inv, mac(), &asked, Platform::Bios, 3),
            Decision::Capture(_)
        ));
        let failing = Machine {
            failures: 3,
            last_error: Some("no disk".into()),
            ..Machine::default()
        };
        match decide(&inv, mac(), &failing, Platform::Bios, 3) {
            Decision::Hold(m) => assert!(m.starts_with("the capture failed 3 times"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn local_and_hold_scripts() {
        let server = Server {
            base: "http://s",
            kernel: "/k",
            initrd: "/i",
        };
        let local = Decision::Local {
            method: LocalBoot::Sanboot(0x81),
            why: Why::Deployed,
        };
        let s = script(&local, mac(), &server, None);
        assert!(s.contains("\nsanboot --no-describe --drive 0x81\n"), "{s}");
        assert!(s.ends_with("shell\n"), "{s}");
        let hold = Decision::Hold("failed: ${evil}\nreboot ; chain http://x/y.ipxe #".into());
        let s = script(&hold, mac(), &server, None);
        assert_eq!(s.lines().count(), 5, "{s}");
        assert!(!s.contains("${evil}"), "{s}");
        assert!(!s.contains(" ; ") && !s.contains(" #"), "{s}");
        assert!(
            s.contains("chain http://s/boot.ipxe?mac=${net0/mac}&platform=${platform}"),
            "{s}"
        );
    }
}
