//! Files `imprint serve` sends: the repository's (regular files below its root
//! only: path segments are restricted to the repository's own character set, and
//! the resolved path must still lie inside the root, so a symlink cannot lead out
//! of it), the deploy environment's kernel and initramfs, and machines' cloud-init
//! files.

use super::reply::{Body, Reply};
use super::{RepoServer, bearer};
use crate::format::http::{self, RangeRequest, RequestHead};
use crate::host::fleet;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

impl RepoServer {
    /// The deploy environment's kernel and initramfs, and the cloud-init files
    /// the inventory gives a machine (to that machine's deploy, by its
    /// credential, or to the operator); `None` for paths that are the
    /// repository's.
    pub(super) fn provisioning_file(
        &self,
        head: &RequestHead,
        path: &str,
        operator: bool,
    ) -> Option<Reply> {
        let p = &self.provisioning;
        let boot = match path {
            "/boot/vmlinuz" => p.kernel.as_ref(),
            "/boot/initramfs.img" => p.initrd.as_ref(),
            _ => None,
        };
        if let Some(file) = boot {
            return Some(self.send_file(head, file, "application/octet-stream", "no-cache"));
        }
        let rest = path.strip_prefix("/hosts/")?;
        let fleet = p.fleet.as_ref()?;
        let (stem, which) = rest.split_once('/')?;
        let mac = fleet::parse_mac(stem)?;
        if !operator && let Err(refusal) = fleet.may_read_files(mac, bearer(head)) {
            return Some(Reply::text(refusal.status(), &format!("{refusal}\n")));
        }
        let file = fleet.host_file(mac, which)?;
        Some(self.send_file(head, &file, "text/plain; charset=utf-8", "no-store"))
    }

    pub(super) fn file(&self, head: &RequestHead, url_path: &str) -> Reply {
        let Some(rel) = safe_relative(url_path) else {
            return Reply::text(403, "forbidden path\n");
        };
        let full = self.root.join(&rel);
        // Canonicalizing resolves symlinks: whatever they point at must still be
        // inside the repository.
        let real = match full.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Reply::text(404, "not found\n");
            }
            Err(_) => return Reply::text(403, "forbidden path\n"),
        };
        if !real.starts_with(&self.root) {
            return Reply::text(403, "forbidden path\n");
        }
        self.send_file(head, &real, content_type(&rel), cache_control(&rel))
    }

    /// A regular file, whole or the range asked for.
    fn send_file(&self, head: &RequestHead, real: &Path, ctype: &str, cache: &str) -> Reply {
        // Non-blocking, so a FIFO in the repository cannot hold this thread;
        // only regular files are served.
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(real)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Reply::text(404, "not found\n");
            }
            Err(_) => return Reply::text(403, "forbidden\n"),
        };
        let (size, mtime) = match file.metadata() {
            Ok(m) if m.is_file() => {
                use std::os::unix::fs::MetadataExt;
                (
                    m.len(),
                    (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32),
                )
            }
            Ok(_) => return Reply::text(404, "not a file\n"),
            Err(_) => return Reply::text(500, "cannot stat file\n"),
        };
        // Validators, so a cache in front (squid, a CDN) revalidates a ref or
        // a signature file with a 304 instead of fetching it again.
        let (etag, modified) = http::validators(size, mtime);
        let mut headers = vec![
            ("Accept-Ranges", "bytes".to_string()),
            ("Content-Type", ctype.to_string()),
            ("Cache-Control", cache.to_string()),
            ("ETag", etag.clone()),
            ("Last-Modified", http::http_date(modified)),
        ];
        if http::not_modified(
            head.header("if-none-match"),
            head.header("if-modified-since"),
            &etag,
            modified,
        ) {
            return Reply {
                status: 304,
                headers,
                body: Body::Bytes(Vec::new()),
                close: false,
            };
        }
        let (status, start, len) = match head.header("range").map(|r| http::parse_range(r, size)) {
            None | Some(RangeRequest::Ignore) => (200, 0, size),
            Some(RangeRequest::Unsatisfiable) => {
                let mut r = Reply::text(416, "range not satisfiable\n");
                r.headers.push(("Content-Range", format!("bytes */{size}")));
                return r;
            }
            Some(RangeRequest::Range { start, len }) => {
                headers.push((
                    "Content-Range",
                    format!("bytes {start}-{}/{size}", start + len - 1),
                ));
                (206, start, len)
            }
        };
        if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
            return Reply::text(500, "cannot seek\n");
        }
        Reply {
            status,
            headers,
            body: Body::File { file, len },
            close: false,
        }
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

fn content_type(rel: &str) -> &'static str {
    if rel.starts_with("refs/") || rel.ends_with(".sig") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// Chunks and manifests are named by their content and never change; refs move,
/// and signature files grow when a signer is added.
fn cache_control(rel: &str) -> &'static str {
    if rel.starts_with("refs/") || rel.ends_with(".sig") {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    }
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
    fn signatures_and_refs_are_revalidated_content_is_immutable() {
        assert_eq!(cache_control("refs/os/v1"), "no-cache");
        assert_eq!(cache_control("manifests/sha256/ab.sig"), "no-cache");
        assert!(cache_control("manifests/sha256/ab").contains("immutable"));
        assert!(cache_control("chunks/sha256/ab/abcd").contains("immutable"));
    }
}
