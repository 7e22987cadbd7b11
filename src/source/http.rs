//! A repository over HTTP/1.1 or HTTPS, with keep-alive connections shared by all
//! fetching threads. Every byte is verified against a trusted manifest whatever
//! the transport; HTTPS is for servers that offer nothing else (object stores,
//! CDNs, corporate mirrors). Its certificates are checked against the CA roots
//! the caller gives ([`CaRoots`]): the operator's, or the system's bundle.
//!
//! Name resolution is pluggable ([`NameResolver`]): a static binary in an initramfs
//! has no working `getaddrinfo`, so the deploy environment brings its own resolver.

use super::resolve::NameResolver;
use super::{FetchError, Source, status_error};
use std::fmt::Debug;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use ureq::Agent;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

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
        let default_port = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);
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

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading CA certificates from {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is larger than {limit} bytes: not a CA bundle")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: {reason}; give a PEM file of CA certificates")]
    Pem { path: String, reason: String },
    #[error("{path} holds no CA certificate; give a PEM file of CA certificates")]
    Empty { path: String },
}

/// The certificate authorities an HTTPS server's certificate must chain to,
/// and where they came from (said when a certificate is refused).
#[derive(Clone, Debug)]
pub struct CaRoots {
    certs: Arc<Vec<Certificate<'static>>>,
    origin: String,
}

/// Where the deploy environment's initramfs carries the CA certificates HTTPS
/// servers are checked against (`imprint initramfs build --ca FILE`, else the
/// build host's bundle).
pub const INITRAMFS_CA_FILE: &str = "/etc/imprint/ca.pem";

/// Where a system keeps its CA bundle: Debian and Ubuntu, then Fedora and RHEL.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

impl CaRoots {
    /// Largest bundle read (Debian's whole bundle is about 220 KB).
    pub const MAX_BYTES: u64 = 4 << 20;

    /// The certificates of a PEM bundle; other PEM items (keys) are ignored.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<CaRoots, CaError> {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(CaError::Pem {
                        path: origin.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        if certs.is_empty() {
            return Err(CaError::Empty {
                path: origin.to_string(),
            });
        }
        Ok(CaRoots {
            certs: Arc::new(certs),
            origin: origin.to_string(),
        })
    }

    /// Reads a PEM bundle, refusing files too large to be one.
    pub fn load(path: &Path) -> Result<CaRoots, CaError> {
        Ok(CaRoots::load_pem(path)?.0)
    }

    /// As [`CaRoots::load`], with the file's bytes.
    pub fn load_pem(path: &Path) -> Result<(CaRoots, Vec<u8>), CaError> {
        let shown = path.display().to_string();
        let read = |source| CaError::Read {
            path: shown.clone(),
            source,
        };
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(Self::MAX_BYTES + 1)
            .read_to_end(&mut pem)
            .map_err(read)?;
        if pem.len() as u64 > Self::MAX_BYTES {
            return Err(CaError::TooLarge {
                path: shown,
                limit: Self::MAX_BYTES,
            });
        }
        Ok((CaRoots::from_pem(&pem, &shown)?, pem))
    }

    /// The system's bundle: `$SSL_CERT_FILE`, else the first of
    /// [`SYSTEM_CA_FILES`] that exists.
    pub fn system_path() -> Option<std::path::PathBuf> {
        if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
            return Some(file.into());
        }
        SYSTEM_CA_FILES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(Path::to_path_buf)
    }

    /// The roots of [`CaRoots::system_path`].
    pub fn system() -> Option<Result<CaRoots, CaError>> {
        CaRoots::system_path().map(|p| CaRoots::load(&p))
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn tls_config(&self) -> TlsConfig {
        static RING: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(self.certs.clone()))
            .unversioned_rustls_crypto_provider(
                RING.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
                    .clone(),
            )
            .build()
    }
}

/// Checks that `url` is one this client can fetch, with the roots it needs.
fn check_url(url: &str, roots: Option<&CaRoots>) -> Result<(), String> {
    if url.starts_with("https://") {
        if roots.is_none() {
            return Err("no CA certificates to check the server's certificate against: \
                        give --ca FILE (the deploy environment takes them from `imprint initramfs build --ca FILE`)"
                .into());
        }
        return Ok(());
    }
    if !url.starts_with("http://") {
        return Err("the URL must start with http:// or https://".into());
    }
    Ok(())
}

pub struct HttpSource {
    base: String,
    agent: Agent,
    roots: Option<CaRoots>,
    /// For an `http://` repository: the forward proxy it is fetched through.
    proxy: Option<super::proxy::Proxy>,
    resolver: Arc<dyn NameResolver>,
    timeout: Duration,
    /// Connections opened ahead for pipelines, and when.
    opened: Arc<Mutex<Vec<(super::wire::Conn, Instant)>>>,
}

impl HttpSource {
    /// `base` is the repository's URL (`http[s]://host[:port][/path]`). `timeout`
    /// bounds connecting and each wait for data, so a stalled server is noticed.
    /// An `https://` repository needs `roots`.
    pub fn new(
        base: &str,
        resolver: Arc<dyn NameResolver>,
        timeout: Duration,
        connections: usize,
        roots: Option<CaRoots>,
    ) -> Result<HttpSource, FetchError> {
        check_url(base, roots.as_ref()).map_err(|reason| FetchError::Network {
            location: base.to_string(),
            reason,
        })?;
        let mut config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .max_idle_connections(connections.max(1) * 2)
            .max_idle_connections_per_host(connections.max(1) * 2)
            .user_agent(concat!("imprint/", env!("CARGO_PKG_VERSION")));
        if let Some(roots) = &roots {
            config = config.tls_config(roots.tls_config());
        }
        let agent = Agent::with_parts(
            config.build(),
            DefaultConnector::default(),
            ResolverAdapter(resolver.clone()),
        );
        Ok(HttpSource {
            base: base.trim_end_matches('/').to_string(),
            agent,
            roots,
            proxy: None,
            resolver,
            timeout,
            opened: Arc::default(),
        })
    }

    /// A pipeline straight to a plain-HTTP server; None through a proxy.
    fn direct_pipeline(&self) -> Option<super::wire::Pipeline> {
        if self.proxy.is_some() {
            return None;
        }
        super::wire::Pipeline::new(&self.base, self.resolver.clone(), self.timeout)
    }

    /// Fetches through `proxy` (an `http://` repository only: HTTPS goes to
    /// its server directly).
    pub fn with_proxy(mut self, proxy: Option<super::proxy::Proxy>) -> HttpSource {
        if self.base.starts_with("http://") {
            self.proxy = proxy;
        }
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }
}

impl HttpSource {
    /// A GET of `path`, with `credential` as a bearer token when given.
    fn get(
        &self,
        path: &str,
        limit: u64,
        buf: &mut Vec<u8>,
        credential: Option<&str>,
    ) -> Result<(), FetchError> {
        let location = self.url(path);
        let authorization = credential.map(|c| format!("Bearer {c}"));
        buf.clear();
        let network = |e: ureq::Error| {
            let reason = describe(&e, self.roots.as_ref());
            // A certificate refused now is refused on every retry.
            match tls_problem(&e) {
                Some(_) => FetchError::Tls {
                    location: location.clone(),
                    reason,
                },
                None => FetchError::Network {
                    location: location.clone(),
                    reason,
                },
            }
        };
        if let Some(proxy) = &self.proxy {
            let status = proxy
                .get(&location, limit, buf, authorization.as_deref())
                .map_err(|e| match e {
                    super::proxy::ProxyError::TooLarge => FetchError::TooLarge {
                        location: location.clone(),
                        limit,
                    },
                    super::proxy::ProxyError::Failed(reason) => FetchError::Network {
                        location: location.clone(),
                        reason,
                    },
                })?;
            return status_error(location, status).map_or(Ok(()), Err);
        }
        let mut request = self.agent.get(&location);
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let mut response = request.call().map_err(network)?;
        let status = response.status().as_u16();
        if let Some(e) = status_error(location.clone(), status) {
            return Err(e);
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
}

impl Source for HttpSource {
    fn fetch(&self, path: &str, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        self.get(path, limit, buf, None)
    }

    fn fetch_as(
        &self,
        path: &str,
        limit: u64,
        buf: &mut Vec<u8>,
        credential: &str,
    ) -> Result<(), FetchError> {
        self.get(path, limit, buf, Some(credential))
    }

    fn location(&self, path: &str) -> String {
        self.url(path)
    }

    /// Plain HTTP straight to the server (HTTPS and proxied fetches go one at
    /// a time, through ureq and the proxy's client).
    fn pipeline(&self) -> Option<Box<dyn super::Pipeline>> {
        let mut pipeline = self.direct_pipeline()?;
        let opened = self.opened.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some((conn, since)) = opened {
            pipeline.adopt(conn, since);
        }
        Some(Box::new(pipeline))
    }

    fn preconnect(&self, n: usize) {
        for _ in 0..n {
            let Some(pipeline) = self.direct_pipeline() else {
                return;
            };
            let opened = Arc::clone(&self.opened);
            // Detached: a connection that comes too late is dropped with the
            // source, and one that fails is made again at the first request.
            let _ = std::thread::Builder::new()
                .name("preconnect".into())
                .spawn(move || {
                    if let Ok(conn) = pipeline.open() {
                        let mut opened = opened.lock().unwrap_or_else(|e| e.into_inner());
                        opened.push((conn, Instant::now()));
                    }
                });
        }
    }
}

/// The TLS error inside `e`, if it is one: ureq passes a handshake's failure
/// up as it is, or wrapped in the I/O error of the read that met it.
fn tls_problem(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(tls) => Some(tls),
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// What went wrong with a request, said so that the reader knows what to do;
/// certificate errors name the CA roots they were checked against.
pub fn describe(e: &ureq::Error, roots: Option<&CaRoots>) -> String {
    if let Some(tls) = tls_problem(e) {
        return describe_tls(tls, roots);
    }
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t:?})"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn describe_tls(e: &rustls::Error, roots: Option<&CaRoots>) -> String {
    match e {
        rustls::Error::InvalidCertificate(cert) => {
            use rustls::CertificateError as C;
            let what = match cert {
                C::UnknownIssuer => "is not signed by a CA this machine trusts".to_string(),
                C::BadSignature => "carries a bad signature".to_string(),
                C::Expired | C::ExpiredContext { .. } => "has expired".to_string(),
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "is not valid yet (is this machine's clock right?)".to_string()
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "does not name the host in the URL".to_string()
                }
                C::Revoked => "is revoked".to_string(),
                other => format!("was refused ({other:?})"),
            };
            let trusted = roots.map_or_else(
                || "no CA roots".to_string(),
                |r| format!("the {} CA certificates from {}", r.len(), r.origin()),
            );
            format!(
                "TLS: the server's certificate {what}; checked against {trusted}: give the server's CA with --ca FILE (the deploy environment: `imprint initramfs build --ca FILE`)"
            )
        }
        other => format!("TLS: {other}"),
    }
}

/// An agent using `resolver`, for small requests besides repository fetches
/// (status events); `roots` for an `https://` server.
pub fn small_agent(
    resolver: Arc<dyn NameResolver>,
    timeout: Duration,
    roots: Option<&CaRoots>,
) -> Agent {
    let mut config = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .user_agent(concat!("imprint/", env!("CARGO_PKG_VERSION")));
    if let Some(roots) = roots {
        config = config.tls_config(roots.tls_config());
    }
    Agent::with_parts(
        config.build(),
        DefaultConnector::default(),
        ResolverAdapter(resolver),
    )
}

#[cfg(test)]
mod tests {
    use super::super::SystemResolver;
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    #[test]
    fn pipelines_take_the_connections_opened_ahead() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/repo", listener.local_addr().unwrap());
        let timeout = Duration::from_secs(5);
        let source = HttpSource::new(&url, Arc::new(SystemResolver), timeout, 2, None).unwrap();
        source.preconnect(2);
        let conns: Vec<_> = (0..2).map(|_| listener.accept().unwrap().0).collect();
        let started = Instant::now();
        while source.opened.lock().unwrap().len() < 2 {
            assert!(started.elapsed() < timeout, "the connections were not kept");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut pipelines: Vec<_> = (0..2).map(|_| source.pipeline().unwrap()).collect();
        for (i, p) in pipelines.iter_mut().enumerate() {
            p.send(&format!("chunks/{i}")).unwrap();
        }
        // Each request arrives on a connection opened ahead, and no other is made.
        for conn in &conns {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.starts_with("GET /repo/chunks/"), "{line:?}");
            while line != "\r\n" {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
            (&*conn)
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        }
        let mut buf = Vec::new();
        for p in &mut pipelines {
            p.receive(16, &mut buf).unwrap();
            assert_eq!(buf, b"ok");
        }
        listener.set_nonblocking(true).unwrap();
        assert!(listener.accept().is_err(), "a third connection was made");
    }
}
