//! The machine's half of the capture protocol (docs/capture.md): questions and
//! uploads to an `imprint serve` that accepts captures, each retried with
//! backoff while the network or the server is the trouble.

use super::{CaptureError, Commit, MAX_BATCH, Store};
use crate::format::digest::Digest;
use crate::format::http::{Method, printable};
use crate::source::RetryPolicy;
use crate::source::{Answer, Client, ClientError};
use std::sync::atomic::{AtomicU64, Ordering};

/// How long a commit's answer may take: the server reads every chunk of the
/// image first (about a minute for 100 GB on a fast disk, more on a slow one).
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Busy answers (503) waited out, a second each, before a request counts as
/// failed: ten minutes of another capture's uploads.
const MAX_BUSY: u32 = 600;
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Answer bodies read at most: a list of digests, or a server's message.
const MAX_ANSWER: u64 = (MAX_BATCH as u64) * 32 + 4096;

pub struct HttpStore {
    client: Client,
    /// For the commit: the server checks every chunk before it answers, which
    /// takes minutes for a large image.
    committer: Client,
    /// The repository's base URL, without a trailing `/`.
    base: String,
    authorization: String,
    /// The machine's MAC, when the credential is one a provisioning server
    /// gave it (the server checks the credential against it).
    mac: Option<String>,
    retry: RetryPolicy,
    /// Requests sent again after a failure, for the summary.
    pub retries: AtomicU64,
}

impl HttpStore {
    pub fn new(
        client: Client,
        base: &str,
        credential: &str,
        mac: Option<String>,
        retry: RetryPolicy,
    ) -> HttpStore {
        let committer = Client::new(
            client.resolver().clone(),
            COMMIT_TIMEOUT,
            client.roots().cloned(),
            1,
        );
        HttpStore {
            client,
            committer,
            base: base.trim_end_matches('/').to_string(),
            authorization: format!("Bearer {credential}"),
            mac,
            retry,
            retries: AtomicU64::new(0),
        }
    }

    fn url(&self, path: &str) -> String {
        match &self.mac {
            Some(mac) => format!("{}/capture/{path}?mac={mac}", self.base),
            None => format!("{}/capture/{path}", self.base),
        }
    }

    /// Sends one request until the server answers it with something other
    /// than a failure that passes (a network error, 5xx). The status and body.
    fn call(
        &self,
        what: &str,
        send: impl Fn(&mut Vec<u8>) -> Result<Answer, ClientError>,
    ) -> Result<(u16, Vec<u8>), CaptureError> {
        let mut delay = self.retry.first_delay;
        let mut attempt = 1;
        let mut busy = 0;
        loop {
            let mut buf = Vec::new();
            let why = match send(&mut buf) {
                Ok(answer) if answer.status < 500 => return Ok((answer.status, buf)),
                // Busy with other uploads (its four at once): not a failure;
                // asked again after the second it says, for a while.
                Ok(answer) if answer.status == 503 && busy < MAX_BUSY => {
                    busy += 1;
                    std::thread::sleep(BUSY_WAIT);
                    continue;
                }
                Ok(answer) => format!("the server answered {}: {}", answer.status, said(&buf)),
                Err(e @ (ClientError::Url(_) | ClientError::Tls(_))) => {
                    return Err(CaptureError::Store(format!("{what}: {e}")));
                }
                Err(e) => e.to_string(),
            };
            if attempt >= self.retry.attempts {
                return Err(CaptureError::Store(format!(
                    "{what}: {why} ({attempt} tries); run the capture again once the server is reachable: it uploads only what is still missing"
                )));
            }
            log::warn!("{what}: {why}; again in {} ms", delay.as_millis());
            self.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(delay);
            delay = (delay * 2).min(self.retry.max_delay);
            attempt += 1;
        }
    }

    fn refused(&self, what: &str, status: u16, body: &[u8]) -> CaptureError {
        let hint = match status {
            401 => {
                "the server wants a capture credential: give imprint.capture-token= (the server's --capture-token), or boot the machine from a provisioning server whose inventory says capture ="
            }
            403 => {
                "the server refused this credential for this image: check the token, or the inventory's capture = for this machine"
            }
            404 => {
                "this server does not accept captures: start imprint serve with --capture-token, or give the host capture = in its inventory"
            }
            413 => "the server found the upload too large",
            422 => {
                "the server found what was sent, or a chunk it holds, not to match its digest: its message names which"
            }
            _ => "",
        };
        CaptureError::Store(format!(
            "{what}: the server answered {status} ({}){}{hint}",
            said(body),
            if hint.is_empty() { "" } else { "; " }
        ))
    }
}

/// What a server said, shown safely and briefly.
fn said(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    printable(text.trim())
}

impl Store for HttpStore {
    fn missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CaptureError> {
        let body: Vec<u8> = digests.iter().flat_map(|d| d.0).collect();
        let url = self.url("missing");
        let (status, answer) = self.call("asking the server which chunks it lacks", |buf| {
            self.client.post(
                &url,
                Some(&self.authorization),
                ("application/octet-stream", &body),
                MAX_ANSWER,
                buf,
            )
        })?;
        if status != 200 {
            return Err(self.refused("asking which chunks it lacks", status, &answer));
        }
        if answer.len() % 32 != 0 || answer.len() > body.len() {
            return Err(CaptureError::Store(format!(
                "the server's list of missing chunks is {} bytes, not whole digests of the {} asked about",
                answer.len(),
                digests.len()
            )));
        }
        let lacking: Vec<Digest> = answer
            .chunks_exact(32)
            .map(|d| Digest(d.try_into().unwrap_or([0; 32])))
            .collect();
        if let Some(stranger) = lacking.iter().find(|d| !digests.contains(d)) {
            return Err(CaptureError::Store(format!(
                "the server says it lacks {stranger}, which it was not asked about"
            )));
        }
        Ok(lacking)
    }

    fn put_chunk(&self, digest: &Digest, stored: &[u8]) -> Result<(), CaptureError> {
        let url = self.url(&format!("chunks/sha256/{}", digest.hex()));
        let what = format!("uploading chunk {digest}");
        let (status, answer) = self.call(&what, |buf| {
            self.client.send(
                Method::Put,
                &url,
                Some(&self.authorization),
                ("application/zstd", stored),
                MAX_ANSWER,
                buf,
            )
        })?;
        match status {
            200 | 201 => Ok(()),
            _ => Err(self.refused(&what, status, &answer)),
        }
    }

    fn commit(&self, name: &str, tag: &str, manifest: &[u8]) -> Result<Commit, CaptureError> {
        let url = self.url(&format!("refs/{name}/{tag}"));
        let what = format!("publishing {name}:{tag}");
        let (status, answer) = self.call(&what, |buf| {
            self.committer.send(
                Method::Put,
                &url,
                Some(&self.authorization),
                ("application/octet-stream", manifest),
                MAX_ANSWER,
                buf,
            )
        })?;
        match status {
            200 | 201 => {
                let text = String::from_utf8_lossy(&answer);
                text.trim()
                    .strip_prefix("sha256:")
                    .and_then(|hex| Digest::from_hex(hex).ok())
                    .map(Commit::Stored)
                    .ok_or_else(|| {
                        CaptureError::Store(format!(
                            "{what}: the server's answer {:?} is not a manifest digest",
                            said(&answer)
                        ))
                    })
            }
            409 => Ok(Commit::Missing),
            _ => Err(self.refused(&what, status, &answer)),
        }
    }
}
