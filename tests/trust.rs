//! Who decides a machine's next boot on `imprint serve --hosts`: the machine's
//! own deploy (by the credential its boot script gave it) and the operator (by
//! their token), no one else. Driven over HTTP as an attacker on the network
//! would: forged events, scripts fetched in a machine's name, cross-site
//! requests from a browser, reads of what machines reported.

mod common;

use common::rig::*;
use common::*;
use std::process::Stdio;

const COMPLETE: &str = r#"{"phase":"complete","target":"MAC"}"#;
const BOOTED: &str = r#"{"phase":"booted","target":"MAC"}"#;

/// Asking for a script changes nothing: a deploy under way whose script is
/// asked for again and again (by anyone) is not counted as restarted, not
/// held, and its real completion is taken. Machines never seen before are
/// remembered a few at a time from one address.
#[test]
fn a_get_changes_nothing() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    let credential = credential_of(&script(&served, NODE, "pcbios"));
    assert_eq!(event(&served, NODE, BOOTED, Some(&credential)), 204);
    let file = rig.machine_file(NODE).unwrap();
    let before = machine(&machines(&served), NODE)["state"].clone();
    for _ in 0..5 {
        let s = script(&served, NODE, "pcbios");
        // The script may say the deploy under way would be a failed one...
        assert!(is_deploy(&s), "{s}");
        assert!(s.contains("(attempt 2 of 3)"), "{s}");
    }
    // ...but nothing is remembered of it.
    assert_eq!(rig.machine_file(NODE).unwrap(), file);
    assert_eq!(machine(&machines(&served), NODE)["state"], before);
    assert_eq!(before["failures"], 0);
    assert_eq!(before["in_progress"], true);
    assert_eq!(event(&served, NODE, COMPLETE, Some(&credential)), 204);
    let state = machine(&machines(&served), NODE)["state"].clone();
    assert!(state["completed"].is_string(), "{state}");
    assert!(!is_deploy(&script(&served, NODE, "pcbios")));

    // Strangers: all answered, 16 remembered per address.
    let known = rig.machine_files();
    let stranger = |i: u32| format!("52:54:00:aa:{:02x}:{:02x}", i / 256, i % 256);
    let ask_from = |source: [u8; 4], mac: &str| {
        let (status, _, body) = raw_request_from(
            source,
            &served.addr(),
            &format!("GET /boot.ipxe?mac={mac} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    };
    for i in 0..40 {
        let s = ask_from([127, 0, 0, 3], &stranger(i));
        assert!(s.contains("(registered)"), "{s}");
    }
    assert_eq!(rig.machine_files(), known + 16);
    ask_from([127, 0, 0, 4], &stranger(100));
    assert_eq!(rig.machine_files(), known + 17);
    // A machine the inventory lists is taken whatever came from its address.
    let flaky = credential_of(&ask_from([127, 0, 0, 3], FLAKY));
    let (status, _, body) = raw_request_from(
        [127, 0, 0, 3],
        &served.addr(),
        &format!(
            "POST /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {flaky}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            BOOTED.replace("MAC", FLAKY).len(),
            BOOTED.replace("MAC", FLAKY)
        ),
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    assert_eq!(rig.machine_files(), known + 18);
    // A machine it does not provision (one that only registered) reports as
    // any name does: without a credential, into the status table alone.
    assert_eq!(event(&served, &stranger(1), BOOTED, None), 204);
    assert_eq!(
        machine(&machines(&served), &stranger(1))["state"]["phase"],
        "registered"
    );
}

/// A machine's deploy is completed by its own deploy environment only: not by
/// an event without a credential, with a made-up one, with another machine's,
/// or with one fetched in its name while it deploys (which has not started a
/// deploy). After it completes, no credential given out for that deploy
/// starts another.
#[test]
fn a_forged_completion_is_refused() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    let own = credential_of(&script(&served, NODE, "pcbios"));
    assert_eq!(event(&served, NODE, BOOTED, Some(&own)), 204);
    let fetched_meanwhile = credential_of(&script(&served, NODE, "pcbios"));
    let anothers = credential_of(&script(&served, FLAKY, "pcbios"));
    let made_up = "A".repeat(40);
    assert_eq!(event(&served, NODE, COMPLETE, None), 401);
    assert_eq!(event(&served, NODE, COMPLETE, Some(&made_up)), 403);
    assert_eq!(event(&served, NODE, COMPLETE, Some(&anothers)), 403);
    assert_eq!(
        event(&served, NODE, COMPLETE, Some(&fetched_meanwhile)),
        409
    );
    assert_eq!(event(&served, NODE, COMPLETE, Some(OPERATOR_TOKEN)), 403);
    let state = machine(&machines(&served), NODE)["state"].clone();
    assert_eq!(state["in_progress"], true, "{state}");
    assert!(state["completed"].is_null(), "{state}");
    assert!(is_deploy(&script(&served, NODE, "pcbios")));
    // The status table never took them either.
    let (_, status) = get_as(&served, "/status", OPERATOR_TOKEN);
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(doc[NODE]["phase"], "booted", "{doc}");

    // Its own deploy environment starting over (PID 1's retry) is no restart:
    // one credential cannot put the machine on hold.
    for _ in 0..4 {
        assert_eq!(event(&served, NODE, BOOTED, Some(&own)), 204);
    }
    let state = machine(&machines(&served), NODE)["state"].clone();
    assert_eq!(state["failures"], 0, "{state}");
    assert_eq!(event(&served, NODE, COMPLETE, Some(&own)), 204);
    assert!(!is_deploy(&script(&served, NODE, "pcbios")));
    assert_eq!(event(&served, NODE, BOOTED, Some(&fetched_meanwhile)), 403);
    assert_eq!(event(&served, NODE, BOOTED, Some(&own)), 409);
    // Done, its credential speaks once more: the installed OS's report.
    assert_eq!(event(&served, NODE, COMPLETE, Some(&own)), 409);
    let committed = r#"{"phase":"complete","target":"MAC","committed":"deploy"}"#;
    assert_eq!(event(&served, NODE, committed, Some(&own)), 204);
    assert!(!is_deploy(&script(&served, NODE, "pcbios")));
}

/// The deploy environment's own `complete` never arrived (a kexec hand-off
/// with the server unreachable): the installed OS's report, with the same
/// credential, completes the deploy, and the machine boots its disk.
#[test]
fn the_installed_os_completes_a_deploy_whose_own_report_was_lost() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    let own = credential_of(&script(&served, NODE, "pcbios"));
    assert_eq!(event(&served, NODE, BOOTED, Some(&own)), 204);
    let committed = format!(
        r#"{{"phase":"complete","target":"MAC","committed":"deploy","image":"sha256:{}"}}"#,
        "cd".repeat(32)
    );
    assert_eq!(event(&served, NODE, &committed, Some(&own)), 204);
    let m = machine(&machines(&served), NODE).clone();
    assert_eq!(m["next"], "local", "{m}");
    assert_eq!(m["state"]["committed"], true, "{m}");
    assert_eq!(
        m["state"]["completed"],
        format!("sha256:{}", "cd".repeat(32))
    );
}

/// A machine's cloud-init files (passwords, keys) go to its own deploy and
/// to the operator, no one else.
#[test]
fn cloud_init_files_go_to_their_machine_only() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&["--status-token", "a-status-token-for-static-boots"]);
    let path = "/hosts/52-54-00-12-34-56/user-data";
    let own = credential_of(&script(&served, NODE, "pcbios"));
    let anothers = credential_of(&script(&served, FLAKY, "pcbios"));
    assert_eq!(get(&served, path).0, 401);
    assert_eq!(get_as(&served, path, &anothers).0, 403);
    assert_eq!(
        get_as(&served, path, "a-status-token-for-static-boots").0,
        403
    );
    let want = (200, "#cloud-config\nhostname: node-1\n".to_string());
    assert_eq!(get_as(&served, path, &own), want);
    assert_eq!(get_as(&served, path, OPERATOR_TOKEN), want);
    // The deploy done, its credential reads nothing more (it is on the
    // installed OS's disk, and was on a kernel command line)...
    report(&served, NODE, &own, COMPLETE);
    assert_eq!(get_as(&served, path, &own).0, 403);
    assert_eq!(get_as(&served, path, OPERATOR_TOKEN), want);
    // ...nor after the machine is reprovisioned.
    assert_eq!(
        post(
            &served,
            "/machines/52-54-00-12-34-56/reprovision",
            "",
            Some(OPERATOR_TOKEN)
        ),
        200
    );
    assert_eq!(get_as(&served, path, &own).0, 403);
}

fn cookie_of(headers: &[(String, String)]) -> String {
    let set = header(headers, "set-cookie").expect("a cookie");
    set.split(';').next().unwrap().to_string()
}

/// Actions are the operator's alone, even from the server's own host: a POST
/// without the token is refused; a browser session (made from the token
/// once) counts only in requests from the server's own page.
#[test]
fn actions_resist_cross_site_requests() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    deploy(&served, NODE, COMPLETE);
    let action = "/machines/52-54-00-12-34-56/reprovision";
    let ours = "Origin: http://10.0.2.2:8080\r\n";
    let theirs = "Origin: http://evil.example\r\n";
    // From loopback, with no token: refused (it was enough before).
    assert_eq!(post(&served, action, "", None), 401);
    assert_eq!(get(&served, action).0, 404);

    // Signing in: the token, from the page.
    let (status, _, _) = post_with(&served, "/session", "wrong", None, ours);
    assert_eq!(status, 403);
    let (status, _, _) = post_with(&served, "/session", OPERATOR_TOKEN, None, theirs);
    assert_eq!(status, 403);
    let (status, _, _) = post_with(&served, "/session", OPERATOR_TOKEN, None, "");
    assert_eq!(status, 403);
    let (status, headers, _) = post_with(&served, "/session", OPERATOR_TOKEN, None, ours);
    assert_eq!(status, 204);
    let set = header(&headers, "set-cookie").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains(OPERATOR_TOKEN), "{set}");
    let cookie = format!("Cookie: {}\r\n", cookie_of(&headers));

    // The session reads everything...
    let (status, headers, body) = raw_request(
        &served.addr(),
        &format!("GET /machines HTTP/1.1\r\nHost: x\r\n{cookie}Connection: close\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-imprint-view"), Some("operator"));
    assert!(String::from_utf8_lossy(&body).contains(NODE));
    // ...and acts only from the page.
    for refused in [
        format!("{cookie}{theirs}"),
        format!("{cookie}Sec-Fetch-Site: cross-site\r\n{ours}"),
        format!("{cookie}Sec-Fetch-Site: same-site\r\n{ours}"),
        cookie.clone(),
    ] {
        let (status, _, body) = post_with(&served, action, "", None, &refused);
        assert_eq!(status, 403, "{refused}: {body}");
    }
    assert_eq!(machine(&machines(&served), NODE)["next"], "local");
    let (status, _, _) = post_with(
        &served,
        action,
        "",
        None,
        &format!("{cookie}Sec-Fetch-Site: same-origin\r\n{ours}"),
    );
    assert_eq!(status, 200);
    assert_eq!(machine(&machines(&served), NODE)["next"], "deploy os:v1");

    // A forged or expired cookie is no session.
    let (status, _, _) = post_with(
        &served,
        action,
        "",
        None,
        &format!("Cookie: imprint_operator=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n{ours}"),
    );
    assert_eq!(status, 401);
    // Signing out: the browser is told to forget it.
    let (status, headers, _) = post_with(&served, "/session/end", "", None, ours);
    assert_eq!(status, 204);
    assert!(
        header(&headers, "set-cookie")
            .unwrap()
            .contains("Max-Age=0")
    );
}

/// The same in a browser: the operator signed in on the server's page, then
/// a page of another site in the same browser posts the action (a form and a
/// fetch that would send cookies). The server sees the requests and refuses
/// them; the machine stays as it was.
#[test]
fn a_page_of_another_site_cannot_act_in_a_signed_in_browser() {
    if !common::vm::chromium_available() {
        return;
    }
    let rig = Rig::new(INVENTORY);
    let log = rig.path("serve.log");
    let served = rig.serve_logging(&[], Stdio::from(std::fs::File::create(&log).unwrap()));
    deploy(&served, NODE, COMPLETE);
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(
        &format!("{}/#token={OPERATOR_TOKEN}", served.url),
        None,
        Some(profile.path()),
    );
    assert!(
        dom.contains(">reprovision</button>"),
        "not signed in: {dom}"
    );

    // The other site: localhost is not 127.0.0.1 to a browser.
    let action = format!("{}/machines/52-54-00-12-34-56/reprovision", served.url);
    let page = format!(
        "<!doctype html><title>cats</title><form id=f method=POST action=\"{action}\"></form>\
         <script>fetch(\"{action}\", {{method: \"POST\", credentials: \"include\", mode: \"no-cors\"}})\
         .finally(() => document.getElementById(\"f\").submit());</script>"
    );
    let (other_port, _) = answering_server("text/html", page);
    let other_url = format!("http://localhost:{other_port}/cats.html");
    chromium(&other_url, None, Some(profile.path()));
    // Both requests came, and were refused.
    assert!(
        wait_for_text(
            &log,
            "refused /machines/52-54-00-12-34-56/reprovision from 127.0.0.1"
        ),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let refusals = std::fs::read_to_string(&log)
        .unwrap()
        .matches("refused /machines/52-54-00-12-34-56/reprovision")
        .count();
    assert_eq!(refusals, 2, "{}", std::fs::read_to_string(&log).unwrap());
    let state = machine(&machines(&served), NODE).clone();
    assert_eq!(state["next"], "local", "{state}");
    assert_eq!(state["state"]["reprovision_asked"], false, "{state}");
}

/// Without the operator's token: by default how many machines are in each
/// phase, and each one's phase and progress, nothing that names a machine or
/// what it said; `--public-view none` shows nothing, `full` everything.
#[test]
fn the_public_view_names_no_machine() {
    let rig = Rig::new(INVENTORY);
    let served = rig.serve(&[]);
    let credential = credential_of(&script(&served, NODE, "pcbios"));
    report(
        &served,
        NODE,
        &credential,
        r#"{"phase":"failed","target":"MAC","error":"disk /dev/vda gone"}"#,
    );
    let (status, headers, body) = raw_request(
        &served.addr(),
        "GET /machines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-imprint-view"), Some("counts"));
    let body = String::from_utf8(body).unwrap();
    for secret in [
        NODE,
        FLAKY,
        "node-1",
        "os:v1",
        "/dev/vda",
        "127.0.0.1",
        "sha256",
    ] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["counts"]["failed"], 1, "{doc}");
    assert_eq!(doc["machines"].as_array().unwrap().len(), 2, "{doc}");
    let (status, body) = get(&served, "/status");
    assert_eq!(status, 200);
    assert!(!body.contains(NODE), "{body}");
    assert!(body.contains(r#""failed":1"#), "{body}");
    assert_eq!(get(&served, "/status?target=52:54:00:12:34:56").0, 401);
    assert_eq!(
        get_as(&served, "/status?target=52:54:00:12:34:56", OPERATOR_TOKEN).0,
        200
    );

    drop(served);
    let closed = rig.serve(&["--public-view", "none"]);
    assert_eq!(get(&closed, "/machines").0, 401);
    assert_eq!(get(&closed, "/status").0, 401);
    assert_eq!(get_as(&closed, "/machines", OPERATOR_TOKEN).0, 200);
    drop(closed);
    let open = rig.serve(&["--public-view", "full"]);
    let (status, body) = get(&open, "/machines");
    assert_eq!(status, 200);
    assert!(body.contains("disk /dev/vda gone"), "{body}");
}

/// A release can expire: signed with `--expires`, it is refused once the
/// machine's clock passes that time (with nothing written), and signed again
/// it deploys. The expiry is part of what is signed.
#[test]
fn an_expired_release_is_refused() {
    let repo = Repo::new();
    let (key, public) = keygen(&repo);
    repo.add(
        "os:v1",
        &mixed_image(1, 8),
        &[
            "--sign-key",
            key.to_str().unwrap(),
            "--issued",
            "1700000000",
            "--expires",
            "30d",
        ],
    );
    let served = Served::start(&repo.path());
    let disk = repo.file("disk");
    let deploy = || {
        imprint(&[
            "deploy",
            "--url",
            &served.url,
            "--image",
            "os:v1",
            "--disk",
            disk.to_str().unwrap(),
            "--pubkey",
            &public,
        ])
    };
    let refused = deploy();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains("expired at 1702592000"),
        "{}",
        stderr_of(&refused)
    );
    assert!(!disk.exists(), "nothing written");
    let sign = imprint(&[
        "image",
        "sign",
        "--repo",
        repo.path().to_str().unwrap(),
        "os:v1",
        "--sign-key",
        key.to_str().unwrap(),
        "--expires",
        "90d",
    ]);
    assert_success(&sign);
    assert!(String::from_utf8_lossy(&sign.stdout).contains(", expires "));
    assert_success(&deploy());
}
