//! Who may do what on `imprint serve`: the credential each deploy carries, and
//! the operator's token and the browser session made from it.
//!
//! - **A deploy's credential.** A boot script that sends a machine into a deploy
//!   gives it a credential of its own on the kernel command line:
//!   `nonce ‖ HMAC(server key, MAC ‖ generation ‖ nonce)`, base64url. The server
//!   stores nothing when it hands one out (a GET changes nothing); it recomputes
//!   the HMAC to check one, and keeps only the SHA-256 of the credential that
//!   the machine's deploy environment started with ([`fingerprint`]). A
//!   machine's generation moves on when its deploy completes and when it is
//!   reprovisioned, so credentials given out before no longer count.
//! - **The operator's token** (a file only the operator reads) is for actions and
//!   for reading what machines reported, sent as `Authorization: Bearer`; a
//!   browser trades it once for a session cookie ([`Keys::session`]), which is
//!   `HttpOnly` and `SameSite=Strict`.
//!
//! The server key lives in the data directory (mode 0600); without one, each
//! start makes a new key, and what it signed before does not count after.

use crate::format::inventory::Mac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Bytes of randomness in a credential, and of its tag.
const NONCE: usize = 12;
const TAG: usize = 18;
/// A credential's length in base64url characters.
pub const CREDENTIAL_LEN: usize = (NONCE + TAG) * 4 / 3;
/// How long a browser session lasts.
pub const SESSION_SECS: u64 = 12 * 3600;
/// The cookie a browser session travels in.
pub const SESSION_COOKIE: &str = "imprint_operator";
/// Shortest operator token accepted: guessing it over the network must not pay.
pub const MIN_TOKEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path} holds {len} bytes, not a server key of 32; move it away and start again (deploys under way must then boot again)"
    )]
    BadKey { path: String, len: usize },
    #[error(
        "the operator token in {path} is shorter than {MIN_TOKEN} characters: put a long random one there (`openssl rand -hex 32`)"
    )]
    ShortToken { path: String },
    #[error(
        "the capture token (--capture-token, IMPRINT_CAPTURE_TOKEN) is shorter than {MIN_TOKEN} characters, or holds a space or control character: give a long random one (`openssl rand -hex 32`)"
    )]
    ShortCaptureToken,
}

/// The server's secret: what credentials and sessions are signed with.
#[derive(Clone)]
pub struct Keys {
    key: hmac::Key,
}

impl Keys {
    /// The key in `path`, made (32 random bytes, mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Keys, AccessError> {
        let bytes = secret_file(path, |random| random.to_vec(), 64)?;
        if bytes.len() != 32 {
            return Err(AccessError::BadKey {
                path: path.display().to_string(),
                len: bytes.len(),
            });
        }
        Ok(Keys::from_bytes(&bytes))
    }

    /// A key for this run only.
    pub fn ephemeral() -> io::Result<Keys> {
        Ok(Keys::from_bytes(&crate::sys::random_bytes::<32>()?))
    }

    pub fn from_bytes(bytes: &[u8]) -> Keys {
        Keys {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    fn credential_tag(&self, mac: Mac, generation: u64, nonce: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"imprint deploy credential v1\0");
        ctx.update(&mac.0);
        ctx.update(&generation.to_le_bytes());
        ctx.update(nonce);
        ctx.sign()
    }

    /// A fresh credential for the deploy of `mac` in its `generation`.
    pub fn credential(&self, mac: Mac, generation: u64) -> io::Result<String> {
        let nonce = crate::sys::random_bytes::<NONCE>()?;
        let tag = self.credential_tag(mac, generation, &nonce);
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&tag.as_ref()[..TAG]);
        Ok(B64.encode(raw))
    }

    /// Whether `credential` is one this key gave `mac` in `generation`.
    pub fn credential_valid(&self, credential: &str, mac: Mac, generation: u64) -> bool {
        if credential.len() != CREDENTIAL_LEN {
            return false;
        }
        let Ok(raw) = B64.decode(credential) else {
            return false;
        };
        let Some((nonce, tag)) = raw.split_at_checked(NONCE) else {
            return false;
        };
        let want = self.credential_tag(mac, generation, nonce);
        tag.len() == TAG && constant_time_eq(tag, &want.as_ref()[..TAG])
    }

    fn session_tag(&self, token: &str, expires: u64) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"imprint operator session v1\0");
        // A new token ends the sessions of the old one.
        ctx.update(&Sha256::digest(token.as_bytes()));
        ctx.update(&expires.to_le_bytes());
        ctx.sign()
    }

    /// A session cookie's value for the holder of `token`, from `now` (Unix
    /// seconds) for [`SESSION_SECS`].
    pub fn session(&self, token: &str, now: u64) -> String {
        let expires = now + SESSION_SECS;
        let mut raw = expires.to_le_bytes().to_vec();
        raw.extend_from_slice(self.session_tag(token, expires).as_ref());
        B64.encode(raw)
    }

    /// Whether `value` is a session of `token` that has not expired at `now`.
    pub fn session_valid(&self, value: &str, token: &str, now: u64) -> bool {
        let Some(raw) = (value.len() <= 64)
            .then(|| B64.decode(value).ok())
            .flatten()
        else {
            return false;
        };
        let Some((expires, tag)) = raw.split_at_checked(8) else {
            return false;
        };
        let expires = u64::from_le_bytes(expires.try_into().unwrap_or_default());
        expires > now
            && expires <= now + SESSION_SECS
            && constant_time_eq(tag, self.session_tag(token, expires).as_ref())
    }
}

/// What the server keeps of a credential: its SHA-256, in hex.
pub fn fingerprint(credential: &str) -> String {
    Sha256::digest(credential.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The capture token as given: long enough that guessing it over the network
/// does not pay, and one word, as an `Authorization` header carries it.
pub fn capture_token(token: &str) -> Result<String, AccessError> {
    if token.len() < MIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AccessError::ShortCaptureToken);
    }
    Ok(token.to_string())
}

/// The operator's token from `path`: its first line, which must be long enough.
pub fn read_token(path: &Path) -> Result<String, AccessError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|source| AccessError::Io {
            path: path.display().to_string(),
            source,
        })?;
    token_of(path, &text)
}

/// The token in `path`, made (64 hex digits, mode 0600) if there is none.
pub fn read_or_make_token(path: &Path) -> Result<String, AccessError> {
    let text = secret_file(
        path,
        |random| {
            let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}\n").into_bytes()
        },
        4096,
    )?;
    token_of(path, &String::from_utf8_lossy(&text))
}

/// The first line of a token file's `text`, which must be long enough.
fn token_of(path: &Path, text: &str) -> Result<String, AccessError> {
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < MIN_TOKEN {
        return Err(AccessError::ShortToken {
            path: path.display().to_string(),
        });
    }
    Ok(token)
}

/// The bytes of the secret file `path` (at most `limit` of them), made first
/// (mode 0600, synced) from 32 random bytes by `make` if it is not there.
fn secret_file(
    path: &Path,
    make: impl FnOnce(&[u8; 32]) -> Vec<u8>,
    limit: u64,
) -> Result<Vec<u8>, AccessError> {
    let io_err = |source| AccessError::Io {
        path: path.display().to_string(),
        source,
    };
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match made {
        Ok(mut file) => {
            let bytes = make(&crate::sys::random_bytes::<32>().map_err(io_err)?);
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            return Ok(bytes);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit).read_to_end(&mut bytes))
        .map_err(io_err)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    #[test]
    fn a_credential_is_for_one_machine_and_one_generation() {
        let keys = Keys::from_bytes(&[7; 32]);
        let c = keys.credential(mac(1), 3).unwrap();
        assert_eq!(c.len(), CREDENTIAL_LEN);
        assert!(crate::format::ipxe::is_word(&c), "{c}");
        assert!(keys.credential_valid(&c, mac(1), 3));
        assert!(!keys.credential_valid(&c, mac(2), 3));
        assert!(!keys.credential_valid(&c, mac(1), 4));
        assert!(!Keys::from_bytes(&[8; 32]).credential_valid(&c, mac(1), 3));
        // Each script gets its own.
        let d = keys.credential(mac(1), 3).unwrap();
        assert_ne!(c, d);
        assert!(keys.credential_valid(&d, mac(1), 3));
        // A flipped character, a cut one, junk: refused.
        let mut flipped = c.clone().into_bytes();
        flipped[CREDENTIAL_LEN - 1] = if flipped[CREDENTIAL_LEN - 1] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            &flipped,
            &c[..CREDENTIAL_LEN - 1],
            "",
            "!!!!",
            &"A".repeat(40),
        ] {
            assert!(!keys.credential_valid(bad, mac(1), 3), "{bad}");
        }
        assert_eq!(fingerprint(&c).len(), 64);
        assert_ne!(fingerprint(&c), fingerprint(&d));
    }

    #[test]
    fn sessions_expire_and_end_with_their_token() {
        let keys = Keys::from_bytes(&[1; 32]);
        let token = "an operator token of some length";
        let s = keys.session(token, 1000);
        assert!(keys.session_valid(&s, token, 1000));
        assert!(keys.session_valid(&s, token, 1000 + SESSION_SECS - 1));
        assert!(!keys.session_valid(&s, token, 1000 + SESSION_SECS));
        assert!(!keys.session_valid(&s, "another token, just as long", 1000));
        assert!(!Keys::from_bytes(&[2; 32]).session_valid(&s, token, 1000));
        assert!(!keys.session_valid("", token, 1000));
        assert!(!keys.session_valid(&"x".repeat(500), token, 1000));
    }

    #[test]
    fn keys_and_tokens_are_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("server.key");
        let a = Keys::load_or_create(&key_path).unwrap();
        let b = Keys::load_or_create(&key_path).unwrap();
        let c = a.credential(mac(1), 0).unwrap();
        assert!(b.credential_valid(&c, mac(1), 0));
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&key_path, b"short").unwrap();
        assert!(matches!(
            Keys::load_or_create(&key_path),
            Err(AccessError::BadKey { len: 5, .. })
        ));

        let token_path = dir.path().join("operator-token");
        let t = read_or_make_token(&token_path).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(read_or_make_token(&token_path).unwrap(), t);
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&token_path, "s3cret\n").unwrap();
        assert!(matches!(
            read_token(&token_path),
            Err(AccessError::ShortToken { .. })
        ));
    }
}
