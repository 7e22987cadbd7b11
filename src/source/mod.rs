//! Where repository files come from: a local directory (or mounted USB medium) or an
//! HTTP server. Both expose the same `fetch(path)`, and [`fetch_checked`] adds
//! retries with exponential backoff around any check the caller needs (hashes).

mod client;
mod dns;
mod http;
mod pipeline;
mod proxy;
mod resolve;
mod tls;
mod wire;

pub use client::{Answer, Client, ClientError, Delivery};
pub use dns::DnsResolver;
pub use http::HttpSource;
pub use proxy::{Proxy, ProxyError, proxy_from_env};
pub use resolve::{NameResolver, SystemResolver};
pub use tls::{CaError, CaRoots, INITRAMFS_CA_FILE, SYSTEM_CA_FILES};

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{location}: not found (404); check the image name, tag and repository")]
    NotFound { location: String },
    #[error("{location}: access denied ({status}); check the server's permissions")]
    Denied { location: String, status: u16 },
    #[error("{location}: the server refused the request ({status})")]
    Refused { location: String, status: u16 },
    #[error("{location}: server error ({status})")]
    Server { location: String, status: u16 },
    #[error("{location}: {reason}")]
    Network { location: String, reason: String },
    #[error("{location}: body larger than the {limit} bytes expected")]
    TooLarge { location: String, limit: u64 },
    #[error("{location}: {reason}")]
    Corrupt { location: String, reason: String },
    /// The server's certificate or the TLS handshake failed: not retried.
    #[error("{location}: {reason}")]
    Tls { location: String, reason: String },
    #[error("{location}: {source}")]
    Local { location: String, source: io::Error },
    #[error("{location}: gave up after {attempts} attempts; last error: {last}")]
    GaveUp {
        location: String,
        attempts: u32,
        last: Box<FetchError>,
    },
}

/// What a status other than 200 means for a fetch.
fn status_error(location: String, status: u16) -> Option<FetchError> {
    match status {
        200 => None,
        404 | 410 => Some(FetchError::NotFound { location }),
        401 | 403 => Some(FetchError::Denied { location, status }),
        500..=599 | 408 | 429 => Some(FetchError::Server { location, status }),
        _ => Some(FetchError::Refused { location, status }),
    }
}

impl FetchError {
    /// Worth trying again: the network or server may do better next time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Server { .. }
                | FetchError::Network { .. }
                | FetchError::TooLarge { .. }
                | FetchError::Corrupt { .. }
        )
    }
}

pub trait Source: Send + Sync {
    /// Reads the repository file `path` into `buf` (cleared first), refusing bodies
    /// larger than `limit`.
    fn fetch(&self, path: &str, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError>;
    /// [`Source::fetch`] of a file only this machine's deploy may read (its
    /// cloud-init files on a provisioning server), sent with the deploy's
    /// `credential`. A source with no one to show it to (a medium) fetches as
    /// usual.
    fn fetch_as(
        &self,
        path: &str,
        limit: u64,
        buf: &mut Vec<u8>,
        _credential: &str,
    ) -> Result<(), FetchError> {
        self.fetch(path, limit, buf)
    }
    /// Human-readable address of `path`, for messages.
    fn location(&self, path: &str) -> String;
    /// [`Source::fetch`], then `check` on the body. A source made of several
    /// ([`Chain`]) tries the next one when a file is missing or fails its check.
    fn fetch_verified(
        &self,
        path: &str,
        limit: u64,
        buf: &mut Vec<u8>,
        check: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), FetchError> {
        self.fetch(path, limit, buf)?;
        check(buf).map_err(|reason| FetchError::Corrupt {
            location: self.location(path),
            reason,
        })
    }
    /// Bytes taken from each part of the source, by name, when it has parts.
    fn tally(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// A connection that carries several requests at once, where the source
    /// has one (a plain-HTTP repository): None means one fetch at a time.
    fn pipeline(&self) -> Option<Box<dyn Pipeline>> {
        None
    }
    /// Opens up to `n` connections for the pipelines made after, in the
    /// background: called before the manifest is fetched, so a deploy's first
    /// chunks do not also wait the round trip of connecting.
    fn preconnect(&self, _n: usize) {}
}

/// Requests one [`Pipeline`] connection carries at once.
pub const PIPELINE_DEPTH: usize = pipeline::Pipeline::DEPTH;

/// Requests sent ahead of their responses on one connection, which come back
/// in the order sent. After an error the requests still in flight are lost:
/// the caller fetches them again with [`fetch_checked`].
pub trait Pipeline: Send {
    /// Sends a request for the repository file `path`.
    fn send(&mut self, path: &str) -> Result<(), FetchError>;
    /// The body of the oldest request sent and not yet received, at most
    /// `limit` bytes, into `buf` (cleared first). An answer other than 200
    /// leaves the connection and the requests behind it in place; a broken
    /// connection loses them ([`Pipeline::pending`] drops to 0).
    fn receive(&mut self, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError>;
    /// Requests sent whose responses are still to be received.
    fn pending(&self) -> usize;
}

/// Several repositories holding the same content-addressed files, asked in
/// order: a boot medium first, a network repository for what the medium lacks
/// or holds damaged. Every body is checked before it counts, so a bad copy on
/// one never hides a good copy on the next.
pub struct Chain {
    parts: Vec<(String, Box<dyn Source>, Arc<AtomicU64>)>,
}

impl Chain {
    /// `parts`: (name for the summary, source), in the order they are asked.
    pub fn new(parts: Vec<(String, Box<dyn Source>)>) -> Chain {
        Chain {
            parts: parts
                .into_iter()
                .map(|(name, source)| (name, source, Arc::new(AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl Chain {
    /// `fetch` from each part in turn until one has the file; the error of
    /// the last when none has.
    fn first(
        &self,
        path: &str,
        buf: &mut Vec<u8>,
        mut fetch: impl FnMut(&dyn Source, &mut Vec<u8>) -> Result<(), FetchError>,
    ) -> Result<(), FetchError> {
        let mut last = None;
        for (i, (name, source, bytes)) in self.parts.iter().enumerate() {
            match fetch(source.as_ref(), buf) {
                Ok(()) => {
                    bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    if i + 1 < self.parts.len() && !matches!(e, FetchError::NotFound { .. }) {
                        log::warn!("{e}; trying the next source after {name}");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| FetchError::NotFound {
            location: path.to_string(),
        }))
    }
}

impl Source for Chain {
    fn fetch(&self, path: &str, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        self.fetch_verified(path, limit, buf, &mut |_| Ok(()))
    }

    fn fetch_as(
        &self,
        path: &str,
        limit: u64,
        buf: &mut Vec<u8>,
        credential: &str,
    ) -> Result<(), FetchError> {
        self.first(path, buf, |source, buf| {
            source.fetch_as(path, limit, buf, credential)
        })
    }

    fn location(&self, path: &str) -> String {
        let names: Vec<&str> = self.parts.iter().map(|(n, _, _)| n.as_str()).collect();
        format!("{path} (from {})", names.join(", then "))
    }

    fn fetch_verified(
        &self,
        path: &str,
        limit: u64,
        buf: &mut Vec<u8>,
        check: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), FetchError> {
        self.first(path, buf, |source, buf| {
            source.fetch_verified(path, limit, buf, check)
        })
    }

    fn tally(&self) -> Vec<(String, u64)> {
        self.parts
            .iter()
            .map(|(name, _, bytes)| (name.clone(), bytes.load(Ordering::Relaxed)))
            .collect()
    }

    /// The pipeline of a chain of one source; a chain of several asks them in
    /// order for every file, one at a time.
    fn pipeline(&self) -> Option<Box<dyn Pipeline>> {
        match self.parts.as_slice() {
            [(_, source, bytes)] => Some(Box::new(Tallied {
                inner: source.pipeline()?,
                bytes: bytes.clone(),
            })),
            _ => None,
        }
    }

    fn preconnect(&self, n: usize) {
        if let [(_, source, _)] = self.parts.as_slice() {
            source.preconnect(n);
        }
    }
}

/// A pipeline that counts what it receives into its source's tally.
struct Tallied {
    inner: Box<dyn Pipeline>,
    bytes: Arc<AtomicU64>,
}

impl Pipeline for Tallied {
    fn send(&mut self, path: &str) -> Result<(), FetchError> {
        self.inner.send(path)
    }

    fn receive(&mut self, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        self.inner.receive(limit, buf)?;
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn pending(&self) -> usize {
        self.inner.pending()
    }
}

/// A repository in a local directory.
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: &Path) -> DirSource {
        DirSource {
            root: root.to_path_buf(),
        }
    }
}

impl Source for DirSource {
    fn fetch(&self, path: &str, limit: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        let location = self.location(path);
        buf.clear();
        // Links in the tree resolve inside it: a medium's never lead out of it.
        let file = crate::sys::Root::open(&self.root)
            .and_then(|root| root.open_file(path))
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => FetchError::NotFound {
                    location: location.clone(),
                },
                _ => FetchError::Local {
                    location: location.clone(),
                    source,
                },
            })?;
        file.take(limit + 1)
            .read_to_end(buf)
            .map_err(|source| FetchError::Local {
                location: location.clone(),
                source,
            })?;
        if buf.len() as u64 > limit {
            return Err(FetchError::TooLarge { location, limit });
        }
        Ok(())
    }

    fn location(&self, path: &str) -> String {
        self.root.join(path).display().to_string()
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Counts retries across threads, for the summary.
#[derive(Default)]
pub struct RetryCounter(pub AtomicU64);

/// Fetches `path` and runs `check` on the body; transient failures and failed checks
/// are retried with exponential backoff, 404/403 and local errors are not.
pub fn fetch_checked(
    source: &dyn Source,
    path: &str,
    limit: u64,
    buf: &mut Vec<u8>,
    policy: &RetryPolicy,
    retries: &RetryCounter,
    mut check: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), FetchError> {
    let mut delay = policy.first_delay;
    let mut attempt = 1;
    loop {
        let result = source.fetch_verified(path, limit, buf, &mut check);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && attempt < policy.attempts.max(1) => {
                log::warn!("{e}; retrying in {} ms", delay.as_millis());
                retries.0.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(delay);
                delay = (delay * 2).min(policy.max_delay);
                attempt += 1;
            }
            Err(e) if e.is_transient() => {
                return Err(FetchError::GaveUp {
                    location: source.location(path),
                    attempts: attempt,
                    last: Box::new(e),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fails with the queued errors, then serves `body`.
    struct Flaky {
        failures: Mutex<Vec<FetchError>>,
        body: Vec<u8>,
        calls: AtomicU64,
    }

    impl Source for Flaky {
        fn fetch(&self, _: &str, _: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = self.failures.lock().unwrap().pop() {
                return Err(e);
            }
            buf.clear();
            buf.extend_from_slice(&self.body);
            Ok(())
        }
        fn location(&self, path: &str) -> String {
            path.into()
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    fn flaky(failures: Vec<FetchError>) -> Flaky {
        Flaky {
            failures: Mutex::new(failures),
            body: b"good".to_vec(),
            calls: AtomicU64::new(0),
        }
    }

    fn server_error() -> FetchError {
        FetchError::Server {
            location: "x".into(),
            status: 503,
        }
    }

    #[test]
    fn transient_errors_are_retried() {
        let src = flaky(vec![server_error(), server_error()]);
        let mut buf = Vec::new();
        let retries = RetryCounter::default();
        fetch_checked(&src, "p", 10, &mut buf, &fast(), &retries, |_| Ok(())).unwrap();
        assert_eq!(buf, b"good");
        assert_eq!(retries.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn failed_checks_are_retried_then_given_up() {
        let src = flaky(vec![]);
        let mut buf = Vec::new();
        let err = fetch_checked(
            &src,
            "p",
            10,
            &mut buf,
            &fast(),
            &RetryCounter::default(),
            |_| Err("hash mismatch".into()),
        )
        .unwrap_err();
        assert!(
            matches!(err, FetchError::GaveUp { attempts: 4, .. }),
            "{err}"
        );
        assert_eq!(src.calls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn not_found_fails_at_once() {
        let src = flaky(vec![FetchError::NotFound {
            location: "p".into(),
        }]);
        let mut buf = Vec::new();
        let err = fetch_checked(
            &src,
            "p",
            10,
            &mut buf,
            &fast(),
            &RetryCounter::default(),
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }));
        assert_eq!(src.calls.load(Ordering::Relaxed), 1);
    }

    /// A medium (missing one file, holding a damaged copy of another) before
    /// a network repository holding good copies of both.
    #[test]
    fn a_chain_takes_what_the_first_source_has_good_and_the_rest_from_the_next() {
        let medium = tempfile::tempdir().unwrap();
        let network = tempfile::tempdir().unwrap();
        std::fs::write(medium.path().join("good"), b"good").unwrap();
        std::fs::write(medium.path().join("damaged"), b"bad!").unwrap();
        for name in ["good", "damaged", "missing"] {
            std::fs::write(network.path().join(name), b"good").unwrap();
        }
        let chain = Chain::new(vec![
            ("medium".into(), Box::new(DirSource::new(medium.path()))),
            ("network".into(), Box::new(DirSource::new(network.path()))),
        ]);
        let retries = RetryCounter::default();
        let mut buf = Vec::new();
        let is_good = |b: &[u8]| {
            if b == b"good" {
                Ok(())
            } else {
                Err("hash mismatch".to_string())
            }
        };
        for name in ["good", "damaged", "missing"] {
            fetch_checked(&chain, name, 10, &mut buf, &fast(), &retries, is_good).unwrap();
            assert_eq!(buf, b"good", "{name}");
        }
        assert_eq!(
            chain.tally(),
            [("medium".to_string(), 4), ("network".to_string(), 8)]
        );
        assert_eq!(retries.0.load(Ordering::Relaxed), 0);
        // Good nowhere: the last source's error, retried as a damaged body is.
        std::fs::write(network.path().join("damaged"), b"bad!").unwrap();
        let err =
            fetch_checked(&chain, "damaged", 10, &mut buf, &fast(), &retries, is_good).unwrap_err();
        assert!(matches!(err, FetchError::GaveUp { .. }), "{err}");
        let err =
            fetch_checked(&chain, "nowhere", 10, &mut buf, &fast(), &retries, is_good).unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    }

    #[test]
    fn dir_source_limits_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"12345").unwrap();
        let src = DirSource::new(dir.path());
        let mut buf = Vec::new();
        src.fetch("f", 5, &mut buf).unwrap();
        assert_eq!(buf, b"12345");
        assert!(matches!(
            src.fetch("f", 4, &mut buf),
            Err(FetchError::TooLarge { .. })
        ));
        assert!(matches!(
            src.fetch("g", 4, &mut buf),
            Err(FetchError::NotFound { .. })
        ));
    }
}
