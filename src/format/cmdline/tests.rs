//! The whole kernel command line through [`parse`]: what each key sets, and
//! every problem named by its key.

use super::*;
use crate::format::signature;

const BASE: &str = "imprint.repo=http://10.0.2.2:8080 imprint.image=os:v1";

#[test]
fn repositories_on_media_and_networks_are_asked_in_order() {
    let media = |by: MediaId, dir: &str| RepoSource::Media {
        by,
        dir: dir.into(),
    };
    let cfg =
        parse("imprint.repo=media:USB_1,https://mirror.example/repo imprint.image=os:v1").unwrap();
    assert_eq!(
        cfg.repo,
        [
            media(MediaId::Label("USB_1".into()), DEFAULT_MEDIA_DIR),
            RepoSource::Url("https://mirror.example/repo".into()),
        ]
    );
    let cfg = parse("imprint.repo=media:UUID=2026-12-01-10-00-00-00/images/x imprint.image=os:v1")
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

#[test]
fn a_capture_needs_one_server_a_tag_and_a_credential() {
    let cfg = parse(&format!(
        "{BASE} imprint.mode=capture imprint.capture-token=0123456789abcdef0123"
    ))
    .unwrap();
    assert_eq!(cfg.mode, Mode::Capture);
    assert_eq!(
        cfg.capture_token.as_ref().map(|t| t.0.as_str()),
        Some("0123456789abcdef0123")
    );
    // The credential a provisioning server gives does as well.
    let given = "imprint.repo=http://10.0.2.2:8080 imprint.image=golden:1 imprint.mode=capture imprint.credential=AAAA";
    assert_eq!(parse(given).unwrap().mode, Mode::Capture);
    let keys = |line: &str| -> Vec<String> {
        parse(line)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.key)
            .collect()
    };
    assert_eq!(
        keys(&format!("{BASE} imprint.mode=capture")),
        ["imprint.capture-token"]
    );
    assert_eq!(
        keys("imprint.image=golden:1 imprint.mode=capture imprint.capture-token=t"),
        ["imprint.repo"],
        "not to a medium"
    );
    assert_eq!(
        keys(&format!(
            "imprint.repo=http://a imprint.image=sha256:{} imprint.mode=capture imprint.capture-token=t",
            "0".repeat(64)
        )),
        ["imprint.image"]
    );
    assert_eq!(
        keys(&format!(
            "{BASE} imprint.mode=capture imprint.capture-token=a\u{7f}b"
        )),
        ["imprint.capture-token", "imprint.capture-token"]
    );
}
