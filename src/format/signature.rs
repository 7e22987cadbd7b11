//! Ed25519 keys and release signatures.
//!
//! A signature covers a *release statement*: the image name, the tag, the
//! manifest digest, the manifest's size in bytes and the time the release was
//! issued, as the text
//!
//! ```text
//! imprint-release-v2
//! name=<name>
//! tag=<tag>
//! digest=sha256:<hex>
//! size=<bytes>
//! issued=<unix seconds>
//! ```
//!
//! (each line ending in `\n`). So a signature pins the exact manifest bytes,
//! binds them to the name and tag the operator asked for (pointing `refs/web/v2`
//! at web:v1's manifest does not verify), bounds what a reader fetches before it
//! has checked anything, and orders releases in time (a deploy can refuse to go
//! back to an older one). The `.sig` file next to the manifest holds one line per
//! signature: `ed25519-v2 <public key> <name> <tag> <size> <issued> <signature>`,
//! keys and signatures in base64. Lines of the first format (`ed25519 <key>
//! <signature>`, over the digest alone) are recognised only to say how to
//! re-sign.
//!
//! A release may also expire: its statement is then `imprint-release-v3` with
//! an `expires=<unix seconds>` line after `issued`, and its line
//! `expiring-ed25519 <key> <name> <tag> <size> <issued> <expires> <signature>`.
//! Readers from before expiry skip such lines as another algorithm's, so they
//! never take an expiring release as one that does not expire.

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
    #[error(
        "signature file line {0} is malformed (want: ed25519-v2 <key> <name> <tag> <size> <issued> <signature>)"
    )]
    BadLine(usize),
    #[error("manifest {0} has no signature by the trusted key")]
    NoSignatureByKey(Digest),
    #[error(
        "manifest {0} is signed by the trusted key in the old format, which does not bind the image name and tag; re-sign it: imprint image sign --repo DIR NAME:TAG --sign-key FILE"
    )]
    OldFormat(Digest),
    #[error(
        "manifest {digest} is signed by the trusted key, but not as {name}:{tag}; a ref that points at another release's manifest is not trusted"
    )]
    NotThisRelease {
        digest: Digest,
        name: String,
        tag: String,
    },
    #[error(
        "manifest {0} signature by the trusted key does not verify: the manifest or signature was tampered with"
    )]
    Invalid(Digest),
    /// `release` is `NAME:TAG (DIGEST)`.
    #[error(
        "release {release} expired at {expires} (Unix time), and this machine's clock says {now}: sign it again (imprint image sign --expires), or check the clock"
    )]
    Expired {
        release: String,
        expires: u64,
        now: u64,
    },
    #[error(
        "release {release} was issued at {issued} (Unix time), before {min_issued}, the earliest this machine takes (imprint.min-issued): a newer release is wanted"
    )]
    IssuedTooEarly {
        release: String,
        issued: u64,
        min_issued: u64,
    },
}

/// What a signature says: this manifest is release `name:tag`, issued then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub name: String,
    pub tag: String,
    pub digest: Digest,
    /// The manifest's length in bytes.
    pub size: u64,
    /// Unix seconds; later releases have later times.
    pub issued: u64,
    /// Unix seconds after which the release is no longer deployed.
    pub expires: Option<u64>,
}

impl Release {
    fn statement(&self) -> Vec<u8> {
        let head = format!(
            "name={}\ntag={}\ndigest={}\nsize={}\nissued={}\n",
            self.name, self.tag, self.digest, self.size, self.issued
        );
        match self.expires {
            None => format!("imprint-release-v2\n{head}"),
            Some(expires) => format!("imprint-release-v3\n{head}expires={expires}\n"),
        }
        .into_bytes()
    }

    fn shown(&self) -> String {
        format!("{}:{} ({})", self.name, self.tag, self.digest)
    }

    /// Whether this release may be deployed by a machine whose clock says
    /// `now` and that takes nothing issued before `min_issued`.
    pub fn check_fresh(&self, now: u64, min_issued: Option<u64>) -> Result<(), SignatureError> {
        if let Some(expires) = self.expires
            && now >= expires
        {
            return Err(SignatureError::Expired {
                release: self.shown(),
                expires,
                now,
            });
        }
        if let Some(min_issued) = min_issued
            && self.issued < min_issued
        {
            return Err(SignatureError::IssuedTooEarly {
                release: self.shown(),
                issued: self.issued,
                min_issued,
            });
        }
        Ok(())
    }
}

/// A moment as an operator writes it: Unix seconds, a UTC date
/// (`2027-01-31`) or time (`2027-01-31T08:00:00Z`), or, when `from` is given,
/// a span after it (`90d`, `12h`, `30m`, `2w`).
pub fn parse_when(text: &str, from: Option<u64>) -> Result<u64, String> {
    let bad = || {
        format!(
            "{:?} is not a time: give Unix seconds, a UTC date (2027-01-31) or time (2027-01-31T08:00:00Z){}",
            super::http::printable(text),
            if from.is_some() {
                ", or a span such as 90d, 12h, 2w"
            } else {
                ""
            }
        )
    };
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    if let Some(from) = from
        && let Some(unit) = text.chars().last()
        && let Ok(n) = text[..text.len() - unit.len_utf8()].parse::<u64>()
    {
        let scale = match unit {
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        return n
            .checked_mul(scale)
            .and_then(|s| from.checked_add(s))
            .ok_or_else(bad);
    }
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, day] = d[..] else {
        return Err(bad());
    };
    let (y, m, day) = (num(y)?, num(m)?, num(day)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let seconds = match time {
        None => 0,
        Some(t) => {
            let t: Vec<&str> = t.split(':').collect();
            let [h, mi, s] = t[..] else { return Err(bad()) };
            let (h, mi, s) = (num(h)?, num(mi)?, num(s)?);
            if h > 23 || mi > 59 || s > 60 {
                return Err(bad());
            }
            h * 3600 + mi * 60 + s
        }
    };
    Ok(days_since_epoch(y, m, day) * 86_400 + seconds)
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian calendar).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    // Howard Hinnant's days_from_civil, for years from 1970 on.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Which release a reader wants a signature for.
#[derive(Clone, Copy, Debug)]
pub enum Wanted<'a> {
    /// `name:tag`, as the operator asked.
    Tag { name: &'a str, tag: &'a str },
    /// A manifest pinned by digest: any release of it the key signed (the
    /// latest issued).
    Any,
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
pub fn sign_line(key: &SigningKey, release: &Release) -> String {
    let sig = B64.encode(key.sign(&release.statement()).to_bytes());
    let key = public_key_text(&key.verifying_key());
    let Release {
        name,
        tag,
        size,
        issued,
        ..
    } = release;
    match release.expires {
        None => format!("ed25519-v2 {key} {name} {tag} {size} {issued} {sig}\n"),
        Some(expires) => {
            format!("{EXPIRING} {key} {name} {tag} {size} {issued} {expires} {sig}\n")
        }
    }
}

/// The first word of an expiring release's line.
const EXPIRING: &str = "expiring-ed25519";

/// A `.sig` file's lines without the line for (`key`, `tag`), if there was one:
/// what to keep when that key signs that tag again.
pub fn without(sig_file: &str, key: &VerifyingKey, tag: &str) -> String {
    let ours = public_key_text(key);
    sig_file
        .lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f[..] {
                ["ed25519-v2" | EXPIRING, pk, _, t, ..] => !(pk == ours && t == tag),
                // The old format's line by this key is replaced too.
                ["ed25519", pk, _] => pk != ours,
                _ => !line.trim().is_empty(),
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Finds, in the `.sig` file of manifest `digest`, a valid signature by `key` of
/// the release `wanted`, and returns the release it states. Lines by other keys
/// are ignored, so a manifest may carry several signatures.
pub fn verify(
    sig_file: &str,
    digest: &Digest,
    key: &VerifyingKey,
    wanted: Wanted,
) -> Result<Release, SignatureError> {
    let mut old_format = false;
    let mut other_release = false;
    let mut best: Option<Release> = None;
    for (i, line) in sig_file.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let signed = match fields[..] {
            ["ed25519-v2", pk, name, tag, size, issued, sig] => {
                Some((pk, name, tag, size, issued, None, sig))
            }
            [EXPIRING, pk, name, tag, size, issued, expires, sig] => {
                Some((pk, name, tag, size, issued, Some(expires), sig))
            }
            [EXPIRING, ..] => return Err(SignatureError::BadLine(i + 1)),
            _ => None,
        };
        match (signed, &fields[..]) {
            (Some((pk, name, tag, size, issued, expires, sig)), _) => {
                let bad = || SignatureError::BadLine(i + 1);
                if parse_public_key(pk).map_err(|_| bad())? != *key {
                    continue;
                }
                let release = Release {
                    name: name.to_string(),
                    tag: tag.to_string(),
                    digest: *digest,
                    size: size.parse().map_err(|_| bad())?,
                    issued: issued.parse().map_err(|_| bad())?,
                    expires: expires.map(|e| e.parse().map_err(|_| bad())).transpose()?,
                };
                let sig = B64
                    .decode(sig)
                    .ok()
                    .and_then(|b| <[u8; 64]>::try_from(b).ok())
                    .ok_or_else(bad)?;
                key.verify_strict(&release.statement(), &Signature::from_bytes(&sig))
                    .map_err(|_| SignatureError::Invalid(*digest))?;
                let matches = match wanted {
                    Wanted::Tag { name, tag } => release.name == name && release.tag == tag,
                    Wanted::Any => true,
                };
                if !matches {
                    other_release = true;
                } else if best.as_ref().is_none_or(|b| release.issued > b.issued) {
                    best = Some(release);
                }
            }
            (None, ["ed25519", pk, _]) if parse_public_key(pk).is_ok_and(|pk| pk == *key) => {
                old_format = true;
            }
            (None, ["ed25519", _, _]) => {}
            (None, [alg, ..]) if alg.starts_with("ed25519") => {
                return Err(SignatureError::BadLine(i + 1));
            }
            // Other algorithms, for other readers.
            _ => {}
        }
    }
    match (best, wanted) {
        (Some(release), _) => Ok(release),
        (None, Wanted::Tag { name, tag }) if other_release => Err(SignatureError::NotThisRelease {
            digest: *digest,
            name: name.to_string(),
            tag: tag.to_string(),
        }),
        _ if old_format => Err(SignatureError::OldFormat(*digest)),
        _ => Err(SignatureError::NoSignatureByKey(*digest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn release(name: &str, tag: &str, manifest: &[u8], issued: u64) -> Release {
        Release {
            name: name.into(),
            tag: tag.into(),
            digest: Digest::of(manifest),
            size: manifest.len() as u64,
            issued,
            expires: None,
        }
    }

    fn web(tag: &str) -> Wanted<'_> {
        Wanted::Tag { name: "web", tag }
    }

    #[test]
    fn good_signature_verifies_and_states_the_release() {
        let r = release("web", "v1", b"manifest", 1000);
        let line = sign_line(&key(1), &r);
        assert_eq!(
            verify(&line, &r.digest, &key(1).verifying_key(), web("v1")),
            Ok(r.clone())
        );
        // Several signers: the trusted one is found among them.
        let both = format!("{}{}", sign_line(&key(2), &r), line);
        assert_eq!(
            verify(&both, &r.digest, &key(1).verifying_key(), web("v1")),
            Ok(r.clone())
        );
        // Pinned by digest: any release of it, the latest issued.
        let later = release("web", "stable", b"manifest", 2000);
        let two = format!("{line}{}", sign_line(&key(1), &later));
        assert_eq!(
            verify(&two, &r.digest, &key(1).verifying_key(), Wanted::Any),
            Ok(later)
        );
    }

    #[test]
    fn a_signature_binds_name_and_tag() {
        // web:v1's manifest, signed as web:v1, offered as web:v2 or as db:v1.
        let r = release("web", "v1", b"manifest", 1000);
        let line = sign_line(&key(1), &r);
        let k = key(1).verifying_key();
        assert!(matches!(
            verify(&line, &r.digest, &k, web("v2")),
            Err(SignatureError::NotThisRelease { .. })
        ));
        assert!(matches!(
            verify(
                &line,
                &r.digest,
                &k,
                Wanted::Tag {
                    name: "db",
                    tag: "v1"
                }
            ),
            Err(SignatureError::NotThisRelease { .. })
        ));
        // Rewriting the line's tag breaks the signature.
        let forged = line.replace(" web v1 ", " web v2 ");
        assert_eq!(
            verify(&forged, &r.digest, &k, web("v2")),
            Err(SignatureError::Invalid(r.digest))
        );
        let backdated = line.replace(" 1000 ", " 9999 ");
        assert_eq!(
            verify(&backdated, &r.digest, &k, web("v1")),
            Err(SignatureError::Invalid(r.digest))
        );
    }

    #[test]
    fn tampered_manifest_or_signature_fails() {
        let r = release("web", "v1", b"manifest", 1);
        let line = sign_line(&key(1), &r);
        let other = Digest::of(b"manifest!");
        assert_eq!(
            verify(&line, &other, &key(1).verifying_key(), web("v1")),
            Err(SignatureError::Invalid(other))
        );
        let mut sig: Vec<&str> = line.split_whitespace().collect();
        let flipped = {
            let mut raw = B64.decode(sig[6]).unwrap();
            raw[5] ^= 1;
            B64.encode(raw)
        };
        sig[6] = &flipped;
        assert_eq!(
            verify(
                &sig.join(" "),
                &r.digest,
                &key(1).verifying_key(),
                web("v1")
            ),
            Err(SignatureError::Invalid(r.digest))
        );
    }

    #[test]
    fn wrong_key_old_format_and_bad_lines() {
        let r = release("web", "v1", b"manifest", 1);
        let line = sign_line(&key(1), &r);
        let k2 = key(2).verifying_key();
        assert_eq!(
            verify(&line, &r.digest, &k2, web("v1")),
            Err(SignatureError::NoSignatureByKey(r.digest))
        );
        assert_eq!(
            verify("", &r.digest, &k2, web("v1")),
            Err(SignatureError::NoSignatureByKey(r.digest))
        );
        assert_eq!(
            verify("ed25519-v2 x", &r.digest, &k2, web("v1")),
            Err(SignatureError::BadLine(1))
        );
        // The first format, by the trusted key: say how to re-sign.
        let old = format!(
            "ed25519 {} {}\n",
            public_key_text(&k2),
            B64.encode([0u8; 64])
        );
        let err = verify(&old, &r.digest, &k2, web("v1")).unwrap_err();
        assert_eq!(err, SignatureError::OldFormat(r.digest));
        assert!(err.to_string().contains("imprint image sign"), "{err}");
    }

    #[test]
    fn signing_a_tag_again_replaces_only_that_line() {
        let k = key(1);
        let a = sign_line(&k, &release("web", "v1", b"m", 1));
        let b = sign_line(&k, &release("web", "stable", b"m", 1));
        let other = sign_line(&key(2), &release("web", "v1", b"m", 1));
        let kept = without(&format!("{a}{b}{other}"), &k.verifying_key(), "v1");
        assert_eq!(kept, format!("{b}{other}"));
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

    #[test]
    fn an_expiring_release_says_when_and_is_refused_after() {
        let k = key(1);
        let r = Release {
            expires: Some(5000),
            ..release("web", "v1", b"manifest", 1000)
        };
        let line = sign_line(&k, &r);
        assert!(line.starts_with("expiring-ed25519 "), "{line}");
        // Readers from before expiry take only lines whose first word starts
        // with "ed25519" as ones to check: they skip this one.
        assert!(!line.starts_with("ed25519"));
        let kv = k.verifying_key();
        assert_eq!(verify(&line, &r.digest, &kv, web("v1")), Ok(r.clone()));
        // The expiry is signed: moved, the signature fails.
        let moved = line.replace(" 5000 ", " 9999 ");
        assert_eq!(
            verify(&moved, &r.digest, &kv, web("v1")),
            Err(SignatureError::Invalid(r.digest))
        );
        assert!(matches!(
            verify("expiring-ed25519 x y", &r.digest, &kv, web("v1")),
            Err(SignatureError::BadLine(1))
        ));
        assert_eq!(r.check_fresh(4999, None), Ok(()));
        assert!(matches!(
            r.check_fresh(5000, None),
            Err(SignatureError::Expired {
                expires: 5000,
                now: 5000,
                ..
            })
        ));
        assert_eq!(r.check_fresh(0, Some(1000)), Ok(()));
        let err = r.check_fresh(0, Some(1001)).unwrap_err();
        assert!(matches!(
            err,
            SignatureError::IssuedTooEarly { issued: 1000, .. }
        ));
        assert!(err.to_string().contains("imprint.min-issued"), "{err}");
        // Signing the tag again replaces the expiring line too.
        let other = sign_line(&k, &release("web", "v2", b"manifest", 2000));
        assert_eq!(without(&format!("{line}{other}"), &kv, "v1"), other);
    }

    #[test]
    fn times_as_operators_write_them() {
        assert_eq!(parse_when("1801353600", None), Ok(1_801_353_600));
        assert_eq!(parse_when("2027-01-31", None), Ok(1_801_353_600));
        assert_eq!(parse_when("2027-01-31T08:00:00Z", None), Ok(1_801_382_400));
        assert_eq!(parse_when("2000-02-29", None), Ok(951_782_400));
        assert_eq!(parse_when("2100-03-01", None), Ok(4_107_542_400));
        assert_eq!(parse_when("90d", Some(1000)), Ok(1000 + 90 * 86_400));
        assert_eq!(parse_when("2w", Some(0)), Ok(14 * 86_400));
        assert_eq!(parse_when("12h", Some(10)), Ok(10 + 12 * 3600));
        for bad in [
            "90d",
            "",
            "2027-13-01",
            "2027-01-31T25:00:00Z",
            "2027-01-31T08:00:00",
            "soon",
            "1969-12-31",
        ] {
            assert!(parse_when(bad, None).is_err(), "{bad}");
        }
        assert!(parse_when("5y", Some(0)).is_err());
        assert!(parse_when(&format!("{}d", u64::MAX), Some(0)).is_err());
    }
}
