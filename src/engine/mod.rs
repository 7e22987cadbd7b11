//! The deploy engine, shared by `imprint deploy` on a host and by the deploy
//! environment's PID 1.
//!
//! One rule does most of the work: for every chunk, if the target already holds
//! exactly that content, skip it. That gives resume after an interruption, cheap
//! re-deploys and delta upgrades. Everything written has been checked against the
//! sha256 in a trusted manifest first; nothing unverified ever reaches the target.
//!
//! In the order a deploy meets them: `trust.rs` resolves the manifest,
//! `datapass.rs` scans the target and queues what is missing, `fetch.rs` fetches,
//! verifies and writes it, `progress.rs` counts; `install.rs` is the ordered
//! install sequence around the data pass, `target.rs` the disk or file written,
//! `verify.rs` the check of a written target.

mod datapass;
mod fetch;
pub mod install;
mod progress;
mod queue;
mod target;
mod trust;
mod verify;
mod writeimage;

pub use datapass::{deploy, deploy_with_seed};
pub use fetch::{fit_jobs, worker_memory};
pub use progress::Progress;
pub use target::{DiskTarget, Preread, Target, TargetError};
pub use trust::{Resolved, Trust, resolve};
pub use verify::{VerifyReport, verify};
pub use writeimage::{WriteImageError, write_image};

use crate::format::digest::Digest;
use crate::format::manifest::ManifestError;
use crate::format::signature::SignatureError;
use crate::source::{FetchError, RetryPolicy};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(
        "one chunk in flight needs {} MiB (the image's chunks are {} MiB) and this machine has {} MiB of memory available; give it more memory, or build the image with a smaller --chunk-size",
        .needed >> 20, .chunk_size >> 20, .available >> 20
    )]
    OutOfMemory {
        chunk_size: u32,
        needed: u64,
        available: u64,
    },
    #[error("ref {image} is malformed: {reason}")]
    BadRef { image: String, reason: String },
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        source: ManifestError,
    },
    #[error(
        "manifest served as {expected} hashes to {actual}: the pin does not match or the repository is corrupt"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("manifest {0} is not signed (no .sig file) but a public key was given")]
    Unsigned(Digest),
    #[error(
        "manifest {digest} is the image {found:?}, not {asked:?}: the ref points at another image's manifest"
    )]
    NameMismatch {
        digest: Digest,
        asked: String,
        found: String,
    },
    #[error(
        "the signed manifest {digest} is {size} bytes, more than this reader accepts ({limit}); nothing was fetched"
    )]
    ManifestTooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{what} {target} at offset {offset}: {source}")]
    TargetIo {
        what: &'static str,
        target: String,
        offset: u64,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// Chunks in flight at once (fetching, checking, writing).
    pub jobs: usize,
    pub retry: RetryPolicy,
    /// How often `on_progress` is called.
    pub progress_interval: Duration,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            jobs: crate::format::cmdline::DEFAULT_JOBS,
            retry: RetryPolicy::default(),
            progress_interval: Duration::from_secs(1),
        }
    }
}
