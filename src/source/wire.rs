//! HTTP/1.1 on plain TCP connections, for what ureq does not do: requests in
//! absolute form to a forward proxy ([`super::proxy`]), and several requests
//! in flight on one connection ([`Pipeline`]). Every size a server declares is
//! bounded before it is read.

use super::FetchError;
use super::resolve::NameResolver;
use super::status_error;
use crate::format::http::{
    Framing, MAX_CHUNK_LINE, MAX_HEAD, Method, parse_chunk_size, parse_proxy_url,
    parse_response_head,
};
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection, read through a buffer (which may hold the start of the next
/// response).
pub type Conn = BufReader<TcpStream>;

/// How an exchange on one connection ended badly.
pub enum Exchange {
    /// Nothing came back on a kept-alive connection: try a fresh one.
    Stale,
    TooLarge,
    Failed(String),
}

/// Connects to `host:port` (a name is resolved by `resolver`), with `timeout`
/// for connecting and for every read and write after.
pub fn connect(
    host: &str,
    port: u16,
    resolver: &dyn NameResolver,
    timeout: Duration,
) -> io::Result<Conn> {
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolver.resolve(host, port)?,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to nothing");
    for addr in addrs.into_iter().take(16) {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                let _ = s.set_nodelay(true);
                return Ok(BufReader::new(s));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A GET request's head for `target` (a path, or a whole URL for a proxy).
pub fn get_request(target: &str, authority: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: imprint/{}\r\nAccept: */*\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Reads the response to a GET into `buf` (cleared first), refusing a body over
/// `limit` bytes; returns its status and whether the connection stays open.
pub fn read_response(
    conn: &mut Conn,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<(u16, bool), Exchange> {
    buf.clear();
    let head = read_head(conn)?;
    let response = parse_response_head(&head, Method::Get)
        .map_err(|e| Exchange::Failed(format!("the response: {e}")))?;
    match response.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            if n > limit {
                return Err(Exchange::TooLarge);
            }
            (&mut *conn)
                .take(n)
                .read_to_end(buf)
                .map_err(|e| Exchange::Failed(format!("reading the body: {e}")))?;
            if buf.len() as u64 != n {
                return Err(Exchange::Failed("the body ended early".into()));
            }
        }
        Framing::Chunked => read_chunked(conn, limit, buf)?,
        Framing::UntilClose => {
            (&mut *conn)
                .take(limit + 1)
                .read_to_end(buf)
                .map_err(|e| Exchange::Failed(format!("reading the body: {e}")))?;
            if buf.len() as u64 > limit {
                return Err(Exchange::TooLarge);
            }
        }
    }
    Ok((response.status, response.keep_alive()))
}

/// One line, CRLF included, of at most `max` bytes.
fn read_line(conn: &mut Conn, max: usize, line: &mut Vec<u8>) -> io::Result<usize> {
    (&mut *conn).take(max as u64).read_until(b'\n', line)
}

/// The response head, up to its blank line; nothing read at all is `Stale`.
fn read_head(conn: &mut Conn) -> Result<Vec<u8>, Exchange> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n =
            read_line(conn, MAX_HEAD + 1 - head.len().min(MAX_HEAD), &mut head).map_err(|e| {
                match before {
                    0 => Exchange::Stale,
                    _ => Exchange::Failed(format!("reading the response: {e}")),
                }
            })?;
        if n == 0 {
            return Err(match before {
                0 => Exchange::Stale,
                _ => Exchange::Failed("the response ended in its head".into()),
            });
        }
        if head.len() > MAX_HEAD {
            return Err(Exchange::Failed(format!(
                "response head larger than {MAX_HEAD} bytes"
            )));
        }
        if head.ends_with(b"\r\n\r\n") {
            return Ok(head);
        }
    }
}

/// A chunked body into `buf`, at most `limit` bytes; trailers are read and dropped.
fn read_chunked(conn: &mut Conn, limit: u64, buf: &mut Vec<u8>) -> Result<(), Exchange> {
    let failed = |why: String| Exchange::Failed(why);
    let mut line = Vec::new();
    loop {
        line.clear();
        read_line(conn, MAX_CHUNK_LINE + 2, &mut line)
            .map_err(|e| failed(format!("reading a chunk size: {e}")))?;
        let text = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.strip_suffix("\r\n"))
            .ok_or_else(|| failed("a malformed chunk size line".into()))?;
        let size = parse_chunk_size(text).map_err(|e| failed(e.to_string()))?;
        if size == 0 {
            // Trailer lines, each bounded, up to the blank one.
            for _ in 0..64 {
                line.clear();
                let n = read_line(conn, MAX_CHUNK_LINE + 2, &mut line)
                    .map_err(|e| failed(format!("reading the trailer: {e}")))?;
                if n == 0 || line == b"\r\n" {
                    return Ok(());
                }
            }
            return Err(failed("too many trailer lines".into()));
        }
        if buf.len() as u64 + size > limit {
            return Err(Exchange::TooLarge);
        }
        let start = buf.len();
        (&mut *conn)
            .take(size)
            .read_to_end(buf)
            .map_err(|e| failed(format!("reading a chunk: {e}")))?;
        if (buf.len() - start) as u64 != size {
            return Err(failed("a chunk ended early".into()));
        }
        let mut crlf = [0u8; 2];
        conn.read_exact(&mut crlf)
            .ok()
            .filter(|_| &crlf == b"\r\n")
            .ok_or_else(|| failed("a chunk without its CRLF".into()))?;
    }
}

/// Up to [`Pipeline::DEPTH`] GETs in flight on one kept-alive connection to a
/// repository (HTTP/1.1 pipelining): the next request is on its way while a
/// response arrives, so the connection never idles a round trip between two
/// files. An answer other than 200 leaves the connection in place; a broken
/// connection, or one the server closes, takes the requests still on it
/// along: the caller fetches those again its usual way, and the next request
/// connects afresh.
pub struct Pipeline {
    host: String,
    port: u16,
    authority: String,
    /// The repository's path on the server, without a trailing slash.
    prefix: String,
    base: String,
    resolver: Arc<dyn NameResolver>,
    timeout: Duration,
    conn: Option<Conn>,
    /// Paths sent whose responses have not been read, oldest first.
    sent: VecDeque<String>,
    /// Since when the connection has carried no request.
    idle_since: Instant,
}

impl Pipeline {
    /// Requests one connection carries at once.
    pub const DEPTH: usize = 2;
    /// A connection idle this long is not reused: servers close idle ones
    /// (after 5 s and up), and a request sent on one just closed is lost.
    const MAX_IDLE: Duration = Duration::from_secs(2);

    /// A pipeline to the `http://` repository at `base`; None for another
    /// scheme or an address it cannot parse.
    pub fn new(base: &str, resolver: Arc<dyn NameResolver>, timeout: Duration) -> Option<Pipeline> {
        let rest = base.strip_prefix("http://")?;
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = parse_proxy_url(&format!("http://{authority}")).ok()?;
        // A path this client would have to encode is left to ureq.
        if prefix
            .bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b == b'?' || b == b'#')
        {
            return None;
        }
        Some(Pipeline {
            host,
            port,
            authority: authority.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
            base: base.trim_end_matches('/').to_string(),
            resolver,
            timeout,
            conn: None,
            sent: VecDeque::new(),
            idle_since: Instant::now(),
        })
    }

    fn location(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn drop_connection(&mut self) {
        self.conn = None;
        self.sent.clear();
    }

    /// A new connection to the repository's server.
    pub fn open(&self) -> io::Result<Conn> {
        connect(&self.host, self.port, self.resolver.as_ref(), self.timeout)
    }

    /// Starts with `conn`, opened by [`Pipeline::open`] at `since`, instead
    /// of connecting at the first request; a connection idle too long by
    /// then is not used.
    pub fn adopt(&mut self, conn: Conn, since: Instant) {
        if self.conn.is_none() && since.elapsed() <= Self::MAX_IDLE {
            self.conn = Some(conn);
            self.idle_since = since;
        }
    }
}

impl super::Pipeline for Pipeline {
    fn pending(&self) -> usize {
        self.sent.len()
    }

    fn send(&mut self, path: &str) -> Result<(), FetchError> {
        let location = self.location(path);
        let network = |reason: String| FetchError::Network {
            location: location.clone(),
            reason,
        };
        if self.sent.len() >= Self::DEPTH {
            return Err(network(format!(
                "more than {} requests in flight",
                Self::DEPTH
            )));
        }
        if self.sent.is_empty() && self.idle_since.elapsed() > Self::MAX_IDLE {
            self.conn = None;
        }
        if self.conn.is_none() {
            if !self.sent.is_empty() {
                return Err(network("the connection was lost".into()));
            }
            let conn = self
                .open()
                .map_err(|e| network(format!("connecting: {e}")))?;
            self.conn = Some(conn);
        }
        let request = get_request(&format!("{}/{path}", self.prefix), &self.authority);
        let written = match self.conn.as_mut() {
            Some(conn) => conn.get_mut().write_all(request.as_bytes()),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = written {
            self.drop_connection();
            return Err(network(format!("sending the request: {e}")));
        }
        self.sent.push_back(path.to_string());
        Ok(())
    }

    fn receive(&mut self, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        let Some(path) = self.sent.pop_front() else {
            return Err(FetchError::Network {
                location: self.base.clone(),
                reason: "no request is waiting for its response".into(),
            });
        };
        let location = self.location(&path);
        let Some(conn) = self.conn.as_mut() else {
            return Err(FetchError::Network {
                location,
                reason: "the connection was lost".into(),
            });
        };
        let read = read_response(conn, limit, buf);
        if self.sent.is_empty() {
            self.idle_since = Instant::now();
        }
        match read {
            Ok((status, keep_alive)) => {
                if !keep_alive {
                    self.drop_connection();
                }
                status_error(location, status).map_or(Ok(()), Err)
            }
            Err(e) => {
                self.drop_connection();
                Err(match e {
                    Exchange::TooLarge => FetchError::TooLarge { location, limit },
                    Exchange::Stale => FetchError::Network {
                        location,
                        reason: "the server closed the connection".into(),
                    },
                    Exchange::Failed(reason) => FetchError::Network { location, reason },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Pipeline as _, SystemResolver};
    use super::*;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    /// One connection served in rounds: each round reads `n` more request
    /// heads before it writes its bytes, so a client that did not send those
    /// requests ahead would stall it (and time out). Returns the request lines.
    fn serve(rounds: Vec<(usize, &'static [u8])>) -> (String, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/repo/", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut seen = Vec::new();
            let mut heads = Vec::new();
            for (n, reply) in rounds {
                while heads.len() < n {
                    let mut byte = [0u8; 1];
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return heads;
                    }
                    seen.push(byte[0]);
                    if seen.ends_with(b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen).to_string();
                        heads.push(head.lines().next().unwrap_or("").to_string());
                        seen.clear();
                    }
                }
                heads.clear();
                conn.write_all(reply).unwrap();
            }
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            String::from_utf8_lossy(&rest)
                .lines()
                .filter(|l| l.starts_with("GET "))
                .map(str::to_string)
                .collect()
        });
        (url, handle)
    }

    #[test]
    fn a_connection_idle_too_long_is_not_adopted() {
        let (url, server) = serve(vec![(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]);
        let mut p = pipeline(&url);
        // The server takes the first connection only.
        let fresh = p.open().unwrap();
        let stale = p.open().unwrap();
        p.adopt(stale, Instant::now() - Pipeline::MAX_IDLE * 2);
        assert!(p.conn.is_none());
        p.adopt(fresh, Instant::now());
        p.send("chunks/a").unwrap();
        let mut buf = Vec::new();
        p.receive(16, &mut buf).unwrap();
        assert_eq!(buf, b"ok");
        drop(p);
        server.join().unwrap();
    }

    #[test]
    fn only_plain_http_urls_it_can_send_as_they_are_are_pipelined() {
        let made = |url: &str| {
            Pipeline::new(url, Arc::new(SystemResolver), Duration::from_secs(1)).is_some()
        };
        assert!(made("http://10.0.2.2:8080"));
        assert!(made("http://repo.example/images/"));
        assert!(made("http://[::1]:80/r"));
        assert!(!made("https://repo.example/"));
        assert!(!made("http://user@repo.example/"));
        assert!(!made("http://repo.example/a b"));
        assert!(!made("http://repo.example/r?x=1"));
    }

    fn pipeline(url: &str) -> Pipeline {
        Pipeline::new(url, Arc::new(SystemResolver), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn requests_go_out_ahead_and_answers_come_back_in_order() {
        let (url, server) = serve(vec![
            (
                2,
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone",
            ),
            (
                1,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n",
            ),
        ]);
        let mut p = pipeline(&url);
        let mut buf = Vec::new();
        p.send("chunks/a").unwrap();
        p.send("chunks/b").unwrap();
        assert!(p.send("chunks/c").is_err(), "no more than DEPTH at once");
        assert_eq!(p.pending(), 2);
        p.receive(10, &mut buf).unwrap();
        assert_eq!(buf, b"abc");
        // A refusal leaves the connection, and what follows it, in place.
        let err = p.receive(10, &mut buf).unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("/repo/chunks/b"), "{err}");
        assert_eq!(p.pending(), 0);
        p.send("chunks/c").unwrap();
        p.receive(10, &mut buf).unwrap();
        assert_eq!(buf, b"xyz");
        drop(p);
        assert!(server.join().unwrap().is_empty(), "one connection for all");
    }

    #[test]
    fn a_closing_or_oversized_answer_drops_the_requests_behind_it() {
        let (url, server) = serve(vec![(
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        )]);
        let mut p = pipeline(&url);
        let mut buf = Vec::new();
        p.send("a").unwrap();
        p.send("b").unwrap();
        p.receive(10, &mut buf).unwrap();
        assert_eq!(buf, b"ok");
        assert_eq!(p.pending(), 0, "b went with the connection");
        assert!(p.receive(10, &mut buf).is_err());
        server.join().unwrap();

        let (url, server) = serve(vec![(
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
        )]);
        let mut p = pipeline(&url);
        p.send("a").unwrap();
        p.send("b").unwrap();
        let err = p.receive(1000, &mut buf).unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
        assert_eq!(p.pending(), 0);
        assert!(buf.len() <= 1000, "nothing past the limit is read");
        drop(p);
        server.join().unwrap();
    }
}
