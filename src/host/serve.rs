//! `imprint serve`: a small HTTP/1.1 server for a repository directory, plus the
//! status endpoint deploy environments report to.
//!
//! Any static web server can serve a repository; this one exists so a single
//! binary is enough on the host, and so status events have somewhere to go. It is
//! built to stay up in front of a rack: one thread per connection up to a cap
//! (beyond it new connections are closed at once), a deadline for each request
//! head and an idle timeout between requests, bounded heads and bodies (a
//! declared length is never what decides an allocation), accept errors such as
//! running out of descriptors survived, and nothing from a client logged raw.
//!
//! It serves regular files below the root only: path segments are restricted to
//! the repository's own character set (no `..`, no escapes), and the resolved
//! path must still lie inside the root, so a symlink cannot lead out of it.

use super::fleet::{self, Fleet};
use super::provision::Platform;
use super::statuses::{self, StatusTable};
use crate::format::http::{self, Method, RangeRequest, RequestHead};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
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
    /// When set, status events must carry it (`Authorization: Bearer TOKEN` or
    /// `?token=TOKEN`) and may then report for any machine.
    pub status_token: Option<String>,
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
            status_token: None,
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
}

pub struct RepoServer {
    listener: TcpListener,
    root: PathBuf,
    limits: Limits,
    provisioning: Provisioning,
    statuses: Mutex<StatusTable>,
    open: AtomicUsize,
    stopping: AtomicBool,
}

/// A response about to be written.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
    /// Close the connection after it (the request could not be read whole).
    close: bool,
}

enum Body {
    Bytes(Vec<u8>),
    File { file: File, len: u64 },
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: Body::Bytes(body.as_bytes().to_vec()),
            close: false,
        }
    }

    fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    fn len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
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
        Ok(Arc::new(RepoServer {
            listener,
            root,
            limits,
            provisioning,
            statuses: Mutex::new(statuses),
            open: AtomicUsize::new(0),
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
            let server = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    server.serve_connection(stream, peer.ip());
                    server.open.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                // The stream went down with the closure; the slot is ours to free.
                self.open.fetch_sub(1, Ordering::AcqRel);
                log::warn!("starting a connection thread: {e}");
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

    /// Reads a body of the declared length, at most `limit` bytes: the length is
    /// checked before anything is read or allocated.
    fn read_body(
        &self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        len: u64,
        limit: u64,
    ) -> Result<Vec<u8>, Reply> {
        if len > limit {
            return Err(Reply::text(413, &format!("body larger than {limit} bytes\n")).closing());
        }
        let len = len as usize;
        let mut body = Vec::with_capacity(len);
        let take = len.min(buf.len());
        body.extend(buf.drain(..take));
        let deadline = Instant::now() + self.limits.io_timeout;
        while body.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Reply::text(408, "request body too slow\n").closing());
            }
            let _ = stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(len - body.len());
            match stream.read(&mut chunk[..want]) {
                Ok(0) => return Err(Reply::text(400, "request body cut short\n").closing()),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Err(Reply::text(400, "request body unreadable\n").closing()),
            }
        }
        Ok(body)
    }

    fn answer(
        &self,
        head: &RequestHead,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        peer: IpAddr,
    ) -> Reply {
        let path = head.path();
        if head.method == Method::Post && path == "/status" {
            return match self.read_body(
                stream,
                buf,
                head.content_length,
                statuses::MAX_EVENT as u64,
            ) {
                Ok(body) => self.post_status(head, &body, peer),
                Err(reply) => reply,
            };
        }
        // Other requests carry no body worth keeping: drain a small one, close
        // on a large one.
        if head.content_length > 0
            && let Err(reply) = self.read_body(stream, buf, head.content_length, MAX_IGNORED_BODY)
        {
            return reply;
        }
        let fleet = self.provisioning.fleet.as_ref();
        match (head.method, path) {
            (Method::Get | Method::Head, "/status") => self.get_status(head),
            // Without an inventory, /boot.ipxe is a file like any other: one
            // static script for every machine.
            (Method::Get | Method::Head, "/boot.ipxe") if fleet.is_some() => self.boot_script(head),
            (Method::Get | Method::Head, "/machines") => self.machines(),
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
                if let Some(reply) = self.provisioning_file(head, path) {
                    return reply;
                }
                self.file(head, path)
            }
            _ => Reply::text(
                405,
                "only GET and HEAD on repository files, POST on /status\n",
            ),
        }
    }

    /// `GET /machines`, what the page shows: the server's time, the machines of
    /// the inventory or remembered (each with its latest status event), and
    /// the other names that report status.
    fn machines(&self) -> Reply {
        let mut latest = match self.statuses.lock() {
            Ok(table) => table.latest(),
            Err(_) => return Reply::text(500, "status table unavailable\n"),
        };
        let mut machines = match &self.provisioning.fleet {
            Some(f) => f.machines_json(),
            None => serde_json::Value::Array(Vec::new()),
        };
        if let (Some(list), Some(events)) = (machines.as_array_mut(), latest.as_object_mut()) {
            for m in list {
                let event = m["mac"].as_str().and_then(|mac| events.remove(mac));
                m["event"] = event.unwrap_or(serde_json::Value::Null);
            }
        }
        let now = fleet::unix_now();
        json_reply(
            serde_json::json!({
                "now": now,
                "inventory": self.provisioning.fleet.is_some(),
                "machines": machines,
                "others": latest,
            })
            .to_string(),
        )
    }

    /// `GET /boot.ipxe?mac=MAC&platform=PLATFORM`: the machine's boot script.
    /// Without a MAC, a script that asks again with iPXE's own values, so DHCP
    /// can name the plain path.
    fn boot_script(&self, head: &RequestHead) -> Reply {
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
                fleet.boot_script(mac, platform, &base)
            }
            None => {
                "#!ipxe\nchain /boot.ipxe?mac=${net0/mac:hexhyp}&platform=${platform}\n".to_string()
            }
        };
        let mut reply = Reply::text(200, &script);
        reply.headers.push(("Cache-Control", "no-store".into()));
        reply
    }

    /// The deploy environment's kernel and initramfs, and the cloud-init files
    /// the inventory gives a machine; `None` for paths that are the
    /// repository's.
    fn provisioning_file(&self, head: &RequestHead, path: &str) -> Option<Reply> {
        let p = &self.provisioning;
        let boot = match path {
            "/boot/vmlinuz" => p.kernel.as_ref(),
            "/boot/initramfs.img" => p.initrd.as_ref(),
            _ => None,
        };
        if let Some(file) = boot {
            return Some(self.send_file(head, file, "application/octet-stream", "no-cache"));
        }
        let rest = path.strip_prefix("/hosts/")?;
        let (stem, which) = rest.split_once('/')?;
        let mac = fleet::parse_mac(stem)?;
        let file = p.fleet.as_ref()?.host_file(mac, which)?;
        Some(self.send_file(head, &file, "text/plain; charset=utf-8", "no-store"))
    }

    /// `POST /machines/MAC/reprovision`: with the status token, or from this
    /// host when there is none.
    fn machine_action(&self, head: &RequestHead, path: &str, peer: IpAddr) -> Reply {
        let Some(fleet) = &self.provisioning.fleet else {
            return Reply::text(404, "no inventory: start imprint serve with --hosts FILE\n");
        };
        let allowed = match &self.limits.status_token {
            Some(_) => self.token_ok(head),
            None => peer.is_loopback(),
        };
        if !allowed {
            return Reply::text(
                401,
                "machine actions need the server's status token (or, without one, a request from the server's own host)\n",
            );
        }
        let Some((stem, "reprovision")) = path.trim_start_matches("/machines/").split_once('/')
        else {
            return Reply::text(404, "the action is /machines/MAC/reprovision\n");
        };
        let Some(mac) = fleet::parse_mac(stem) else {
            return Reply::text(400, "not a MAC address\n");
        };
        fleet.reprovision(mac);
        Reply::text(200, &format!("{mac} deploys on its next network boot\n"))
    }

    fn file(&self, head: &RequestHead, url_path: &str) -> Reply {
        let Some(rel) = safe_relative(url_path) else {
            return Reply::text(403, "forbidden path\n");
        };
        let full = self.root.join(&rel);
        // Canonicalizing resolves symlinks: whatever they point at must still be
        // inside the repository.
        let real = match full.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Reply::text(404, "not found\n");
            }
            Err(_) => return Reply::text(403, "forbidden path\n"),
        };
        if !real.starts_with(&self.root) {
            return Reply::text(403, "forbidden path\n");
        }
        self.send_file(head, &real, content_type(&rel), cache_control(&rel))
    }

    /// A regular file, whole or the range asked for.
    fn send_file(&self, head: &RequestHead, real: &Path, ctype: &str, cache: &str) -> Reply {
        // Non-blocking, so a FIFO in the repository cannot hold this thread;
        // only regular files are served.
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(real)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Reply::text(404, "not found\n");
            }
            Err(_) => return Reply::text(403, "forbidden\n"),
        };
        let (size, mtime) = match file.metadata() {
            Ok(m) if m.is_file() => {
                use std::os::unix::fs::MetadataExt;
                (
                    m.len(),
                    (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32),
                )
            }
            Ok(_) => return Reply::text(404, "not a file\n"),
            Err(_) => return Reply::text(500, "cannot stat file\n"),
        };
        // Validators, so a cache in front (squid, a CDN) revalidates a ref or
        // a signature file with a 304 instead of fetching it again.
        let (etag, modified) = http::validators(size, mtime);
        let mut headers = vec![
            ("Accept-Ranges", "bytes".to_string()),
            ("Content-Type", ctype.to_string()),
            ("Cache-Control", cache.to_string()),
            ("ETag", etag.clone()),
            ("Last-Modified", http::http_date(modified)),
        ];
        if http::not_modified(
            head.header("if-none-match"),
            head.header("if-modified-since"),
            &etag,
            modified,
        ) {
            return Reply {
                status: 304,
                headers,
                body: Body::Bytes(Vec::new()),
                close: false,
            };
        }
        let (status, start, len) = match head.header("range").map(|r| http::parse_range(r, size)) {
            None | Some(RangeRequest::Ignore) => (200, 0, size),
            Some(RangeRequest::Unsatisfiable) => {
                let mut r = Reply::text(416, "range not satisfiable\n");
                r.headers.push(("Content-Range", format!("bytes */{size}")));
                return r;
            }
            Some(RangeRequest::Range { start, len }) => {
                headers.push((
                    "Content-Range",
                    format!("bytes {start}-{}/{size}", start + len - 1),
                ));
                (206, start, len)
            }
        };
        if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
            return Reply::text(500, "cannot seek\n");
        }
        Reply {
            status,
            headers,
            body: Body::File { file, len },
            close: false,
        }
    }

    fn token_ok(&self, head: &RequestHead) -> bool {
        let Some(token) = &self.limits.status_token else {
            return false;
        };
        let bearer = head
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        [bearer, head.query("token")]
            .into_iter()
            .flatten()
            .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }

    fn post_status(&self, head: &RequestHead, body: &[u8], peer: IpAddr) -> Reply {
        let trusted = self.token_ok(head);
        if self.limits.status_token.is_some() && !trusted {
            return Reply::text(401, "this server takes status events with its token only\n");
        }
        let now = fleet::unix_now();
        let result = match self.statuses.lock() {
            Ok(mut table) => table.post(body, peer, now, trusted),
            Err(_) => return Reply::text(500, "status table unavailable\n"),
        };
        match result {
            Ok(name) => {
                if let Some(fleet) = &self.provisioning.fleet
                    && let Ok(event) = serde_json::from_slice::<serde_json::Value>(body)
                {
                    fleet.on_event(&name, &event);
                }
                log::info!(
                    "status {}: {}",
                    http::printable(&name),
                    http::printable(&String::from_utf8_lossy(body))
                );
                Reply::text(204, "")
            }
            Err(e @ statuses::StatusError::NotOwner { .. }) => {
                Reply::text(409, &format!("{}\n", http::printable(&e.to_string())))
            }
            Err(e @ statuses::StatusError::TooLarge) => Reply::text(413, &format!("{e}\n")),
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

    fn get_status(&self, head: &RequestHead) -> Reply {
        let body = match self.statuses.lock() {
            Ok(table) => match head.query("target") {
                Some(name) => match table.history(name) {
                    Some(h) => h.to_string(),
                    None => return Reply::text(404, "no such machine\n"),
                },
                None => table.latest().to_string(),
            },
            Err(_) => return Reply::text(500, "status table unavailable\n"),
        };
        json_reply(body)
    }
}

/// The status page's files, built into the binary. The page runs only its own
/// script (no inline code), so nothing a machine reports can run in it.
fn page_asset(content_type: &str, text: &str) -> Reply {
    let mut reply = ok_reply(content_type, "no-cache", text.as_bytes().to_vec());
    reply.headers.extend([
        (
            "Content-Security-Policy",
            "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'".into(),
        ),
        ("X-Content-Type-Options", "nosniff".into()),
    ]);
    reply
}

fn json_reply(body: String) -> Reply {
    ok_reply("application/json", "no-store", body.into_bytes())
}

fn ok_reply(content_type: &str, cache: &str, body: Vec<u8>) -> Reply {
    Reply {
        status: 200,
        headers: vec![
            ("Content-Type", content_type.to_string()),
            ("Cache-Control", cache.to_string()),
        ],
        body: Body::Bytes(body),
        close: false,
    }
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

/// Over the connection limit: a short answer, never waited on, then close.
fn refuse_busy(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
    );
    let _ = stream.shutdown(Shutdown::Both);
}

fn write_reply(
    stream: &mut TcpStream,
    reply: Reply,
    head_only: bool,
    keep: bool,
) -> io::Result<()> {
    let len = reply.len();
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    // An origin server with a clock says when it answered (RFC 9110 6.6.1):
    // caches reckon a response's age from it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out.push_str(&format!("Date: {}\r\n", http::http_date(now)));
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    // 204 and 304 carry no body, and a 304 must not announce one.
    if reply.status != 204 && reply.status != 304 {
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    out.push_str(if keep {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    stream.write_all(out.as_bytes())?;
    if head_only || reply.status == 204 || reply.status == 304 {
        return stream.flush();
    }
    match reply.body {
        Body::Bytes(bytes) => stream.write_all(&bytes)?,
        Body::File { file, len } => {
            let copied = io::copy(&mut file.take(len), stream)?;
            if copied != len {
                // The file shrank under us: the length promised cannot be kept.
                return Err(io::Error::other("file shorter than announced"));
            }
        }
    }
    stream.flush()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Turns a URL path into a relative path inside the repository, or `None` when any
/// segment is outside the repository's character set (which excludes `..`, `%`
/// escapes, backslashes and hidden names).
pub fn safe_relative(url_path: &str) -> Option<String> {
    let trimmed = url_path.strip_prefix('/')?;
    if trimmed.is_empty() {
        return None;
    }
    let ok = trimmed.split('/').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    });
    ok.then(|| trimmed.to_string())
}

fn content_type(rel: &str) -> &'static str {
    if rel.starts_with("refs/") || rel.ends_with(".sig") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// Chunks and manifests are named by their content and never change; refs move,
/// and signature files grow when a signer is added.
fn cache_control(rel: &str) -> &'static str {
    if rel.starts_with("refs/") || rel.ends_with(".sig") {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert_eq!(safe_relative("/refs/a/b").as_deref(), Some("refs/a/b"));
        assert_eq!(
            safe_relative("/chunks/sha256/ab/abcd").as_deref(),
            Some("chunks/sha256/ab/abcd")
        );
        for bad in [
            "/",
            "",
            "refs",
            "/../etc/passwd",
            "/refs/../../x",
            "/refs/%2e%2e/x",
            "/refs//x",
            "/.hidden",
            "/refs/a\\b",
            "/refs/a b",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn signatures_and_refs_are_revalidated_content_is_immutable() {
        assert_eq!(cache_control("refs/os/v1"), "no-cache");
        assert_eq!(cache_control("manifests/sha256/ab.sig"), "no-cache");
        assert!(cache_control("manifests/sha256/ab").contains("immutable"));
        assert!(cache_control("chunks/sha256/ab/abcd").contains("immutable"));
    }
}
