use super::*;
use imprint::format::cmdline::*;
use imprint::format::digest::ImageRef;
use std::net::Ipv4Addr;
use std::time::Duration;

fn url() -> impl Strategy<Value = String> {
    (
        "[a-z0-9.-]{1,20}",
        prop::option::of(any::<u16>()),
        "(/[a-z0-9._-]{1,8}){0,3}",
    )
        .prop_map(|(host, port, path)| match port {
            Some(p) => format!("http://{host}:{p}{path}"),
            None => format!("http://{host}{path}"),
        })
}

fn hostname() -> impl Strategy<Value = String> {
    vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4).prop_map(|labels| labels.join("."))
}

fn repo_path() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,10}(/[A-Za-z0-9._-]{1,10}){0,3}".prop_filter("plain names", |p| {
        p.split('/').all(|s| s != "." && s != "..")
    })
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

/// A disk selector and how it is written.
fn disk() -> impl Strategy<Value = (String, DiskSelector)> {
    let value = "[A-Za-z0-9_.-]{1,12}";
    let size = (
        0u64..1 << 20,
        prop::sample::select(vec![
            ("", 0u32),
            ("K", 10),
            ("M", 20),
            ("g", 30),
            ("TiB", 40),
            ("kb", 10),
        ]),
    );
    prop_oneof![
        "/dev/[a-z0-9/_-]{1,16}".prop_map(|p| (p.clone(), DiskSelector::Path(p))),
        (
            prop::option::of(value),
            prop::option::of(value),
            prop::option::of(size),
            prop::option::of("[a-z0-9:.-]{1,20}"),
        )
            .prop_filter("at least one hint", |h| h.0.is_some()
                || h.1.is_some()
                || h.2.is_some()
                || h.3.is_some())
            .prop_map(|(serial, model, size, by_path)| {
                let mut parts = Vec::new();
                if let Some(s) = &serial {
                    parts.push(format!("serial:{s}"));
                }
                if let Some(m) = &model {
                    parts.push(format!("model:{m}"));
                }
                if let Some((n, (unit, _))) = &size {
                    parts.push(format!("size:{n}{unit}"));
                }
                if let Some(b) = &by_path {
                    parts.push(format!("by-path:{b}"));
                }
                let hints = DiskHints {
                    serial,
                    model,
                    size: size.map(|(n, (_, shift))| n << shift),
                    by_path,
                };
                (parts.join(","), DiskSelector::Hints(hints))
            }),
    ]
}

/// An `ip=` value and what it means.
fn ip() -> impl Strategy<Value = (String, IpConfig)> {
    let text = |a: &Option<Ipv4Addr>| a.map(|a| a.to_string()).unwrap_or_default();
    prop_oneof![
        prop::sample::select(vec!["dhcp", "on", "any", "both"])
            .prop_map(|w| (w.to_string(), IpConfig::Dhcp)),
        prop::sample::select(vec!["off", "none"]).prop_map(|w| (w.to_string(), IpConfig::Off)),
        (
            ipv4(),
            prop::option::of(ipv4()),
            prop::option::of(0u8..=32),
            prop::option::of(hostname()),
            prop::option::of("[a-z0-9]{1,8}"),
            prop::sample::select(vec!["", "off", "none", "static"]),
            prop::option::of(ipv4()),
            prop::option::of(ipv4()),
        )
            .prop_map(
                move |(address, gateway, prefix, host, device, autoconf, dns0, dns1)| {
                    let mask = prefix
                        .map(|p| Ipv4Addr::from(u32::MAX.checked_shl(32 - p as u32).unwrap_or(0)));
                    let value = format!(
                        "{address}::{}:{}:{}:{}:{autoconf}:{}:{}",
                        text(&gateway),
                        text(&mask),
                        host.clone().unwrap_or_default(),
                        device.clone().unwrap_or_default(),
                        text(&dns0),
                        text(&dns1),
                    );
                    let config = IpConfig::Static(StaticIp {
                        address,
                        prefix: prefix.unwrap_or(24),
                        gateway,
                        hostname: host,
                        device,
                        dns: [dns0, dns1].into_iter().flatten().collect(),
                    });
                    (value, config)
                }
            ),
    ]
}

/// A command line and the configuration it says.
fn command_line() -> impl Strategy<Value = (Vec<String>, Config)> {
    let modes = prop::sample::select(vec![
        ("deploy", Mode::Deploy),
        ("upgrade", Mode::Upgrade),
        ("rollback", Mode::Rollback),
    ]);
    let handoffs = prop::sample::select(vec![
        ("reboot", Handoff::Reboot),
        ("poweroff", Handoff::Poweroff),
        ("kexec", Handoff::Kexec),
    ]);
    let policies = prop::sample::select(vec![
        ("reboot", ErrorPolicy::Reboot),
        ("poweroff", ErrorPolicy::Poweroff),
        ("retry", ErrorPolicy::Retry),
    ]);
    (
        (
            url(),
            NAME,
            NAME,
            prop::option::of(disk()),
            modes,
            prop::option::of(disk()),
        ),
        (
            handoffs,
            prop::option::of(any::<[u8; 32]>()),
            prop::option::of(url()),
            policies,
            prop::option::of(hostname()),
        ),
        (
            prop::option::of("[!#-~]{1,128}"),
            prop::option::of(repo_path()),
            prop::option::of(repo_path()),
            prop::option::of(1usize..=64),
            prop::option::of(1u64..=3600),
        ),
        (
            prop::option::of(ip()),
            prop::option::of((any::<[u8; 6]>(), any::<bool>(), any::<bool>())),
            vec("[a-z_]{1,10}(=[a-z0-9,./:]{0,10})?", 0..6),
        ),
    )
        .prop_map(
            |(
                (repo, name, tag, disk, (mode_word, mode), previous),
                ((handoff_word, handoff), key, status, (policy_word, on_error), hostname),
                (target, user_data, network_config, jobs, timeout),
                (ip, bootif, noise),
            )| {
                let mut words = vec![
                    format!("imprint.repo={repo}"),
                    format!("imprint.image={name}:{tag}"),
                ];
                let pubkey = key.map(|seed| {
                    imprint::format::signature::public_key_text(
                        &ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key(),
                    )
                });
                let optional = [
                    ("imprint.disk", disk.as_ref().map(|d| d.0.clone())),
                    ("imprint.mode", Some(mode_word.to_string())),
                    ("imprint.previous", previous.as_ref().map(|d| d.0.clone())),
                    ("imprint.handoff", Some(handoff_word.to_string())),
                    ("imprint.pubkey", pubkey.clone()),
                    ("imprint.status", status.clone()),
                    ("imprint.on-error", Some(policy_word.to_string())),
                    ("imprint.hostname", hostname.clone()),
                    ("imprint.target", target.clone()),
                    ("imprint.user-data", user_data.clone()),
                    ("imprint.network-config", network_config.clone()),
                    ("imprint.jobs", jobs.map(|j| j.to_string())),
                    ("imprint.dhcp-timeout", timeout.map(|t| t.to_string())),
                    ("ip", ip.as_ref().map(|i| i.0.clone())),
                    (
                        "BOOTIF",
                        bootif.map(|(mac, prefixed, upper)| {
                            let hex: Vec<String> = mac
                                .iter()
                                .map(|b| {
                                    if upper {
                                        format!("{b:02X}")
                                    } else {
                                        format!("{b:02x}")
                                    }
                                })
                                .collect();
                            if prefixed {
                                format!("01-{}", hex.join("-"))
                            } else {
                                hex.join(":")
                            }
                        }),
                    ),
                ];
                for (key, value) in optional {
                    if let Some(v) = value {
                        words.push(format!("{key}={v}"));
                    }
                }
                words.extend(
                    noise
                        .into_iter()
                        .filter(|w| w.split('=').next() != Some("ip")),
                );
                let config = Config {
                    repo: vec![imprint::format::cmdline::RepoSource::Url(repo)],
                    image: Some(ImageRef::Tag { name, tag }),
                    disk: disk.map(|d| d.1),
                    mode,
                    previous: previous.map(|d| d.1),
                    handoff,
                    pubkey,
                    status,
                    credential: None,
                    capture_token: None,
                    proxy: None,
                    on_error,
                    hostname,
                    target,
                    user_data,
                    network_config,
                    allow_downgrade: false,
                    min_issued: None,
                    redeploy: false,
                    jobs: jobs.unwrap_or(imprint::format::cmdline::DEFAULT_JOBS),
                    dhcp_timeout: Duration::from_secs(timeout.unwrap_or(60)),
                    ip: ip.map_or(IpConfig::Dhcp, |i| i.1),
                    bootif: bootif.map(|b| b.0),
                };
                (words, config)
            },
        )
}

/// `words` joined by runs of whitespace, some of them in quotes.
fn join(words: &[String], seps: &[(u8, bool)]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        let (sep, quote) = seps.get(i).copied().unwrap_or((0, false));
        out.push_str([" ", "  ", "\t", "\n", " \t "][sep as usize % 5]);
        if quote {
            out.push('"');
            out.push_str(w);
            out.push('"');
        } else {
            out.push_str(w);
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn command_lines_say_what_they_were_made_from(
        (words, config) in command_line()
            .prop_flat_map(|(words, config)| (Just(words).prop_shuffle(), Just(config))),
        seps in vec((any::<u8>(), any::<bool>()), 0..32),
    ) {
        let line = join(&words, &seps);
        prop_assert_eq!(parse(&line), Ok(config.clone()));
        prop_assert_eq!(error_policy(&line), config.on_error);
        // Nothing after a lone -- is the kernel's or ours.
        let after = format!("{line} -- imprint.colour=blue imprint.jobs=999");
        prop_assert_eq!(parse(&after), Ok(config));
    }

    #[test]
    fn split_round_trips(
        words in vec("[!#-~]{1,12}".prop_filter("not --", |w| w != "--"), 0..12),
        spaced in vec("[a-z =\t]{1,12}", 0..4),
        seps in vec((any::<u8>(), any::<bool>()), 0..16),
    ) {
        prop_assert_eq!(split(&join(&words, &seps)), words.clone());
        // Quoted, whitespace stays inside a word.
        let quoted: Vec<String> = spaced.iter().map(|w| format!("\"{w}\"")).collect();
        prop_assert_eq!(split(&quoted.join(" ")), spaced);
    }

    #[test]
    fn mutated_command_lines_never_panic((words, _) in command_line(), ms in mutations()) {
        let line = mutate(words.join(" ").as_bytes(), &ms);
        let line = String::from_utf8_lossy(&line);
        let _ = bounded(line.len(), || parse(&line));
        let _ = error_policy(&line);
    }

    #[test]
    fn arbitrary_command_lines_never_panic(
        text in ".{0,1000}",
        bytes in bytes(),
        value in ".{0,40}",
    ) {
        let lossy = String::from_utf8_lossy(&bytes);
        for text in [text.as_str(), &lossy] {
            let _ = bounded(text.len(), || parse(text));
            let _ = split(text);
            let _ = error_policy(text);
        }
        let keys = [
            "imprint.disk",
            "imprint.previous",
            "ip",
            "BOOTIF",
            "imprint.repo",
            "imprint.image",
            "imprint.pubkey",
            "imprint.jobs",
            "imprint.user-data",
        ];
        for key in keys {
            let line = format!("imprint.repo=http://h imprint.image=a:b \"{key}={value}\"");
            let _ = parse(&line);
        }
        let _ = parse_size(&value);
        let _ = value.parse::<ImageRef>();
    }

    #[test]
    fn sizes_round_trip(
        n in 0u64..1 << 23,
        unit in 0usize..5,
        suffix in 0usize..3,
        upper in any::<bool>(),
    ) {
        let (letter, shift) = [("", 0), ("k", 10), ("m", 20), ("g", 30), ("t", 40)][unit];
        let suffixes = if letter.is_empty() { ["", "b", ""] } else { ["", "b", "ib"] };
        let suffix = suffixes[suffix];
        let mut text = format!("{n}{letter}{suffix}");
        if upper {
            text = text.to_uppercase();
        }
        prop_assert_eq!(parse_size(&text), Some(n << shift));
    }

    #[test]
    fn image_refs_round_trip(name in NAME, tag in NAME, d in digest()) {
        for r in [ImageRef::Tag { name: name.clone(), tag: tag.clone() }, ImageRef::Digest(d)] {
            prop_assert_eq!(r.to_string().parse::<ImageRef>(), Ok(r));
        }
        prop_assert_eq!(d.to_string().parse(), Ok(d));
    }
}
