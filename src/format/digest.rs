//! Content digests (`sha256:<hex>`) and image references (`name:tag` or a digest).

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A sha256 digest, written `sha256:<64 lowercase hex digits>`.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Digest(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} must look like sha256:<64 hex digits>")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("image reference {0:?} must be NAME:TAG or sha256:<hex>")]
    Malformed(String),
    #[error(
        "{what} {value:?} may only hold letters, digits, '.', '_' and '-' (1-128 chars, not starting with '.')"
    )]
    BadName { what: &'static str, value: String },
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
        }
        s
    }

    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        let bad = || DigestError::Malformed(hex.to_string());
        let raw = hex.as_bytes();
        if raw.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let nibble = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let s = s.trim();
        match s.strip_prefix("sha256:") {
            Some(hex) => Digest::from_hex(hex).map_err(|_| DigestError::Malformed(s.into())),
            None => Err(DigestError::Malformed(s.into())),
        }
    }
}

/// What an operator asks to deploy: a tag (trusted through a signature or the
/// repository) or a manifest digest (trusted by itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Tag { name: String, tag: String },
    Digest(Digest),
}

/// Names and tags become path segments of the repository, so they are kept to
/// a character set that can never escape it or need quoting in a URL.
pub fn check_name(what: &'static str, value: &str) -> Result<(), RefError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RefError::BadName {
            what,
            value: value.to_string(),
        })
    }
}

impl FromStr for ImageRef {
    type Err = RefError;
    fn from_str(s: &str) -> Result<ImageRef, RefError> {
        if s.starts_with("sha256:") {
            return Ok(ImageRef::Digest(s.parse()?));
        }
        let (name, tag) = s
            .split_once(':')
            .ok_or_else(|| RefError::Malformed(s.to_string()))?;
        check_name("image name", name)?;
        check_name("tag", tag)?;
        Ok(ImageRef::Tag {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Tag { name, tag } => write!(f, "{name}:{tag}"),
            ImageRef::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_text() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn malformed_digests_are_refused() {
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "md5:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn image_refs_parse_and_refuse_path_tricks() {
        assert_eq!(
            "demo:v1".parse::<ImageRef>().unwrap(),
            ImageRef::Tag {
                name: "demo".into(),
                tag: "v1".into()
            }
        );
        for bad in [
            "demo",
            "../x:v1",
            "a/b:v1",
            "demo:",
            ":v1",
            ".hidden:v1",
            "a:b:c",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} accepted");
        }
    }
}
