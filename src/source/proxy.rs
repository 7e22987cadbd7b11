//! Plain-HTTP fetches through a forward proxy, in absolute form (`GET
//! http://host/path HTTP/1.1`), which a caching proxy such as squid answers from
//! its cache. (ureq only tunnels through a proxy with CONNECT, which a cache
//! passes through uncached and Debian's squid refuses for ports other than 443.)
//! Every size the proxy declares is bounded before it is read.

use super::http::NameResolver;
use crate::format::http::{
    Framing, MAX_CHUNK_LINE, MAX_HEAD, Method, parse_chunk_size, parse_proxy_url,
    parse_response_head,
};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A forward proxy for `http://` URLs, with a few kept-alive connections.
pub struct Proxy {
    host: String,
    port: u16,
    resolver: Arc<dyn NameResolver>,
    timeout: Duration,
    idle: Mutex<Vec<BufReader<TcpStream>>>,
    max_idle: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy({}:{})", self.host, self.port)
    }
}

/// The proxy for `url` by the usual environment rules: `http_proxy` (or
/// `HTTP_PROXY`) for `http://` URLs, unless `no_proxy` (or `NO_PROXY`) names
/// its host (`*`, the host itself, or a domain it is in).
pub fn proxy_from_env(url: &str, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let proxy = env("http_proxy")
        .or_else(|| env("HTTP_PROXY"))
        .filter(|p| !p.is_empty())?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    }
    .to_ascii_lowercase();
    let no_proxy = env("no_proxy")
        .or_else(|| env("NO_PROXY"))
        .unwrap_or_default();
    let excluded = no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .any(|e| {
            let domain = e.trim_start_matches('.');
            e == "*"
                || (!domain.is_empty() && (host == domain || host.ends_with(&format!(".{domain}"))))
        });
    (!excluded).then_some(proxy)
}

impl Proxy {
    pub fn new(
        url: &str,
        resolver: Arc<dyn NameResolver>,
        timeout: Duration,
        connections: usize,
    ) -> Result<Proxy, String> {
        let (host, port) = parse_proxy_url(url)?;
        Ok(Proxy {
            host,
            port,
            resolver,
            timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: connections.max(1) * 2,
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn connect(&self) -> io::Result<BufReader<TcpStream>> {
        let addrs = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => self.resolver.resolve(&self.host, self.port)?,
        };
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            "the proxy's name resolved to nothing",
        );
        for addr in addrs.into_iter().take(16) {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    let _ = s.set_nodelay(true);
                    return Ok(BufReader::new(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// GETs `url` (`http://…`) through the proxy into `buf` (cleared first),
    /// refusing a body over `limit` bytes; returns the status. A kept-alive
    /// connection that fails before answering is replaced once.
    pub fn get(&self, url: &str, limit: u64, buf: &mut Vec<u8>) -> Result<u16, ProxyError> {
        let authority = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ProxyError::Failed(format!("{url:?} is not an http:// URL")))?;
        let request = format!(
            "GET {url} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: imprint/{}\r\nAccept: */*\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        let reused = self.idle.lock().ok().and_then(|mut i| i.pop());
        if let Some(conn) = reused {
            match self.exchange(conn, &request, limit, buf) {
                Err(Exchange::Stale) => {}
                other => return other.map_err(|e| e.error(self)),
            }
        }
        let conn = self.connect().map_err(|e| {
            ProxyError::Failed(format!("connecting to the proxy {}: {e}", self.address()))
        })?;
        self.exchange(conn, &request, limit, buf)
            .map_err(|e| e.error(self))
    }

    fn exchange(
        &self,
        mut conn: BufReader<TcpStream>,
        request: &str,
        limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<u16, Exchange> {
        buf.clear();
        conn.get_mut()
            .write_all(request.as_bytes())
            .map_err(|_| Exchange::Stale)?;
        let head = read_head(&mut conn)?;
        let response = parse_response_head(&head, Method::Get)
            .map_err(|e| Exchange::Failed(format!("the proxy's response: {e}")))?;
        let too_large = || Exchange::TooLarge;
        match response.framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                if n > limit {
                    return Err(too_large());
                }
                (&mut conn)
                    .take(n)
                    .read_to_end(buf)
                    .map_err(|e| Exchange::Failed(format!("reading the body: {e}")))?;
                if buf.len() as u64 != n {
                    return Err(Exchange::Failed("the body ended early".into()));
                }
            }
            Framing::Chunked => read_chunked(&mut conn, limit, buf)?,
            Framing::UntilClose => {
                (&mut conn)
                    .take(limit + 1)
                    .read_to_end(buf)
                    .map_err(|e| Exchange::Failed(format!("reading the body: {e}")))?;
                if buf.len() as u64 > limit {
                    return Err(too_large());
                }
            }
        }
        if response.keep_alive()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
        Ok(response.status)
    }
}

/// Why a fetch through the proxy failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The body is larger than the caller allows.
    TooLarge,
    Failed(String),
}

/// How an exchange on one connection ended badly.
enum Exchange {
    /// Nothing came back on a kept-alive connection: try a fresh one.
    Stale,
    TooLarge,
    Failed(String),
}

impl Exchange {
    fn error(self, proxy: &Proxy) -> ProxyError {
        match self {
            Exchange::Stale => ProxyError::Failed(format!(
                "the proxy {} closed the connection",
                proxy.address()
            )),
            Exchange::TooLarge => ProxyError::TooLarge,
            Exchange::Failed(why) => {
                ProxyError::Failed(format!("through the proxy {}: {why}", proxy.address()))
            }
        }
    }
}

/// One line, CRLF included, of at most `max` bytes.
fn read_line(conn: &mut BufReader<TcpStream>, max: usize, line: &mut Vec<u8>) -> io::Result<usize> {
    (&mut *conn).take(max as u64).read_until(b'\n', line)
}

/// The response head, up to its blank line; nothing read at all is `Stale`.
fn read_head(conn: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Exchange> {
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
fn read_chunked(
    conn: &mut BufReader<TcpStream>,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<(), Exchange> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_a_proxy_for_http_urls_not_excluded() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let proxied = env(&[
            ("http_proxy", "http://squid:3128"),
            ("no_proxy", "localhost, .lan,10.1.2.3"),
        ]);
        assert_eq!(
            proxy_from_env("http://repo.example/x", proxied).as_deref(),
            Some("http://squid:3128")
        );
        for direct in [
            "http://localhost:8080/x",
            "http://a.b.lan/x",
            "http://lan/x",
            "http://10.1.2.3:80/",
            "https://repo.example/x",
        ] {
            assert_eq!(proxy_from_env(direct, proxied), None, "{direct}");
        }
        let upper = env(&[("HTTP_PROXY", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(proxy_from_env("http://x/", upper), None);
        assert_eq!(
            proxy_from_env("http://x/", env(&[("HTTP_PROXY", "http://p:1")])).as_deref(),
            Some("http://p:1")
        );
        assert_eq!(proxy_from_env("http://x/", env(&[])), None);
    }
}
