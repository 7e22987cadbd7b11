//! `/capture/`: a deploy environment that reads its machine's disk uploads it
//! here as an image (docs/capture.md). It asks which chunks the repository
//! lacks, uploads those (each checked as it arrives, and stored only if it is
//! what its name says), then the manifest, published as `image add` publishes
//! one: the ref last, once every chunk it names is there and right.
//!
//! Every request carries the server's capture token, or the credential the
//! boot script of a machine the inventory sends to capture gave it (with
//! `?mac=`), which may publish that machine's one NAME:TAG. A body is read only
//! once its sender is known, and a chunk's only in one of [`UPLOADS`] slots.

use super::body::too_large;
use super::reply::{Reply, ok_reply};
use super::{MAX_IGNORED_BODY, RepoServer, bearer};
use crate::format::digest::{Digest, check_name};
use crate::format::http::{Method, RequestHead, printable};
use crate::format::inventory::Mac;
use crate::format::manifest::{MAX_CHUNK_SIZE, max_stored_size};
use crate::format::repository::chunk_path;
use crate::host::access::constant_time_eq;
use crate::host::fleet::{self, CaptureRefusal};
use crate::host::repo::{self, ChunkCheck, CommitError, LocalRepo, RepoError, Signing, Stored};
use crate::host::statuses;
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Digests one `POST /capture/missing` may ask about.
pub const MAX_ASKED: usize = 8192;
/// Largest manifest a capture may commit (a 64 MiB manifest lists about
/// 900 000 chunks: 900 GB in 1 MiB chunks).
pub const MAX_MANIFEST: u64 = 64 << 20;
/// Chunk uploads processed at once; more are told to come back.
pub const UPLOADS: usize = 4;
/// Senders whose uploads are counted for the log line of their commit.
const COUNTED: usize = 4096;

const NO_CAPTURES: &str = "this server does not accept captures: start it with --capture-token or give a host capture = in the inventory\n";
const NO_CREDENTIAL: &str = "captures need a credential, sent as Authorization: Bearer: the server's capture token (imprint serve --capture-token), or the credential of a machine whose inventory entry says capture = \"NAME:TAG\" (with ?mac=MAC)\n";
const USAGE: &str = "captures are POST /capture/missing, PUT /capture/chunks/sha256/<64 lowercase hex digits> and PUT /capture/refs/NAME/TAG\n";

/// Who may upload captured images, besides the machines the inventory sends
/// to capture.
#[derive(Default)]
pub struct CaptureOptions {
    /// A bearer token that may publish any NAME:TAG.
    pub token: Option<String>,
    /// What published captures are signed with (issued when published).
    pub sign_key: Option<SigningKey>,
}

/// The server's side of captures.
pub(super) struct Captures {
    token: Option<String>,
    sign_key: Option<SigningKey>,
    repo: LocalRepo,
    /// Chunk uploads under way.
    uploads: AtomicUsize,
    /// Held by the commit under way: two never interleave.
    commit: Mutex<()>,
    /// Chunks (and bytes) stored since their sender's last commit.
    stored: Mutex<HashMap<String, (u64, u64)>>,
}

impl Captures {
    pub(super) fn new(options: &CaptureOptions, root: &Path) -> Result<Captures, RepoError> {
        Ok(Captures {
            token: options.token.clone(),
            sign_key: options.sign_key.clone(),
            repo: LocalRepo::open(root)?,
            uploads: AtomicUsize::new(0),
            commit: Mutex::new(()),
            stored: Mutex::new(HashMap::new()),
        })
    }

    fn upload_slot(&self) -> Option<Slot<'_>> {
        let taken = self.uploads.fetch_add(1, Ordering::AcqRel);
        if taken >= UPLOADS {
            self.uploads.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(&self.uploads))
    }

    fn count(&self, who: &str, bytes: u64) {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if stored.len() < COUNTED || stored.contains_key(who) {
            let n = stored.entry(who.to_string()).or_default();
            *n = (n.0 + 1, n.1 + bytes);
        }
    }

    fn take_count(&self, who: &str) -> (u64, u64) {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        stored.remove(who).unwrap_or_default()
    }
}

/// One of the [`UPLOADS`] slots, given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request asks.
enum Route {
    Missing,
    Chunk(Digest),
    Ref { name: String, tag: String },
}

impl Route {
    fn of(head: &RequestHead) -> Result<Route, Reply> {
        let path = head.path();
        match head.method {
            Method::Post if path == "/capture/missing" => Ok(Route::Missing),
            Method::Put => {
                if let Some(hex) = path.strip_prefix("/capture/chunks/sha256/") {
                    return Digest::from_hex(hex).map(Route::Chunk).map_err(|_| {
                        Reply::text(404, "a chunk is named by 64 lowercase hex digits\n")
                    });
                }
                let Some((name, tag)) = path
                    .strip_prefix("/capture/refs/")
                    .and_then(|r| r.split_once('/'))
                else {
                    return Err(Reply::text(404, USAGE));
                };
                if let Err(e) = check_name("image name", name).and(check_name("tag", tag)) {
                    return Err(Reply::text(
                        404,
                        &format!("{}\n", printable(&e.to_string())),
                    ));
                }
                Ok(Route::Ref {
                    name: name.to_string(),
                    tag: tag.to_string(),
                })
            }
            _ => Err(Reply::text(405, USAGE)),
        }
    }

    /// The largest body it takes.
    fn limit(&self) -> u64 {
        match self {
            Route::Missing => MAX_ASKED as u64 * 32,
            Route::Chunk(_) => max_stored_size(MAX_CHUNK_SIZE),
            Route::Ref { .. } => MAX_MANIFEST,
        }
    }
}

/// Who sent a request.
enum Who {
    /// The capture token, from this address.
    Token(IpAddr),
    /// A machine sent to capture, with its credential, and the image it may
    /// publish.
    Machine {
        mac: Mac,
        credential: String,
        name: String,
        tag: String,
    },
}

impl Who {
    /// Whose uploads a commit's log line counts: a machine's, or those of
    /// the capture token from one address.
    fn label(&self) -> String {
        match self {
            Who::Token(peer) => format!("the capture token from {peer}"),
            Who::Machine { mac, .. } => mac.to_string(),
        }
    }
}

impl From<RepoError> for Reply {
    fn from(e: RepoError) -> Reply {
        log::warn!("capture: {}", printable(&e.to_string()));
        Reply::text(500, "the server could not store it; its log says why\n")
    }
}

impl RepoServer {
    /// Whether anyone may capture: with the capture token, or a machine the
    /// inventory sends to capture.
    fn takes_captures(&self) -> bool {
        self.captures.token.is_some()
            || self
                .provisioning
                .fleet
                .as_ref()
                .is_some_and(|f| f.takes_captures())
    }

    /// Any request under `/capture/`.
    pub(super) fn capture(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        peer: IpAddr,
    ) -> Reply {
        if !self.takes_captures() {
            let reply = Reply::text(404, NO_CAPTURES);
            return self.refuse_body(head, stream, buf, MAX_IGNORED_BODY, reply);
        }
        let route = match Route::of(head) {
            Ok(route) => route,
            Err(reply) => return self.refuse_body(head, stream, buf, MAX_IGNORED_BODY, reply),
        };
        let limit = route.limit();
        if head.header("content-length").is_none() {
            return Reply::text(411, "a capture request gives its body's Content-Length\n");
        }
        if head.content_length > limit {
            return too_large(limit);
        }
        let who = match self.capturer(head, peer) {
            Ok(who) => who,
            Err(reply) => {
                log::warn!(
                    "capture {} from {peer} refused ({})",
                    printable(head.path()),
                    reply.status
                );
                // Drained only when small: a client without the credential
                // must not hold a connection for a large body's time.
                return self.refuse_body(head, stream, buf, MAX_IGNORED_BODY, reply);
            }
        };
        match route {
            Route::Missing => self.missing(head, stream, buf),
            Route::Chunk(name) => self.put_chunk(head, stream, buf, &who, name),
            Route::Ref { name, tag } => self.put_ref(head, stream, buf, &who, &name, &tag, peer),
        }
    }

    /// The sender of a capture request, from its bearer token: the capture
    /// token, or with `?mac=` a machine's credential.
    fn capturer(&self, head: &RequestHead, peer: IpAddr) -> Result<Who, Reply> {
        let Some(given) = bearer(head) else {
            return Err(Reply::text(401, NO_CREDENTIAL));
        };
        if let Some(token) = &self.captures.token
            && constant_time_eq(given.as_bytes(), token.as_bytes())
        {
            return Ok(Who::Token(peer));
        }
        let Some(mac) = head.query("mac") else {
            // Guessing goes no faster than this per connection.
            std::thread::sleep(Duration::from_millis(250));
            return Err(Reply::text(
                403,
                "that is not this server's capture token (a machine sent to capture gives its credential with ?mac=MAC)\n",
            ));
        };
        let Some(mac) = fleet::parse_mac(mac) else {
            return Err(Reply::text(400, "?mac= is not a MAC address\n"));
        };
        let refused = |r: CaptureRefusal| Reply::text(403, &format!("{r}\n"));
        let Some(fleet) = &self.provisioning.fleet else {
            return Err(refused(CaptureRefusal::NotCapturing(mac)));
        };
        let (name, tag) = fleet.capture_allowed(mac, given).map_err(refused)?;
        Ok(Who::Machine {
            mac,
            credential: given.to_string(),
            name,
            tag,
        })
    }

    /// `POST /capture/missing`: of the digests in the body (32 bytes each),
    /// those whose chunk the repository does not hold, in the order given.
    fn missing(&self, head: &RequestHead, stream: &mut TcpStream, buf: &mut Vec<u8>) -> Reply {
        let body = match self.read_body(head, stream, buf, MAX_ASKED as u64 * 32) {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        if body.is_empty() || body.len() % 32 != 0 {
            return Reply::text(
                400,
                &format!(
                    "the body is 1 to {MAX_ASKED} SHA-256 digests, 32 bytes each, back to back\n"
                ),
            );
        }
        let asked: Vec<Digest> = body
            .chunks_exact(32)
            .map(|raw| {
                let mut d = [0u8; 32];
                d.copy_from_slice(raw);
                Digest(d)
            })
            .collect();
        let missing = repo::missing(&self.captures.repo, &asked);
        let mut reply = ok_reply(
            "application/octet-stream",
            "no-store",
            missing.iter().flat_map(|d| d.0).collect(),
        );
        reply
            .headers
            .push(("X-Imprint-Missing", missing.len().to_string()));
        reply
    }

    /// `PUT /capture/chunks/sha256/HEX`: one zstd frame whose content hashes
    /// to HEX, checked as it arrives and stored as sent (201), unless the
    /// repository holds it already (200, left as it is). Either way
    /// `X-Imprint-Stored-Size` gives the size a manifest must say.
    fn put_chunk(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        who: &Who,
        name: Digest,
    ) -> Reply {
        let limit = max_stored_size(MAX_CHUNK_SIZE);
        let Some(_slot) = self.captures.upload_slot() else {
            let mut reply = Reply::text(
                503,
                &format!("{UPLOADS} chunk uploads are under way: send it again in a second\n"),
            );
            reply.headers.push(("Retry-After", "1".into()));
            return self.refuse_body(head, stream, buf, limit, reply);
        };
        let mut check = match ChunkCheck::new(name) {
            Ok(check) => check,
            Err(e) => {
                log::warn!("capture: starting zstd: {e}");
                return Reply::text(503, "the server is short of memory; try again\n");
            }
        };
        let refused = |e: repo::ChunkRefusal| Reply::text(422, &format!("{e}\n"));
        let rel = chunk_path(&name);
        let stored = self.captures.repo.write_once(&rel, |file| {
            self.read_body_with(head, stream, buf, limit, |piece| {
                check.feed(piece).map_err(refused)?;
                file.write_all(piece).map_err(|e| {
                    log::warn!("capture: writing {rel}: {e}");
                    Reply::text(500, "the server could not store it; its log says why\n")
                })
            })?;
            check.finish().map_err(refused)
        });
        let size = std::fs::metadata(self.captures.repo.path(&rel)).map_or(0, |m| m.len());
        let mut reply = match stored {
            Ok(Stored::New) => {
                self.captures.count(&who.label(), size);
                Reply::text(201, &format!("stored {name}, {size} bytes\n"))
            }
            Ok(Stored::Present) => Reply::text(200, &format!("{name} is stored already\n")),
            Err(reply) => return reply,
        };
        reply
            .headers
            .push(("X-Imprint-Stored-Size", size.to_string()));
        reply
    }

    /// `PUT /capture/refs/NAME/TAG`: the manifest, published once every
    /// chunk it names is stored and right (201, with its digest); 409 while
    /// chunks are missing, 422 when one is not what the manifest says.
    #[allow(clippy::too_many_arguments)]
    fn put_ref(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        who: &Who,
        name: &str,
        tag: &str,
        peer: IpAddr,
    ) -> Reply {
        if let Who::Machine {
            mac,
            name: allowed,
            tag: allowed_tag,
            ..
        } = who
            && (allowed.as_str(), allowed_tag.as_str()) != (name, tag)
        {
            let refusal = CaptureRefusal::OtherImage {
                mac: *mac,
                allowed: format!("{allowed}:{allowed_tag}"),
                asked: format!("{name}:{tag}"),
            };
            log::warn!("capture from {peer} refused: {refusal}");
            let reply = Reply::text(403, &format!("{refusal}\n"));
            return self.refuse_body(head, stream, buf, MAX_MANIFEST, reply);
        }
        // The manifest is read once this commit runs: one is in memory at a
        // time, and the others wait their turn.
        let _one = self
            .captures
            .commit
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let body = match self.read_body(head, stream, buf, MAX_MANIFEST) {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        let signing = self.captures.sign_key.as_ref().map(|key| Signing {
            key,
            issued: fleet::unix_now(),
            expires: None,
        });
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let label = who.label();
        let digest = match repo::commit(
            &self.captures.repo,
            name,
            tag,
            &body,
            signing.as_ref(),
            jobs,
        ) {
            Ok(digest) => digest,
            Err(e) => {
                log::warn!(
                    "capture {name}:{tag} by {label} refused: {}",
                    printable(&e.to_string())
                );
                let status = match &e {
                    CommitError::Name(_) | CommitError::Manifest(_) => 400,
                    CommitError::Missing { .. } => 409,
                    CommitError::OtherName { .. } | CommitError::Wrong { .. } => 422,
                    CommitError::Unreadable(_) | CommitError::Repo(_) => 500,
                };
                let mut reply = Reply::text(status, &format!("{}\n", printable(&e.to_string())));
                if let CommitError::Missing { count, .. } = e {
                    reply.headers.push(("X-Imprint-Missing", count.to_string()));
                }
                return reply;
            }
        };
        let (chunks, bytes) = self.captures.take_count(&label);
        let by = match who {
            Who::Token(_) => "the capture token".to_string(),
            Who::Machine { mac, .. } => mac.to_string(),
        };
        log::info!(
            "capture {name}:{tag} published as {digest} by {by} from {peer}: {chunks} chunks ({bytes} bytes) uploaded for it"
        );
        if let Who::Machine {
            mac, credential, ..
        } = who
        {
            self.machine_captured(*mac, credential, name, tag, &digest, peer);
        }
        let mut reply = Reply::text(201, &format!("{digest}\n"));
        reply
            .headers
            .push(("Location", format!("/refs/{name}/{tag}")));
        reply
    }

    /// A machine's capture is published: it completes, and its status says
    /// so (for the page, whatever its capture reported last).
    fn machine_captured(
        &self,
        mac: Mac,
        credential: &str,
        name: &str,
        tag: &str,
        digest: &Digest,
        peer: IpAddr,
    ) {
        let Some(fleet) = &self.provisioning.fleet else {
            return;
        };
        if !fleet.captured(mac, credential, name, tag, digest) {
            log::warn!(
                "{mac}: was reprovisioned while its capture was published; it is left as it is"
            );
            return;
        }
        let event = serde_json::json!({
            "target": mac.to_string(),
            "phase": "captured",
            "image": format!("{name}:{tag}"),
            "digest": digest.to_string(),
        });
        if let Ok(event) = statuses::parse(event.to_string().as_bytes(), peer)
            && let Ok(mut table) = self.statuses.lock()
        {
            let _ = table.post(event, peer, fleet::unix_now(), true);
        }
    }
}
