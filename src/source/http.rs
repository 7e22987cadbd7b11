//! A repository over HTTP/1.1 or HTTPS, with keep-alive connections shared by all
//! fetching threads. Every byte is verified against a trusted manifest whatever
//! the transport; HTTPS is for servers that offer nothing else (object stores,
//! CDNs, corporate mirrors). Its certificates are checked against the CA roots
//! the caller gives ([`CaRoots`]): the operator's, or the system's bundle.
//!
//! Name resolution is pluggable ([`NameResolver`]): a static binary in an initramfs
//! has no working `getaddrinfo`, so the deploy environment brings its own resolver.

use super::client::Client;
use super::pipeline::Pipeline;
use super::proxy::{Proxy, ProxyError};
use super::resolve::NameResolver;
use super::tls::CaRoots;
use super::{FetchError, Source, status_error};
use crate::format::http::printable;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct HttpSource {
    base: String,
    client: Arc<Client>,
    /// For an `http://` repository: the forward proxy it is fetched through.
    proxy: Option<Proxy>,
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
        let client = Client::new(resolver, timeout, roots, connections.max(1) * 2);
        client.check(base).map_err(|e| FetchError::Network {
            location: printable(base),
            reason: e.to_string(),
        })?;
        Ok(HttpSource {
            base: base.trim_end_matches('/').to_string(),
            client: Arc::new(client),
            proxy: None,
            opened: Arc::default(),
        })
    }

    /// A pipeline straight to the server; None through a proxy.
    fn direct_pipeline(&self) -> Option<Pipeline> {
        if self.proxy.is_some() {
            return None;
        }
        Pipeline::new(&self.base, Arc::clone(&self.client))
    }

    /// Fetches through `proxy` (an `http://` repository only: HTTPS goes to
    /// its server directly).
    pub fn with_proxy(mut self, proxy: Option<Proxy>) -> HttpSource {
        if self.base.starts_with("http://") {
            self.proxy = proxy;
        }
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }

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
        let status = match &self.proxy {
            Some(proxy) => proxy
                .get(&location, limit, buf, authorization.as_deref())
                .map_err(|e| match e {
                    ProxyError::TooLarge => FetchError::TooLarge {
                        location: location.clone(),
                        limit,
                    },
                    ProxyError::Failed(reason) => FetchError::Network {
                        location: location.clone(),
                        reason,
                    },
                })?,
            None => {
                self.client
                    .get(&location, authorization.as_deref(), limit, buf)
                    .map_err(|e| e.at(location.clone()))?
                    .status
            }
        };
        status_error(location, status).map_or(Ok(()), Err)
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

    /// Straight to the server, HTTP or HTTPS (fetches through a proxy go one
    /// at a time).
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
