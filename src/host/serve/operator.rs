//! Who sees what on `imprint serve`, and the operator's actions.
//!
//! The operator proves who they are with their token, in an `Authorization:
//! Bearer` header (the command line, scripts) or in the session cookie a
//! browser gets for it once (`POST /session`, `HttpOnly`, `SameSite=Strict`).
//! Actions are POSTs, refused when a browser says they come from another site
//! (`Sec-Fetch-Site`, `Origin` against `Host`), and a cookie counts for an
//! action only with an `Origin` of this server: a page elsewhere, a DNS name
//! rebound to this host, or a link cannot act for the operator.
//!
//! Everyone else sees the public view: by default how many machines are in each
//! phase, and each one's phase and progress, with no MAC address, host name,
//! image or error.
//!
//! The views are built from the tables when they change and then shared by
//! every client that asks ([`Views`]): a client that reads slowly holds a
//! reference to the one copy, not a copy of its own, and a few copies of each
//! view at most are alive at once, however many clients read.

use super::reply::{Body, Reply, ok_reply};
use super::{RepoServer, bearer};
use crate::format::http::{self, RequestHead};
use crate::format::status::Phase;
use crate::host::access::{SESSION_COOKIE, SESSION_SECS, constant_time_eq};
use crate::host::fleet;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Largest body of a sign-in.
pub const MAX_SIGN_IN: u64 = 4096;
/// Copies of one view kept alive at once while slow clients still read older
/// ones; beyond it they get the newest copy there is, a little out of date.
const COPIES: usize = 3;

/// What a client without the operator's token sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicView {
    /// Nothing: `/status` and `/machines` answer 401.
    None,
    /// How many machines are in each phase, and each one's phase and progress.
    Counts,
    /// Everything, as the operator sees it (a network where every client is
    /// trusted).
    Full,
}

impl std::str::FromStr for PublicView {
    type Err = String;
    fn from_str(s: &str) -> Result<PublicView, String> {
        match s {
            "none" => Ok(PublicView::None),
            "counts" => Ok(PublicView::Counts),
            "full" => Ok(PublicView::Full),
            other => Err(format!("{other:?} is not one of none, counts, full")),
        }
    }
}

/// How the operator proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proof {
    Bearer,
    Cookie,
}

/// One view's shared serialization.
#[derive(Default)]
struct SharedView {
    current: Option<(u128, Arc<Vec<u8>>)>,
    /// Earlier copies, alive while slow clients are still sent them.
    older: Vec<Weak<Vec<u8>>>,
}

impl SharedView {
    /// The view as of `version`, built by `build` unless the copy in hand is
    /// of that version, or too many copies are alive to make another.
    fn get(&mut self, version: u128, build: impl FnOnce() -> Vec<u8>) -> Arc<Vec<u8>> {
        self.older.retain(|w| w.strong_count() > 0);
        if let Some((v, body)) = &self.current {
            let held = usize::from(Arc::strong_count(body) > 1);
            if *v == version || self.older.len() + held + 1 > COPIES {
                return Arc::clone(body);
            }
        }
        let body = Arc::new(build());
        if let Some((_, old)) = self.current.replace((version, Arc::clone(&body)))
            && Arc::strong_count(&old) > 1
        {
            self.older.push(Arc::downgrade(&old));
        }
        body
    }
}

/// The views of the tables that clients read, each shared.
#[derive(Default)]
pub(super) struct Views {
    status: Mutex<SharedView>,
    status_public: Mutex<SharedView>,
    machines: Mutex<SharedView>,
    machines_public: Mutex<SharedView>,
}

fn shared(
    view: &Mutex<SharedView>,
    version: u128,
    build: impl FnOnce() -> Vec<u8>,
) -> Arc<Vec<u8>> {
    view.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(version, build)
}

fn shared_json(body: Arc<Vec<u8>>, view: &'static str) -> Reply {
    let mut reply = ok_reply("application/json", "no-store", Vec::new());
    reply.body = Body::Shared(body);
    reply.headers.push(("X-Imprint-View", view.to_string()));
    reply
}

/// The value of cookie `name` in a request.
fn cookie<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
    head.header("cookie")?.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Why a browser's request is not the operator's own, if it is not: it says
/// it comes from another site, or from a page of another origin.
fn cross_site(head: &RequestHead) -> Option<String> {
    if let Some(site) = head.header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!(
            "the browser says it is a {} request",
            http::printable(site)
        ));
    }
    let origin = head.header("origin")?;
    let host = head.header("host").unwrap_or("");
    let same = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|h| !h.is_empty() && h.eq_ignore_ascii_case(host));
    (!same).then(|| {
        format!(
            "it comes from a page of {}, not of this server ({})",
            http::printable(origin),
            http::printable(host)
        )
    })
}

impl RepoServer {
    /// Whether the request is the operator's, and how it says so.
    pub(super) fn operator(&self, head: &RequestHead) -> Option<Proof> {
        let token = self.limits.operator_token.as_deref()?;
        if let Some(given) = bearer(head) {
            return constant_time_eq(given.as_bytes(), token.as_bytes()).then_some(Proof::Bearer);
        }
        let session = cookie(head, SESSION_COOKIE)?;
        self.keys
            .session_valid(session, token, fleet::unix_now())
            .then_some(Proof::Cookie)
    }

    /// An action's check: the operator's, from no other site. `Err` is the
    /// answer to give.
    fn action_allowed(&self, head: &RequestHead) -> Result<(), Reply> {
        if self.limits.operator_token.is_none() {
            return Err(Reply::text(
                403,
                "this server has no operator token, so it takes no actions: start it with --operator-token-file FILE (with --hosts, one is made in the data directory)\n",
            ));
        }
        if let Some(why) = cross_site(head) {
            return Err(Reply::text(
                403,
                &format!(
                    "refused: {why}; actions are taken from this server's own page, or with the operator's token in an Authorization header\n"
                ),
            ));
        }
        match self.operator(head) {
            Some(Proof::Bearer) => Ok(()),
            Some(Proof::Cookie) if head.header("origin").is_some() => Ok(()),
            Some(Proof::Cookie) => Err(Reply::text(
                403,
                "refused: a session cookie counts for an action only in a request from this server's page (with its Origin)\n",
            )),
            None => Err(Reply::text(
                401,
                "actions need the operator's token (Authorization: Bearer TOKEN, or sign in on the page)\n",
            )),
        }
    }

    /// `POST /session` with the operator's token as the body: a session
    /// cookie for the page.
    pub(super) fn sign_in(&self, head: &RequestHead, body: &[u8]) -> Reply {
        let Some(token) = self.limits.operator_token.as_deref() else {
            return Reply::text(404, "this server has no operator token to sign in with\n");
        };
        if let Some(why) = cross_site(head) {
            return Reply::text(403, &format!("refused: {why}\n"));
        }
        if head.header("origin").is_none() {
            return Reply::text(
                403,
                "sign in from this server's page; scripts send the token in an Authorization header instead\n",
            );
        }
        let given = String::from_utf8_lossy(body);
        if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
            // Guessing goes no faster than this per connection.
            std::thread::sleep(Duration::from_millis(250));
            return Reply::text(403, "that is not the operator's token\n");
        }
        let mut reply = Reply::text(204, "");
        reply.headers.push((
            "Set-Cookie",
            format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}",
                self.keys.session(token, fleet::unix_now())
            ),
        ));
        reply
    }

    /// `POST /session/end`: the browser forgets its session.
    pub(super) fn sign_out(&self, head: &RequestHead) -> Reply {
        if let Some(why) = cross_site(head) {
            return Reply::text(403, &format!("refused: {why}\n"));
        }
        let mut reply = Reply::text(204, "");
        reply.headers.push((
            "Set-Cookie",
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        ));
        reply
    }

    /// `POST /machines/MAC/reprovision`, the operator's.
    pub(super) fn machine_action(&self, head: &RequestHead, path: &str, peer: IpAddr) -> Reply {
        let Some(fleet) = &self.provisioning.fleet else {
            return Reply::text(404, "no inventory: start imprint serve with --hosts FILE\n");
        };
        if let Err(reply) = self.action_allowed(head) {
            log::warn!(
                "refused {} from {peer} ({}): {}",
                http::printable(path),
                reply.status,
                http::printable(match &reply.body {
                    Body::Bytes(b) => std::str::from_utf8(b).unwrap_or("").trim(),
                    _ => "",
                })
            );
            return reply;
        }
        let Some((stem, "reprovision")) = path.trim_start_matches("/machines/").split_once('/')
        else {
            return Reply::text(404, "the action is /machines/MAC/reprovision\n");
        };
        let Some(mac) = fleet::parse_mac(stem) else {
            return Reply::text(400, "not a MAC address\n");
        };
        if !fleet.reprovision(mac) {
            return Reply::text(
                503,
                &format!(
                    "{mac}: the server remembers {} machines, its most; remove machine files under its data directory, or list {mac} in the inventory\n",
                    fleet::MAX_MACHINES
                ),
            );
        }
        Reply::text(200, &format!("{mac} deploys on its next network boot\n"))
    }

    /// What this client sees: the operator's view, the full one, the public
    /// counts (`X-Imprint-View` names it), or nothing.
    fn view(&self, head: &RequestHead) -> Option<&'static str> {
        if self.operator(head).is_some() {
            return Some("operator");
        }
        match self.limits.public_view {
            PublicView::Full => Some("full"),
            PublicView::Counts => Some("counts"),
            PublicView::None => None,
        }
    }

    /// `GET /status`: every machine's latest event (`?target=NAME`: one
    /// machine's recent events), or, in the public view, how many machines
    /// are in each phase.
    pub(super) fn get_status(&self, head: &RequestHead) -> Reply {
        let Some(view) = self.view(head) else {
            return not_public();
        };
        let all = view != "counts";
        let Ok(table) = self.statuses.lock() else {
            return Reply::text(500, "status table unavailable\n");
        };
        if let Some(name) = head.query("target") {
            if !all {
                return not_public();
            }
            return match table.history(name) {
                Some(h) => ok_reply("application/json", "no-store", h.to_string().into_bytes()),
                None => Reply::text(404, "no such machine\n"),
            };
        }
        let version = u128::from(table.version());
        let body = if all {
            shared(&self.views.status, version, || table.latest_json())
        } else {
            shared(&self.views.status_public, version, || {
                json!({ "view": "counts", "phases": table.phase_counts() })
                    .to_string()
                    .into_bytes()
            })
        };
        drop(table);
        shared_json(body, view)
    }

    /// `GET /machines`, what the page shows: the server's time, the machines of
    /// the inventory or remembered (each with its latest status event), and
    /// the other names that report status; in the public view, each machine's
    /// phase and progress only.
    pub(super) fn machines(&self, head: &RequestHead) -> Reply {
        let Some(view) = self.view(head) else {
            return not_public();
        };
        let all = view != "counts";
        let Ok(table) = self.statuses.lock() else {
            return Reply::text(500, "status table unavailable\n");
        };
        let fleet = self.provisioning.fleet.as_ref();
        let version =
            (u128::from(table.version()) << 64) | u128::from(fleet.map_or(0, |f| f.version()));
        let build = |all: bool| {
            let mut latest = table.latest();
            let mut machines = fleet.map_or(Value::Array(Vec::new()), |f| f.machines_json());
            if let (Some(list), Some(events)) = (machines.as_array_mut(), latest.as_object_mut()) {
                for m in list {
                    let event = m["mac"].as_str().and_then(|mac| events.remove(mac));
                    m["event"] = event.unwrap_or(Value::Null);
                }
            }
            let doc = json!({
                "now": fleet::unix_now(),
                "inventory": fleet.is_some(),
                "signin": self.limits.operator_token.is_some(),
                "machines": machines,
                "others": latest,
            });
            if all { doc } else { public_machines(&doc) }
                .to_string()
                .into_bytes()
        };
        let body = if all {
            shared(&self.views.machines, version, || build(true))
        } else {
            shared(&self.views.machines_public, version, || build(false))
        };
        drop(table);
        shared_json(body, view)
    }
}

fn not_public() -> Reply {
    Reply::text(
        401,
        "this server shows what machines report to its operator only: send the operator's token (Authorization: Bearer TOKEN) or sign in on the page\n",
    )
}

/// A phase as the page shows it: committed, held, or the latest heard.
fn shown_phase(m: &Value) -> String {
    let event = &m["event"];
    let state = &m["state"];
    if state["committed"] == true {
        return "committed".into();
    }
    // Held is what its next network boot gets; while a deploy is under way,
    // its phase says more.
    if m["next"] == "hold" && state["in_progress"] != true {
        return "hold".into();
    }
    // A machine's hardware facts are not a step of its deploy.
    event["phase"]
        .as_str()
        .filter(|p| *p != Phase::Hardware.as_str())
        .or(state["phase"].as_str())
        .filter(|p| crate::format::status::shown_as_phase(p))
        .unwrap_or("unknown")
        .to_string()
}

/// The public view of a `/machines` document: each machine's phase, what its
/// next network boot does (deploy, local or hold, no image) and its progress;
/// how many are in each phase.
fn public_machines(doc: &Value) -> Value {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    let fleet = doc["machines"].as_array().into_iter().flatten();
    let others = doc["others"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, event)| json!({ "event": event }));
    let others: Vec<Value> = others.collect();
    for m in fleet.chain(others.iter()) {
        let phase = shown_phase(m);
        *counts.entry(phase.clone()).or_insert(0) += 1;
        let next = m["next"]
            .as_str()
            .and_then(|n| n.split(' ').next())
            .unwrap_or("");
        let progress = |key: &str| m["event"][key].as_u64();
        rows.push(json!({
            "phase": phase,
            "next": next,
            "done": progress("done"),
            "total": progress("total"),
        }));
    }
    json!({
        "now": doc["now"],
        "inventory": doc["inventory"],
        "signin": doc["signin"],
        "public": true,
        "counts": counts,
        "machines": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_built_once_per_version_and_copies_stay_few() {
        let mut copy = SharedView::default();
        let builds = std::cell::Cell::new(0);
        let build = |n: u8| {
            builds.set(builds.get() + 1);
            vec![n; 1000]
        };
        let first = copy.get(1, || build(1));
        let again = copy.get(1, || build(9));
        assert!(Arc::ptr_eq(&first, &again));
        // Slow readers hold each version; a few new ones are made...
        let mut held = vec![first, again];
        for v in 2..=COPIES as u128 {
            let body = copy.get(v, || build(v as u8));
            assert_eq!(body[0], v as u8);
            held.push(body);
        }
        // ...then the newest is handed out until the old ones are let go.
        let stale = copy.get(99, || build(99));
        assert_eq!(stale[0], COPIES as u8);
        let alive = |held: &[Arc<Vec<u8>>]| {
            let mut ptrs: Vec<*const Vec<u8>> = held.iter().map(Arc::as_ptr).collect();
            ptrs.sort();
            ptrs.dedup();
            ptrs.len()
        };
        held.push(stale);
        assert_eq!(alive(&held), COPIES);
        held.clear();
        let fresh = copy.get(99, || build(99));
        assert_eq!(fresh[0], 99);
        assert_eq!(builds.get(), COPIES + 1);
    }

    #[test]
    fn the_public_view_names_no_machine() {
        let doc = json!({
            "now": 5, "inventory": true, "signin": true,
            "machines": [
                { "mac": "52:54:00:12:34:56", "hostname": "node-1", "image": "web:v2",
                  "next": "deploy web:v2", "state": { "last_error": "disk gone", "phase": "failed" },
                  "event": { "phase": "writing", "done": 5, "total": 10, "from": "10.0.0.9" } },
                { "mac": "52:54:00:12:34:57", "next": "local", "state": { "committed": true }, "event": null },
                { "mac": "52:54:00:12:34:58", "next": "hold", "state": { "in_progress": true },
                  "event": { "phase": "writing" } },
            ],
            "others": { "static-9": { "phase": "failed", "error": "secret path /x" } },
        });
        let public = public_machines(&doc);
        let text = public.to_string();
        for secret in [
            "52:54",
            "node-1",
            "web:v2",
            "disk gone",
            "10.0.0.9",
            "static-9",
            "secret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // The last attempt under way shows what it does, not the hold ahead.
        assert_eq!(public["counts"]["writing"], 2);
        assert_eq!(public["machines"][2]["next"], "hold");
        assert_eq!(public["counts"]["committed"], 1);
        assert_eq!(public["counts"]["failed"], 1);
        assert_eq!(public["machines"][0]["next"], "deploy");
        assert_eq!(public["machines"][0]["done"], 5);
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let head = |extra: &str| {
            http::parse_head(
                format!("POST /x HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n{extra}\r\n").as_bytes(),
            )
            .unwrap()
        };
        assert!(cross_site(&head("")).is_none());
        assert!(cross_site(&head("Origin: http://10.0.0.1:8080\r\n")).is_none());
        assert!(cross_site(&head("Sec-Fetch-Site: same-origin\r\n")).is_none());
        for evil in [
            "Origin: http://evil.example\r\n",
            "Origin: null\r\n",
            "Origin: http://10.0.0.1:8080.evil.example\r\n",
            "Sec-Fetch-Site: cross-site\r\n",
            "Sec-Fetch-Site: same-site\r\n",
        ] {
            assert!(cross_site(&head(evil)).is_some(), "{evil}");
        }
        let with_cookie = head("Cookie: a=b; imprint_operator=xyz; c=d\r\n");
        assert_eq!(cookie(&with_cookie, SESSION_COOKIE), Some("xyz"));
    }
}
