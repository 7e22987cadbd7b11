//! `imprint serve`: a small HTTP/1.1 server for a repository directory, plus the
//! status endpoint deploy environments report to, and (with an inventory) the
//! provisioning server of a rack.
//!
//! Any static web server can serve a repository; this one exists so a single
//! binary is enough on the host, and so status events have somewhere to go. It is
//! built to stay up in front of a rack: one thread per connection up to a cap,
//! and a smaller cap per client address (beyond them new connections are closed
//! at once), a deadline for each request head and an idle timeout between
//! requests, bounded heads and bodies (a declared length is never what decides
//! an allocation), accept errors such as running out of descriptors survived,
//! and nothing from a client logged raw.
//!
//! - [`files`]: what it sends from the repository, and the deploy environment;
//! - [`operator`]: who sees what, the operator's actions and sign-in;
//! - [`capture`]: images uploaded by machines that capture their disks;
//! - [`body`]: request bodies, read whole, in pieces or thrown away;
//! - [`reply`]: responses, and how they are written.

mod body;
mod capture;
mod files;
mod operator;
mod reply;

pub use capture::CaptureOptions;
pub use operator::PublicView;

use super::access::{Keys, constant_time_eq};
use super::fleet::{self, Fleet};
use super::statuses::{self, StatusTable};
use crate::format::http::{self, Method, RequestHead};
use crate::format::provision::Platform;
use reply::{Reply, page_asset, refuse_busy, write_reply};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest body accepted on a request that does not use one (it is drained).
const MAX_IGNORED_BODY: u64 = 64 << 10;
const THREAD_STACK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("repository {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("listening on {addr}: {reason}; is the address free and valid?")]
    Listen { addr: String, reason: String },
}

/// What one server allows its clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Time a client has to send a whole request head.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// Time one read of a body or one write of a response may stall.
    pub io_timeout: Duration,
    /// Connections one client address may have open at once.
    pub max_per_client: usize,
    /// When set, status events of deploy environments this server did not
    /// boot (static scripts, media) must carry it (`Authorization: Bearer
    /// TOKEN` or `?token=TOKEN`). Machines it boots carry their own credential.
    pub status_token: Option<String>,
    /// The operator's token: for actions, and to see what machines reported.
    pub operator_token: Option<String>,
    /// What everyone else sees.
    pub public_view: PublicView,
    /// Machines the status table keeps.
    pub status_machines: usize,
    /// Bytes of events the status table keeps.
    pub status_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(30),
            max_per_client: 256,
            status_token: None,
            operator_token: None,
            public_view: PublicView::Counts,
            status_machines: 4096,
            status_bytes: 64 << 20,
        }
    }
}

/// What makes the server a provisioning server: the fleet (inventory and
/// machines) and the deploy environment it boots.
#[derive(Default)]
pub struct Provisioning {
    pub fleet: Option<Fleet>,
    /// Served as `/boot/vmlinuz` and `/boot/initramfs.img`; without them those
    /// paths are looked up in the repository like any other.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Who may upload captured images.
    pub capture: CaptureOptions,
}

pub struct RepoServer {
    listener: TcpListener,
    root: PathBuf,
    limits: Limits,
    provisioning: Provisioning,
    statuses: Mutex<StatusTable>,
    /// What operator sessions are signed with (the fleet's key, else one for
    /// this run).
    keys: Keys,
    views: operator::Views,
    captures: capture::Captures,
    open: AtomicUsize,
    /// Connections open, by client address.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    stopping: AtomicBool,
}

/// Why reading a request ended.
enum ReadEnd {
    /// The client closed, or sent nothing before the idle timeout: just close.
    Quiet,
    /// Tell the client, then close.
    Reply(Reply),
}

impl RepoServer {
    /// Binds `listen` (`host:port`, port 0 picks a free one) for the repository at `root`.
    pub fn bind(root: &Path, listen: &str, limits: Limits) -> Result<Arc<RepoServer>, ServeError> {
        RepoServer::bind_provisioning(root, listen, limits, Provisioning::default())
    }

    /// [`RepoServer::bind`], serving boot scripts and the deploy environment too.
    pub fn bind_provisioning(
        root: &Path,
        listen: &str,
        limits: Limits,
        provisioning: Provisioning,
    ) -> Result<Arc<RepoServer>, ServeError> {
        let root = root.canonicalize().map_err(|source| ServeError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(ServeError::Root {
                path: root,
                source: io::Error::other("not a directory"),
            });
        }
        let listen_err = |reason: String| ServeError::Listen {
            addr: listen.to_string(),
            reason,
        };
        let listener = TcpListener::bind(listen).map_err(|e| listen_err(e.to_string()))?;
        crate::sys::set_tcp_nodelay(&listener).map_err(|e| listen_err(e.to_string()))?;
        let statuses = StatusTable::new(limits.status_machines, limits.status_bytes);
        let captures =
            capture::Captures::new(&provisioning.capture, &root).map_err(|e| ServeError::Root {
                path: root.clone(),
                source: io::Error::other(e.to_string()),
            })?;
        let keys = match &provisioning.fleet {
            Some(fleet) => fleet.keys().clone(),
            None => Keys::ephemeral().map_err(|e| listen_err(format!("making a key: {e}")))?,
        };
        Ok(Arc::new(RepoServer {
            listener,
            root,
            limits,
            provisioning,
            statuses: Mutex::new(statuses),
            keys,
            views: operator::Views::default(),
            captures,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts connections until [`RepoServer::shutdown`]; each is served on its
    /// own thread while fewer than the limit are open.
    pub fn run(self: &Arc<Self>) {
        let mut last_complaint: Option<Instant> = None;
        while !self.stopping.load(Ordering::Relaxed) {
            let (stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(_) if self.stopping.load(Ordering::Relaxed) => break,
                Err(e) => {
                    // Out of descriptors or memory: wait for connections to
                    // close rather than end the loop, and say so now and then.
                    if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        log::warn!("accepting a connection: {e}; retrying");
                        last_complaint = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
                self.open.fetch_sub(1, Ordering::AcqRel);
                refuse_busy(stream);
                continue;
            }
            let client = peer.ip();
            if !self.take_client_slot(client) {
                self.open.fetch_sub(1, Ordering::AcqRel);
                refuse_busy(stream);
                continue;
            }
            let server = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    server.serve_connection(stream, client);
                    server.free_client_slot(client);
                    server.open.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                // The stream went down with the closure; the slots are ours to free.
                self.free_client_slot(client);
                self.open.fetch_sub(1, Ordering::AcqRel);
                log::warn!("starting a connection thread: {e}");
            }
        }
    }

    /// One more connection for `client`, unless it has its share open already.
    fn take_client_slot(&self, client: IpAddr) -> bool {
        let mut open = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(client).or_insert(0);
        if *n >= self.limits.max_per_client.max(1) {
            return false;
        }
        *n += 1;
        true
    }

    fn free_client_slot(&self, client: IpAddr) {
        let mut open = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&client);
            }
        }
    }

    /// Stops accepting (new connections are refused); connections already open
    /// finish the request they are on, and close instead of waiting for
    /// another.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wakes the accept call, and the kernel refuses connections from here on.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Read);
    }

    /// After [`RepoServer::shutdown`]: waits until every connection has closed,
    /// or `grace` has passed. Returns how many were still open.
    pub fn drain(&self, grace: Duration) -> usize {
        let start = Instant::now();
        while self.open_connections() > 0 && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.open_connections()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn serve_connection(&self, mut stream: TcpStream, peer: IpAddr) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.limits.io_timeout));
        let mut buf = Vec::with_capacity(4096);
        let mut first = true;
        loop {
            let head = match self.read_head(&mut stream, &mut buf, first) {
                Ok(head) => head,
                Err(ReadEnd::Quiet) => break,
                Err(ReadEnd::Reply(reply)) => {
                    let _ = write_reply(&mut stream, reply, false, false);
                    break;
                }
            };
            first = false;
            let reply = self.answer(&head, &mut stream, &mut buf, peer);
            let keep = head.keep_alive() && !reply.close;
            log::debug!(
                "{peer} {:?} {} -> {}",
                head.method,
                http::printable(head.path()),
                reply.status
            );
            if write_reply(&mut stream, reply, head.method == Method::Head, keep).is_err()
                || !keep
                || self.stopping.load(Ordering::Relaxed)
            {
                break;
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// Reads one request head into `buf` (which may already hold the start of
    /// it, pipelined). The first byte may take the idle timeout (the header
    /// timeout on a new connection); the whole head, the header timeout.
    fn read_head(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        first: bool,
    ) -> Result<RequestHead, ReadEnd> {
        let limits = &self.limits;
        let mut deadline = if buf.is_empty() {
            Instant::now()
                + if first {
                    limits.header_timeout
                } else {
                    limits.idle_timeout
                }
        } else {
            Instant::now() + limits.header_timeout
        };
        let mut started = !buf.is_empty();
        loop {
            if let Some(end) = http::head_end(buf) {
                let parsed = http::parse_head(&buf[..end]);
                buf.drain(..end);
                return parsed.map_err(|e| {
                    let status = match e {
                        http::HttpError::HeadTooLarge | http::HttpError::TooManyHeaders => 431,
                        http::HttpError::Version => 505,
                        http::HttpError::Chunked => 501,
                        _ => 400,
                    };
                    ReadEnd::Reply(Reply::text(status, &format!("{e}\n")).closing())
                });
            }
            if buf.len() >= http::MAX_HEAD {
                return Err(ReadEnd::Reply(
                    Reply::text(431, "request head too large\n").closing(),
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(if started {
                    ReadEnd::Reply(Reply::text(408, "request head too slow\n").closing())
                } else {
                    ReadEnd::Quiet
                });
            }
            // A server stopping does not wait for the next request.
            if !started && self.stopping.load(Ordering::Relaxed) {
                return Err(ReadEnd::Quiet);
            }
            let _ = stream.set_read_timeout(Some(left.min(Duration::from_secs(1))));
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(http::MAX_HEAD + 4 - buf.len());
            match stream.read(&mut chunk[..want]) {
                Ok(0) => return Err(ReadEnd::Quiet),
                Ok(n) => {
                    if !started {
                        started = true;
                        deadline = Instant::now() + limits.header_timeout;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Err(ReadEnd::Quiet),
            }
        }
    }

    fn answer(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        peer: IpAddr,
    ) -> Reply {
        let path = head.path();
        // Capture bodies are read, or not, only once their sender is known.
        if path == "/capture" || path.starts_with("/capture/") {
            return self.capture(head, stream, buf, peer);
        }
        let body_limit = match (head.method, path) {
            (Method::Post, "/status") => Some(statuses::MAX_EVENT as u64),
            (Method::Post, "/session" | "/session/end") => Some(operator::MAX_SIGN_IN),
            _ => None,
        };
        if let Some(limit) = body_limit {
            let body = match self.read_body(head, stream, buf, limit) {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            return match path {
                "/status" => self.post_status(head, &body, peer),
                "/session" => self.sign_in(head, &body),
                _ => self.sign_out(head),
            };
        }
        // Other requests carry no body worth keeping: drain a small one, close
        // on a large one.
        if head.content_length > 0
            && let Err(reply) = self.read_body_with(head, stream, buf, MAX_IGNORED_BODY, |_| Ok(()))
        {
            return reply;
        }
        let fleet = self.provisioning.fleet.as_ref();
        match (head.method, path) {
            (Method::Get | Method::Head, "/status") => self.get_status(head),
            // Without an inventory, /boot.ipxe is a file like any other: one
            // static script for every machine.
            (Method::Get | Method::Head, "/boot.ipxe") if fleet.is_some() => {
                self.boot_script(head, peer)
            }
            (Method::Get | Method::Head, "/machines") => self.machines(head),
            (Method::Get | Method::Head, "/" | "/index.html") => {
                page_asset("text/html; charset=utf-8", include_str!("page.html"))
            }
            (Method::Get | Method::Head, "/page.js") => {
                page_asset("text/javascript; charset=utf-8", include_str!("page.js"))
            }
            (Method::Get | Method::Head, "/page.css") => {
                page_asset("text/css; charset=utf-8", include_str!("page.css"))
            }
            (Method::Post, _) if path.starts_with("/machines/") => {
                self.machine_action(head, path, peer)
            }
            (Method::Get | Method::Head, _) => {
                let operator = path.starts_with("/hosts/") && self.operator(head).is_some();
                if let Some(reply) = self.provisioning_file(head, path, operator) {
                    return reply;
                }
                self.file(head, path)
            }
            _ => Reply::text(
                405,
                "only GET and HEAD on repository files; POST on /status, /session and machine actions; POST and PUT under /capture/\n",
            ),
        }
    }

    /// `GET /boot.ipxe?mac=MAC&platform=PLATFORM`: the machine's boot script.
    /// Without a MAC, a script that asks again with iPXE's own values, so DHCP
    /// can name the plain path.
    fn boot_script(&self, head: &RequestHead, peer: IpAddr) -> Reply {
        let Some(fleet) = &self.provisioning.fleet else {
            return Reply::text(
                404,
                "no inventory: start imprint serve with --hosts FILE to serve boot scripts\n",
            );
        };
        let script = match head.query("mac").and_then(fleet::parse_mac) {
            Some(mac) => {
                let platform = Platform::from_ipxe(head.query("platform").unwrap_or(""));
                let base = match head.header("host").filter(|h| valid_host(h)) {
                    Some(host) => format!("http://{host}"),
                    None => match self.local_addr() {
                        Some(a) => format!("http://{a}"),
                        None => return Reply::text(500, "no address to give\n"),
                    },
                };
                fleet.boot_script(mac, platform, &base, peer)
            }
            None => {
                "#!ipxe\nchain /boot.ipxe?mac=${net0/mac:hexhyp}&platform=${platform}\n".to_string()
            }
        };
        let mut reply = Reply::text(200, &script);
        reply.headers.push(("Cache-Control", "no-store".into()));
        reply
    }

    /// Whether a status event carries the status token (for deploy
    /// environments this server did not boot).
    fn status_token_ok(&self, head: &RequestHead) -> bool {
        let Some(token) = &self.limits.status_token else {
            return false;
        };
        [bearer(head), head.query("token")]
            .into_iter()
            .flatten()
            .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }

    /// `POST /status`. An event that names a machine the server provisions by
    /// its MAC address is that machine's to send: it needs the credential its
    /// boot script gave. Other names report as the status token (or, without
    /// one, the first address to report) allows.
    fn post_status(&self, head: &RequestHead, body: &[u8], peer: IpAddr) -> Reply {
        let event = match statuses::parse(body, peer) {
            Ok(event) => event,
            Err(e @ statuses::StatusError::TooLarge) => return Reply::text(413, &format!("{e}\n")),
            Err(e) => return Reply::text(400, &format!("{}\n", http::printable(&e.to_string()))),
        };
        let machine = self
            .provisioning
            .fleet
            .as_ref()
            .zip(event.name.parse::<crate::format::inventory::Mac>().ok())
            .filter(|(fleet, mac)| fleet.provisions(*mac));
        let trusted = match machine {
            Some((fleet, mac)) => {
                if let Err(refusal) = fleet.on_event(mac, &event.fields, bearer(head), peer) {
                    log::warn!("status for {mac} from {peer} refused: {refusal}");
                    return Reply::text(refusal.status(), &format!("{refusal}\n"));
                }
                true
            }
            None => {
                let trusted = self.status_token_ok(head);
                if self.limits.status_token.is_some() && !trusted {
                    return Reply::text(
                        401,
                        "this server takes status events with its token only\n",
                    );
                }
                trusted
            }
        };
        let logged = http::printable(&String::from_utf8_lossy(body));
        let now = fleet::unix_now();
        let result = match self.statuses.lock() {
            Ok(mut table) => table.post(event, peer, now, trusted),
            Err(_) => return Reply::text(500, "status table unavailable\n"),
        };
        match result {
            Ok(name) => {
                log::info!("status {}: {logged}", http::printable(&name));
                Reply::text(204, "")
            }
            Err(e @ statuses::StatusError::NotOwner { .. }) => {
                Reply::text(409, &format!("{}\n", http::printable(&e.to_string())))
            }
            Err(e) => Reply::text(400, &format!("{}\n", http::printable(&e.to_string()))),
        }
    }

    /// Runs every couple of seconds while the server runs: picks up an edited
    /// inventory, and says what is wrong in it, without waiting for a machine.
    pub fn watch_inventory(self: &Arc<Self>) {
        if self.provisioning.fleet.is_none() {
            return;
        }
        let server = Arc::clone(self);
        std::thread::spawn(move || {
            while !server.stopping.load(Ordering::Relaxed) {
                if let Some(f) = &server.provisioning.fleet {
                    f.reload_if_changed();
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
    }
}

/// The value of an `Authorization: Bearer` header.
fn bearer(head: &RequestHead) -> Option<&str> {
    head.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// A `Host` header fit to put in the URLs of a boot script: a name or address
/// and a port, nothing iPXE would act on.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}
