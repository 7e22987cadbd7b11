//! Ed25519 keys and manifest signatures.
//!
//! A signature covers the ASCII text `imprint-manifest-v1 sha256:<hex>` built from
//! the manifest digest, so it pins the exact manifest bytes and cannot be replayed
//! as a signature of anything else. The `.sig` file holds one line per signature:
//! `ed25519 <public key, base64> <signature, base64>`.

use super::digest::Digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

const SECRET_KEY_TAG: &str = "imprint-ed25519-secret-key";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("public key {0:?} is not valid base64 of 32 bytes (as printed by `imprint keygen`)")]
    BadPublicKey(String),
    #[error(
        "secret key file is not an imprint ed25519 secret key (make one with `imprint keygen`)"
    )]
    BadSecretKey,
    #[error("signature file line {0} is malformed (want: ed25519 <key> <signature>)")]
    BadLine(usize),
    #[error("manifest {0} has no signature by the trusted key")]
    NoSignatureByKey(Digest),
    #[error(
        "manifest {0} signature by the trusted key does not verify: the manifest or signature was tampered with"
    )]
    Invalid(Digest),
}

fn message(digest: &Digest) -> Vec<u8> {
    format!("imprint-manifest-v1 {digest}").into_bytes()
}

pub fn parse_public_key(text: &str) -> Result<VerifyingKey, SignatureError> {
    let bad = || SignatureError::BadPublicKey(text.to_string());
    let raw = B64.decode(text.trim()).map_err(|_| bad())?;
    let raw: [u8; 32] = raw.try_into().map_err(|_| bad())?;
    VerifyingKey::from_bytes(&raw).map_err(|_| bad())
}

pub fn public_key_text(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

pub fn secret_key_text(key: &SigningKey) -> String {
    format!("{SECRET_KEY_TAG} {}\n", B64.encode(key.to_bytes()))
}

pub fn parse_secret_key(text: &str) -> Result<SigningKey, SignatureError> {
    let b64 = text
        .trim()
        .strip_prefix(SECRET_KEY_TAG)
        .ok_or(SignatureError::BadSecretKey)?;
    let raw = B64
        .decode(b64.trim())
        .map_err(|_| SignatureError::BadSecretKey)?;
    let raw: [u8; 32] = raw.try_into().map_err(|_| SignatureError::BadSecretKey)?;
    Ok(SigningKey::from_bytes(&raw))
}

/// One line of a `.sig` file.
pub fn sign_line(key: &SigningKey, digest: &Digest) -> String {
    let sig = key.sign(&message(digest));
    format!(
        "ed25519 {} {}\n",
        public_key_text(&key.verifying_key()),
        B64.encode(sig.to_bytes())
    )
}

/// Checks that `sig_file` holds a valid signature of `digest` by `key`. Lines by
/// other keys are ignored, so a manifest may carry several signatures.
pub fn verify(sig_file: &str, digest: &Digest, key: &VerifyingKey) -> Result<(), SignatureError> {
    for (i, line) in sig_file.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [alg, pk, sig] = fields[..] else {
            return Err(SignatureError::BadLine(i + 1));
        };
        if alg != "ed25519" {
            continue;
        }
        let pk = parse_public_key(pk).map_err(|_| SignatureError::BadLine(i + 1))?;
        if pk != *key {
            continue;
        }
        let sig = B64
            .decode(sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or(SignatureError::BadLine(i + 1))?;
        return key
            .verify_strict(&message(digest), &Signature::from_bytes(&sig))
            .map_err(|_| SignatureError::Invalid(*digest));
    }
    Err(SignatureError::NoSignatureByKey(*digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn good_signature_verifies() {
        let d = Digest::of(b"manifest");
        let line = sign_line(&key(1), &d);
        verify(&line, &d, &key(1).verifying_key()).unwrap();
        // Several signers: the trusted one is found among them.
        let both = format!("{}{}", sign_line(&key(2), &d), line);
        verify(&both, &d, &key(1).verifying_key()).unwrap();
    }

    #[test]
    fn tampered_manifest_or_signature_fails() {
        let d = Digest::of(b"manifest");
        let line = sign_line(&key(1), &d);
        let other = Digest::of(b"manifest!");
        assert_eq!(
            verify(&line, &other, &key(1).verifying_key()),
            Err(SignatureError::Invalid(other))
        );
        let mut sig: Vec<&str> = line.split_whitespace().collect();
        let flipped = {
            let mut raw = B64.decode(sig[2]).unwrap();
            raw[5] ^= 1;
            B64.encode(raw)
        };
        sig[2] = &flipped;
        assert_eq!(
            verify(&sig.join(" "), &d, &key(1).verifying_key()),
            Err(SignatureError::Invalid(d))
        );
    }

    #[test]
    fn wrong_key_is_refused() {
        let d = Digest::of(b"manifest");
        let line = sign_line(&key(1), &d);
        assert_eq!(
            verify(&line, &d, &key(2).verifying_key()),
            Err(SignatureError::NoSignatureByKey(d))
        );
        assert_eq!(
            verify("", &d, &key(2).verifying_key()),
            Err(SignatureError::NoSignatureByKey(d))
        );
        assert_eq!(
            verify("ed25519 x", &d, &key(2).verifying_key()),
            Err(SignatureError::BadLine(1))
        );
    }

    #[test]
    fn keys_round_trip_and_bad_base64_is_named() {
        let k = key(9);
        assert_eq!(
            parse_secret_key(&secret_key_text(&k)).unwrap().to_bytes(),
            k.to_bytes()
        );
        let pk = public_key_text(&k.verifying_key());
        assert_eq!(parse_public_key(&pk).unwrap(), k.verifying_key());
        for bad in ["", "not base64!", "AAAA", &pk[..20]] {
            let err = parse_public_key(bad).unwrap_err();
            assert!(err.to_string().contains("base64"), "{err}");
        }
        assert_eq!(
            parse_secret_key("garbage"),
            Err(SignatureError::BadSecretKey)
        );
    }
}
