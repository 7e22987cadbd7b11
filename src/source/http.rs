//! A repository over plain HTTP/1.1, with keep-alive connections shared by all
//! fetching threads. TLS is left out on purpose: every byte is verified against a
//! trusted manifest, so the transport needs no trust, and the deploy environment
//! stays small.
//!
//! Name resolution is pluggable ([`NameResolver`]): a static binary in an initramfs
//! has no working `getaddrinfo`, so the deploy environment brings its own resolver.

use super::{FetchError, Source};
use std::fmt::Debug;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use ureq::Agent;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Turns a host name into addresses.
pub trait NameResolver: Debug + Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The C library's resolver: right on a normal host, useless in an initramfs.
#[derive(Debug, Default)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

#[derive(Debug)]
struct ResolverAdapter(Arc<dyn NameResolver>);

impl Resolver for ResolverAdapter {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri.port_u16().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let found = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => self.0.resolve(host, port).map_err(ureq::Error::Io)?,
        };
        let mut out = self.empty();
        for addr in found.into_iter().take(16) {
            out.push(addr);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

pub struct HttpSource {
    base: String,
    agent: Agent,
}

impl HttpSource {
    /// `base` is the repository's URL (`http://host[:port][/path]`). `timeout` bounds
    /// connecting and each wait for data, so a stalled server is noticed.
    pub fn new(
        base: &str,
        resolver: Arc<dyn NameResolver>,
        timeout: Duration,
        connections: usize,
    ) -> Result<HttpSource, FetchError> {
        let bad = |reason: &str| FetchError::Network {
            location: base.to_string(),
            reason: reason.to_string(),
        };
        if base.starts_with("https://") {
            return Err(bad(
                "https is not supported: serve the repository over http (content is verified by hash and signature)",
            ));
        }
        if !base.starts_with("http://") {
            return Err(bad("repository URL must start with http://"));
        }
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .max_idle_connections(connections.max(1) * 2)
            .max_idle_connections_per_host(connections.max(1) * 2)
            .user_agent(concat!("imprint/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = Agent::with_parts(
            config,
            DefaultConnector::default(),
            ResolverAdapter(resolver),
        );
        Ok(HttpSource {
            base: base.trim_end_matches('/').to_string(),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }
}

impl Source for HttpSource {
    fn fetch(&self, path: &str, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        let location = self.url(path);
        buf.clear();
        let network = |e: ureq::Error| FetchError::Network {
            location: location.clone(),
            reason: describe(&e),
        };
        let mut response = self.agent.get(&location).call().map_err(network)?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 | 410 => return Err(FetchError::NotFound { location }),
            401 | 403 => return Err(FetchError::Denied { location, status }),
            500..=599 | 408 | 429 => return Err(FetchError::Server { location, status }),
            _ => return Err(FetchError::Refused { location, status }),
        }
        let reader = response
            .body_mut()
            .with_config()
            .limit(limit.saturating_add(1))
            .reader();
        let result = reader.take(limit.saturating_add(1)).read_to_end(buf);
        match result {
            Ok(_) if buf.len() as u64 > limit => Err(FetchError::TooLarge { location, limit }),
            Ok(_) => Ok(()),
            Err(e) => Err(FetchError::Network {
                location,
                reason: format!("reading the body: {e}"),
            }),
        }
    }

    fn location(&self, path: &str) -> String {
        self.url(path)
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t:?})"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// A plain HTTP agent using `resolver`, for small requests besides repository
/// fetches (status events).
pub fn small_agent(resolver: Arc<dyn NameResolver>, timeout: Duration) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .user_agent(concat!("imprint/", env!("CARGO_PKG_VERSION")))
        .build();
    Agent::with_parts(
        config,
        DefaultConnector::default(),
        ResolverAdapter(resolver),
    )
}
