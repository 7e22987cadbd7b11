//! `imprint serve`: a small HTTP/1.1 server for a repository directory, plus the
//! status endpoint deploy environments report to.
//!
//! Any static web server can serve a repository; this one exists so a single binary
//! is enough on the host, and so status events have somewhere to go. It serves
//! regular files below the root only: path segments are restricted to the
//! repository's own character set (no `..`, no escapes), and the resolved path must
//! still lie inside the root, so a symlink cannot lead out of it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tiny_http::{Header, Method, Request, Response, StatusCode};

/// Largest status event accepted.
const MAX_STATUS_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("repository {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("listening on {addr}: {reason}; is the address free and valid?")]
    Listen { addr: String, reason: String },
}

pub struct RepoServer {
    http: tiny_http::Server,
    root: PathBuf,
    statuses: Mutex<BTreeMap<String, serde_json::Value>>,
}

impl RepoServer {
    /// Binds `listen` (`host:port`, port 0 picks a free one) for the repository at `root`.
    pub fn bind(root: &Path, listen: &str) -> Result<Arc<RepoServer>, ServeError> {
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
        let listener =
            std::net::TcpListener::bind(listen).map_err(|e| listen_err(e.to_string()))?;
        crate::sys::set_tcp_nodelay(&listener).map_err(|e| listen_err(e.to_string()))?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| listen_err(e.to_string()))?;
        Ok(Arc::new(RepoServer {
            http,
            root,
            statuses: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.http.server_addr().to_ip()
    }

    /// Answers requests on `threads` threads until the process ends. tiny_http reads
    /// requests off each keep-alive connection on its own threads; these threads
    /// produce the responses.
    pub fn run(self: &Arc<Self>, threads: usize) {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let server = Arc::clone(self);
                std::thread::spawn(move || {
                    while let Ok(request) = server.http.recv() {
                        server.handle(request);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }

    fn handle(&self, mut request: Request) {
        let path = request
            .url()
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .to_string();
        let method = request.method().clone();
        let response = match (&method, path.as_str()) {
            (Method::Post, "/status") => self.post_status(&mut request),
            (Method::Get | Method::Head, "/status") => self.get_status(),
            (Method::Get | Method::Head, _) => self.file(&request, &path),
            _ => text(
                405,
                "only GET and HEAD on repository files, POST on /status\n",
            ),
        };
        log::debug!(
            "{} {} {} -> {}",
            request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            method,
            path,
            response.status_code().0
        );
        if let Err(e) = request.respond(response) {
            log::debug!("responding to {path}: {e}");
        }
    }

    fn file(&self, request: &Request, url_path: &str) -> Response<Box<dyn Read + Send>> {
        let Some(rel) = safe_relative(url_path) else {
            return text(403, "forbidden path\n");
        };
        let full = self.root.join(&rel);
        // Canonicalizing resolves symlinks: whatever they point at must still be
        // inside the repository.
        let real = match full.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return text(404, "not found\n"),
            Err(_) => return text(403, "forbidden path\n"),
        };
        if !real.starts_with(&self.root) {
            return text(403, "forbidden path\n");
        }
        let mut file = match File::open(&real) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return text(404, "not found\n"),
            Err(_) => return text(403, "forbidden\n"),
        };
        let size = match file.metadata() {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return text(404, "not a file\n"),
            Err(_) => return text(500, "cannot stat file\n"),
        };
        let mut headers = vec![
            header("Accept-Ranges", "bytes"),
            header("Content-Type", content_type(&rel)),
        ];
        // Chunks and manifests are named by their content and never change; refs move.
        if rel.starts_with("refs/") {
            headers.push(header("Cache-Control", "no-cache"));
        } else {
            headers.push(header(
                "Cache-Control",
                "public, max-age=31536000, immutable",
            ));
        }
        let range = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Range"))
            .map(|h| h.value.as_str().to_string());
        let (status, start, len) = match range.as_deref().map(|r| parse_range(r, size)) {
            None | Some(RangeRequest::Ignore) => (200, 0, size),
            Some(RangeRequest::Unsatisfiable) => {
                let mut r = text(416, "range not satisfiable\n");
                r.add_header(header("Content-Range", &format!("bytes */{size}")));
                return r;
            }
            Some(RangeRequest::Range { start, len }) => {
                headers.push(header(
                    "Content-Range",
                    &format!("bytes {start}-{}/{size}", start + len - 1),
                ));
                (206, start, len)
            }
        };
        if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
            return text(500, "cannot seek\n");
        }
        let body: Box<dyn Read + Send> = Box::new(file.take(len));
        Response::new(StatusCode(status), headers, body, Some(len as usize), None)
            // tiny_http switches to chunked encoding above 32 KiB by default; clients
            // (and Range semantics) want an exact Content-Length.
            .with_chunked_threshold(usize::MAX)
    }

    fn post_status(&self, request: &mut Request) -> Response<Box<dyn Read + Send>> {
        let mut body = Vec::new();
        let read = request
            .as_reader()
            .take(MAX_STATUS_BYTES as u64 + 1)
            .read_to_end(&mut body);
        if read.is_err() {
            return text(400, "could not read the request body\n");
        }
        if body.len() > MAX_STATUS_BYTES {
            return text(413, "status event larger than 64 KiB\n");
        }
        let mut event: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
            Ok(_) => return text(400, "status event must be a JSON object\n"),
            Err(e) => return text(400, &format!("status event is not JSON: {e}\n")),
        };
        let client = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let target = match event.get("target").and_then(|t| t.as_str()) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => client.clone(),
        };
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(map) = event.as_object_mut() {
            map.insert("received".into(), received.into());
            map.insert("from".into(), client.into());
        }
        log::info!("status {target}: {event}");
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.insert(target, event);
        }
        text(204, "")
    }

    fn get_status(&self) -> Response<Box<dyn Read + Send>> {
        let body = match self.statuses.lock() {
            Ok(statuses) => serde_json::to_vec(&*statuses).unwrap_or_default(),
            Err(_) => return text(500, "status table unavailable\n"),
        };
        let len = body.len();
        let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(body));
        Response::new(
            StatusCode(200),
            vec![
                header("Content-Type", "application/json"),
                header("Cache-Control", "no-store"),
            ],
            reader,
            Some(len),
            None,
        )
        .with_chunked_threshold(usize::MAX)
    }
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

#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole file (no usable single range; several ranges are allowed to
    /// be answered in full).
    Ignore,
    Unsatisfiable,
    Range {
        start: u64,
        len: u64,
    },
}

/// Parses a `Range` header against a file of `size` bytes.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size > 0 => {
                let len = n.min(size);
                RangeRequest::Range {
                    start: size - len,
                    len,
                }
            }
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Ignore,
        },
        (false, true) => match parse(first) {
            Some(start) if start < size => RangeRequest::Range {
                start,
                len: size - start,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Ignore,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Range {
                        start,
                        len: end.min(size - 1) - start + 1,
                    }
                }
            }
            _ => RangeRequest::Ignore,
        },
        (true, true) => RangeRequest::Ignore,
    }
}

fn content_type(rel: &str) -> &'static str {
    if rel.starts_with("refs/") || rel.ends_with(".sig") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn header(name: &str, value: &str) -> Header {
    // Names and values here are ASCII built by this module.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("static header")
    })
}

fn text(status: u16, body: &str) -> Response<Box<dyn Read + Send>> {
    let bytes = body.as_bytes().to_vec();
    let len = bytes.len();
    let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(bytes));
    Response::new(
        StatusCode(status),
        vec![header("Content-Type", "text/plain; charset=utf-8")],
        reader,
        Some(len),
        None,
    )
    .with_chunked_threshold(usize::MAX)
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
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Range { start: 0, len: 10 });
        assert_eq!(parse_range("bytes=90-", 100), Range { start: 90, len: 10 });
        assert_eq!(parse_range("bytes=-10", 100), Range { start: 90, len: 10 });
        assert_eq!(
            parse_range("bytes=-1000", 100),
            Range { start: 0, len: 100 }
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            Range { start: 50, len: 50 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("bytes=9-1", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-y", 100), Ignore);
    }
}
