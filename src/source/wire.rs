//! HTTP/1.1 on one connection, plain or TLS: connecting with a timeout on
//! every step, writing a request's head and body, and reading a response with
//! every size a server declares bounded before it is read. The client, the
//! pipeline and the proxy are built on these.

use super::resolve::NameResolver;
use crate::format::http::{
    Framing, MAX_CHUNK_LINE, MAX_HEAD, Method, Url, parse_chunk_size, parse_response_head,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A connection's bytes: straight on TCP, or through TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A connection, read through a buffer (which may hold the start of the next
/// response).
pub type Conn = BufReader<Stream>;

/// How an exchange on one connection ended badly.
pub enum Exchange {
    /// Nothing came back on a kept-alive connection: try a fresh one.
    Stale,
    TooLarge,
    Failed(String),
}

/// Connects to `host:port` (a name is resolved by `resolver`), with `timeout`
/// for connecting and for every read and write after.
pub fn connect_tcp(
    host: &str,
    port: u16,
    resolver: &dyn NameResolver,
    timeout: Duration,
) -> io::Result<TcpStream> {
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
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A connection to `url`'s server; an `https://` one is TLS with `tls`, its
/// handshake done here so that a refused certificate shows at once (as an
/// I/O error wrapping the [`rustls::Error`]).
pub fn connect(
    url: &Url,
    resolver: &dyn NameResolver,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> io::Result<Conn> {
    let mut tcp = connect_tcp(&url.host, url.port, resolver, timeout)?;
    if !url.secure {
        return Ok(BufReader::new(Stream::Plain(tcp)));
    }
    let config = tls.ok_or_else(|| io::Error::other("no CA certificates for an https:// URL"))?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| io::Error::other(format!("{}: {e}", url.host)))?;
    let mut session = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
    while session.is_handshaking() {
        session.complete_io(&mut tcp)?;
    }
    Ok(BufReader::new(Stream::Tls(Box::new(StreamOwned::new(
        session, tcp,
    )))))
}

/// A request's head, and the body that follows it.
pub struct Request<'a> {
    pub method: Method,
    /// A path, or a whole URL for a proxy.
    pub target: &'a str,
    pub authority: &'a str,
    /// The `Authorization` header's value.
    pub authorization: Option<&'a str>,
    /// The body and its media type.
    pub body: Option<(&'a str, &'a [u8])>,
}

impl Request<'_> {
    /// A GET of `target`.
    pub fn get<'a>(target: &'a str, authority: &'a str) -> Request<'a> {
        Request {
            method: Method::Get,
            target,
            authority,
            authorization: None,
            body: None,
        }
    }

    /// The bytes sent. A header value with a control character (a CR or LF
    /// would start a header of its own) is refused.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let method = match self.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Other => return Err("only GET, HEAD, POST and PUT are sent".into()),
        };
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: imprint/{}\r\nAccept: */*\r\n",
            self.target,
            self.authority,
            env!("CARGO_PKG_VERSION")
        );
        let token = |f: &str| f.bytes().all(|b| b.is_ascii_graphic());
        let value = |f: &str| !f.bytes().any(|b| b.is_ascii_control());
        if !token(self.target)
            || !token(self.authority)
            || !self.authorization.is_none_or(value)
            || !self.body.is_none_or(|(kind, _)| value(kind))
        {
            return Err("a request field holds a control character".into());
        }
        if let Some(value) = self.authorization {
            head.push_str(&format!("Authorization: {value}\r\n"));
        }
        if let Some((kind, body)) = self.body {
            head.push_str(&format!(
                "Content-Type: {kind}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some((_, body)) = self.body {
            bytes.extend_from_slice(body);
        }
        Ok(bytes)
    }
}

/// Writes `request` whole; a failure here on a kept-alive connection is
/// [`Exchange::Stale`] (the server closed it while it idled).
pub fn send(conn: &mut Conn, request: &[u8]) -> Result<(), Exchange> {
    let stream = conn.get_mut();
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|_| Exchange::Stale)
}

/// What came back: the status, whether the connection stays open, and where a
/// redirect points.
pub struct Received {
    pub status: u16,
    pub keep_alive: bool,
    pub location: Option<String>,
}

/// Interim (1xx) answers skipped before a response at most.
const MAX_INTERIM: usize = 8;

/// Most of an error page's body read (the rest is dropped with the connection).
pub const MAX_ERROR_BODY: u64 = 64 << 10;

/// Reads the response to a request made with `method` into `buf` (cleared
/// first), refusing a body over `limit` bytes. A refusal's body (status 300
/// and up) is bounded by [`MAX_ERROR_BODY`] instead, and one larger is cut
/// there, so the caller learns the status whatever page the server sent.
pub fn read_response(
    conn: &mut Conn,
    method: Method,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<Received, Exchange> {
    buf.clear();
    // Interim answers (100 Continue, 103 Early Hints) come before the real
    // one: skipped, a few at most. 101 would switch protocols: never asked for.
    let mut interim = 0;
    let response = loop {
        let head = read_head(conn)?;
        let response = parse_response_head(&head, method)
            .map_err(|e| Exchange::Failed(format!("the response: {e}")))?;
        match response.status {
            101 => {
                return Err(Exchange::Failed(
                    "the server switched protocols (101)".into(),
                ));
            }
            100..=199 if interim < MAX_INTERIM => interim += 1,
            100..=199 => {
                return Err(Exchange::Failed(format!(
                    "more than {MAX_INTERIM} interim answers"
                )));
            }
            _ => break response,
        }
    };
    let mut keep_alive = response.keep_alive();
    if response.status < 300 {
        read_body(conn, response.framing, limit, buf)?;
    } else if let Err(e) = read_body(conn, response.framing, MAX_ERROR_BODY, buf) {
        match e {
            Exchange::TooLarge => keep_alive = false,
            other => return Err(other),
        }
    }
    Ok(Received {
        status: response.status,
        keep_alive,
        location: response.header("location").map(str::to_string),
    })
}

/// A body framed as `framing`, at most `limit` bytes.
fn read_body(
    conn: &mut Conn,
    framing: Framing,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<(), Exchange> {
    match framing {
        Framing::Empty => Ok(()),
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
            Ok(())
        }
        Framing::Chunked => read_chunked(conn, limit, buf),
        Framing::UntilClose => {
            (&mut *conn)
                .take(limit.saturating_add(1))
                .read_to_end(buf)
                .map_err(|e| Exchange::Failed(format!("reading the body: {e}")))?;
            if buf.len() as u64 > limit {
                return Err(Exchange::TooLarge);
            }
            Ok(())
        }
    }
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
