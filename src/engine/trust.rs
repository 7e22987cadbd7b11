//! Trust: which manifest a reference names, fetched within its size limit and
//! checked against the operator's key, a pinned digest, or neither (said so).

use super::DeployError;
use crate::format::digest::{Digest, ImageRef};
use crate::format::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::format::repository::{manifest_path, ref_path, signature_path};
use crate::format::signature::{self, Release, Wanted};
use crate::source::{FetchError, RetryCounter, RetryPolicy, Source, fetch_checked};
use ed25519_dalek::VerifyingKey;

/// How the manifest came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The operator pinned its digest.
    Pinned,
    /// Signed by the operator's public key.
    Signed,
    /// Only the repository vouches for it (no pin, no key).
    Unverified,
}

pub struct Resolved {
    pub digest: Digest,
    pub manifest: Manifest,
    pub trust: Trust,
    /// The signed release statement, when a key vouched for it.
    pub release: Option<Release>,
}

/// The most manifest bytes a reader takes without a signature stating the size:
/// the format's limit, or an eighth of the memory available (decoding needs a
/// few times the encoded size), whichever is less, but never below 16 MiB.
pub(super) fn manifest_limit() -> u64 {
    let by_memory = crate::sys::available_memory().map_or(u64::MAX, |m| (m / 8).max(16 << 20));
    MAX_MANIFEST_BYTES.min(by_memory)
}

/// Finds, checks and decodes the manifest `image` names. Nothing is trusted that a
/// digest pin or the given public key does not vouch for.
pub fn resolve(
    source: &dyn Source,
    image: &ImageRef,
    pubkey: Option<&VerifyingKey>,
    policy: &RetryPolicy,
) -> Result<Resolved, DeployError> {
    let retries = RetryCounter::default();
    let mut buf = Vec::new();
    // A mismatch on small metadata is more likely a lie than a transient flip:
    // retry briefly, then say so.
    let meta_policy = RetryPolicy {
        attempts: policy.attempts.min(3),
        ..policy.clone()
    };
    let (digest, pinned) = match image {
        ImageRef::Digest(d) => (*d, true),
        ImageRef::Tag { name, tag } => {
            fetch_checked(
                source,
                &ref_path(name, tag),
                4096,
                &mut buf,
                policy,
                &retries,
                |_| Ok(()),
            )?;
            let text = String::from_utf8_lossy(&buf);
            let digest = text.parse::<Digest>().map_err(|e| DeployError::BadRef {
                image: image.to_string(),
                reason: e.to_string(),
            })?;
            (digest, false)
        }
    };
    // The signature first: it covers the digest (known from the ref or the pin),
    // so nothing the key did not vouch for is fetched, let alone decoded.
    let release = match pubkey {
        Some(key) => {
            let mut sig = Vec::new();
            match fetch_checked(
                source,
                &signature_path(&digest),
                64 << 10,
                &mut sig,
                policy,
                &retries,
                |_| Ok(()),
            ) {
                Err(FetchError::NotFound { .. }) => return Err(DeployError::Unsigned(digest)),
                other => other?,
            }
            let wanted = match image {
                ImageRef::Tag { name, tag } => Wanted::Tag { name, tag },
                ImageRef::Digest(_) => Wanted::Any,
            };
            let release = signature::verify(&String::from_utf8_lossy(&sig), &digest, key, wanted)?;
            // An expired release is refused as a bad signature would be; the
            // clock is this machine's, so a clock behind lets it through.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            release.check_fresh(now, None)?;
            Some(release)
        }
        None => None,
    };
    let limit = manifest_limit();
    let fetch_limit = match &release {
        Some(r) if r.size > limit => {
            return Err(DeployError::ManifestTooLarge {
                digest,
                size: r.size,
                limit,
            });
        }
        Some(r) => r.size,
        None => limit,
    };
    let mut actual = digest;
    let fetched = fetch_checked(
        source,
        &manifest_path(&digest),
        fetch_limit,
        &mut buf,
        &meta_policy,
        &retries,
        |body| {
            actual = Digest::of(body);
            if actual == digest {
                Ok(())
            } else {
                Err(format!("manifest hashes to {actual}"))
            }
        },
    );
    match fetched {
        Err(FetchError::GaveUp { .. }) if actual != digest => {
            return Err(DeployError::DigestMismatch {
                expected: digest,
                actual,
            });
        }
        other => other?,
    }
    let manifest =
        Manifest::decode(&buf).map_err(|source| DeployError::Manifest { digest, source })?;
    // The image asked for, not another one a ref or a signature leads to.
    let asked = match (image, &release) {
        (ImageRef::Tag { name, .. }, _) => Some(name.as_str()),
        (ImageRef::Digest(_), Some(r)) => Some(r.name.as_str()),
        (ImageRef::Digest(_), None) => None,
    };
    if let Some(asked) = asked
        && manifest.name != asked
    {
        return Err(DeployError::NameMismatch {
            digest,
            asked: asked.to_string(),
            found: manifest.name.clone(),
        });
    }
    let trust = match (&release, pinned) {
        (Some(_), _) => Trust::Signed,
        (None, true) => Trust::Pinned,
        (None, false) => Trust::Unverified,
    };
    Ok(Resolved {
        digest,
        manifest,
        trust,
        release,
    })
}
