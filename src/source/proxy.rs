//! Plain-HTTP fetches through a forward proxy, in absolute form (`GET
//! http://host/path HTTP/1.1`), which a caching proxy such as squid answers from
//! its cache. (Tunnelling with CONNECT, as many clients do, passes a cache by
//! uncached, and Debian's squid refuses it for ports other than 443.)

use super::resolve::NameResolver;
use super::wire::{Conn, Exchange, Request, Stream, connect_tcp, read_response, send};
use crate::format::http::{Method, parse_proxy_url};
use std::io::{self, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A forward proxy for `http://` URLs, with a few kept-alive connections.
pub struct Proxy {
    host: String,
    port: u16,
    resolver: Arc<dyn NameResolver>,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
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

    fn connect(&self) -> io::Result<Conn> {
        connect_tcp(&self.host, self.port, self.resolver.as_ref(), self.timeout)
            .map(|s| BufReader::new(Stream::Plain(s)))
    }

    /// GETs `url` (`http://…`) through the proxy into `buf` (cleared first),
    /// refusing a body over `limit` bytes; returns the status. A kept-alive
    /// connection that fails before answering is replaced once.
    pub fn get(
        &self,
        url: &str,
        limit: u64,
        buf: &mut Vec<u8>,
        authorization: Option<&str>,
    ) -> Result<u16, ProxyError> {
        let authority = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ProxyError::Failed(format!("{url:?} is not an http:// URL")))?;
        let request = Request {
            authorization,
            ..Request::get(url, authority)
        }
        .encode()
        .map_err(ProxyError::Failed)?;
        let reused = self.idle.lock().ok().and_then(|mut i| i.pop());
        if let Some(conn) = reused {
            match self.exchange(conn, &request, limit, buf) {
                Err(Exchange::Stale) => {}
                other => return other.map_err(|e| proxy_error(e, self)),
            }
        }
        let conn = self.connect().map_err(|e| {
            ProxyError::Failed(format!("connecting to the proxy {}: {e}", self.address()))
        })?;
        self.exchange(conn, &request, limit, buf)
            .map_err(|e| proxy_error(e, self))
    }

    fn exchange(
        &self,
        mut conn: Conn,
        request: &[u8],
        limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<u16, Exchange> {
        send(&mut conn, request)?;
        let received = read_response(&mut conn, Method::Get, limit, buf)?;
        if received.keep_alive
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
        Ok(received.status)
    }
}

/// Why a fetch through the proxy failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The body is larger than the caller allows.
    TooLarge,
    Failed(String),
}

/// What a failed exchange with `proxy` means for the fetch.
fn proxy_error(exchange: Exchange, proxy: &Proxy) -> ProxyError {
    match exchange {
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
