//! Where repository files come from: a local directory (or mounted USB medium) or an
//! HTTP server. Both expose the same `fetch(path)`, and [`fetch_checked`] adds
//! retries with exponential backoff around any check the caller needs (hashes).

mod dns;
mod http;

pub use dns::DnsResolver;
pub use http::{HttpSource, NameResolver, SystemResolver, small_agent};

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
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
    #[error("{location}: {source}")]
    Local { location: String, source: io::Error },
    #[error("{location}: gave up after {attempts} attempts; last error: {last}")]
    GaveUp {
        location: String,
        attempts: u32,
        last: Box<FetchError>,
    },
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
    /// Human-readable address of `path`, for messages.
    fn location(&self, path: &str) -> String;
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
        let file = File::open(self.root.join(path)).map_err(|source| match source.kind() {
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
        let result = source.fetch(path, limit, buf).and_then(|()| {
            check(buf).map_err(|reason| FetchError::Corrupt {
                location: source.location(path),
                reason,
            })
        });
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
