//! `imprint disk verify`: does the disk hold exactly the image's bytes?

use super::Target;
use crate::format::digest::Digest;
use crate::format::is_zero;
use crate::format::manifest::{ChunkKind, Manifest};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub chunks: usize,
    /// Offsets of chunks whose content differs, sorted.
    pub mismatched: Vec<u64>,
    /// Read errors, as messages.
    pub errors: Vec<String>,
    /// The target is smaller than the image.
    pub too_small: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatched.is_empty() && self.errors.is_empty() && !self.too_small
    }
}

pub fn verify(manifest: &Manifest, target: &dyn Target, jobs: usize) -> VerifyReport {
    let mut report = VerifyReport {
        chunks: manifest.chunks.len(),
        ..VerifyReport::default()
    };
    if target.size() < manifest.size {
        report.too_small = true;
        return report;
    }
    let found = Mutex::new((Vec::new(), Vec::new()));
    let checked = crate::parallel::for_each_index(
        0..manifest.chunks.len(),
        jobs,
        || vec![0u8; manifest.chunk_size as usize],
        |buf, i| {
            let chunk = &manifest.chunks[i];
            let len = chunk.length as u64;
            let matches = if target.known_zero(chunk.offset, len) {
                Ok(chunk.kind == ChunkKind::Zero)
            } else {
                let buf = &mut buf[..len as usize];
                target
                    .read_at(buf, chunk.offset)
                    .map(|()| match chunk.kind {
                        ChunkKind::Zero => is_zero(buf),
                        ChunkKind::Data { sha256, .. } => Digest::of(buf) == sha256,
                    })
            };
            if let Ok(mut f) = found.lock() {
                match matches {
                    Ok(true) => {}
                    Ok(false) => f.0.push(chunk.offset),
                    Err(e) => f.1.push(format!("reading offset {}: {e}", chunk.offset)),
                }
            }
            Ok::<(), ()>(())
        },
    );
    debug_assert!(checked.is_ok());
    let (mut mismatched, errors) = found.into_inner().unwrap_or_default();
    mismatched.sort_unstable();
    report.mismatched = mismatched;
    report.errors = errors;
    report
}
