//! The certificate authorities HTTPS servers are checked against, and what a
//! refused certificate means for the operator.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading CA certificates from {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is larger than {limit} bytes: not a CA bundle")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: {reason}; give a PEM file of CA certificates")]
    Pem { path: String, reason: String },
    #[error("{path} holds no CA certificate; give a PEM file of CA certificates")]
    Empty { path: String },
}

/// The certificate authorities an HTTPS server's certificate must chain to,
/// and where they came from (said when a certificate is refused).
#[derive(Clone, Debug)]
pub struct CaRoots {
    roots: Arc<RootCertStore>,
    origin: String,
    /// The TLS configuration over these roots, made at the first connection.
    config: Arc<OnceLock<Arc<ClientConfig>>>,
}

/// Where the deploy environment's initramfs carries the CA certificates HTTPS
/// servers are checked against (`imprint initramfs build --ca FILE`, else the
/// build host's bundle).
pub const INITRAMFS_CA_FILE: &str = "/etc/imprint/ca.pem";

/// Where a system keeps its CA bundle: Debian and Ubuntu, then Fedora and RHEL.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

impl CaRoots {
    /// Largest bundle read (Debian's whole bundle is about 220 KB).
    pub const MAX_BYTES: u64 = 4 << 20;

    /// The certificates of a PEM bundle; other PEM items (keys) are ignored,
    /// and so are certificates no TLS library could use as a root.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<CaRoots, CaError> {
        let mut certs = Vec::new();
        for item in CertificateDer::pem_slice_iter(pem) {
            match item {
                Ok(cert) => certs.push(cert),
                Err(e) => {
                    return Err(CaError::Pem {
                        path: origin.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs);
        if roots.is_empty() {
            return Err(CaError::Empty {
                path: origin.to_string(),
            });
        }
        Ok(CaRoots {
            roots: Arc::new(roots),
            origin: origin.to_string(),
            config: Arc::default(),
        })
    }

    /// Reads a PEM bundle, refusing files too large to be one.
    pub fn load(path: &Path) -> Result<CaRoots, CaError> {
        Ok(CaRoots::load_pem(path)?.0)
    }

    /// As [`CaRoots::load`], with the file's bytes.
    pub fn load_pem(path: &Path) -> Result<(CaRoots, Vec<u8>), CaError> {
        let shown = path.display().to_string();
        let read = |source| CaError::Read {
            path: shown.clone(),
            source,
        };
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(Self::MAX_BYTES + 1)
            .read_to_end(&mut pem)
            .map_err(read)?;
        if pem.len() as u64 > Self::MAX_BYTES {
            return Err(CaError::TooLarge {
                path: shown,
                limit: Self::MAX_BYTES,
            });
        }
        Ok((CaRoots::from_pem(&pem, &shown)?, pem))
    }

    /// The system's bundle: `$SSL_CERT_FILE`, else the first of
    /// [`SYSTEM_CA_FILES`] that exists.
    pub fn system_path() -> Option<std::path::PathBuf> {
        if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
            return Some(file.into());
        }
        SYSTEM_CA_FILES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(Path::to_path_buf)
    }

    /// The roots of [`CaRoots::system_path`].
    pub fn system() -> Option<Result<CaRoots, CaError>> {
        CaRoots::system_path().map(|p| CaRoots::load(&p))
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// TLS 1.2 and 1.3 with ring, checking servers against these roots only.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, rustls::Error> {
        if let Some(config) = self.config.get() {
            return Ok(Arc::clone(config));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        Ok(Arc::clone(self.config.get_or_init(|| Arc::new(config))))
    }
}

/// A refused handshake, said so the reader knows what to do: a certificate
/// error names the CA roots it was checked against.
pub fn describe_tls(e: &rustls::Error, roots: Option<&CaRoots>) -> String {
    match e {
        rustls::Error::InvalidCertificate(cert) => {
            use rustls::CertificateError as C;
            let what = match cert {
                C::UnknownIssuer => "is not signed by a CA this machine trusts".to_string(),
                C::BadSignature => "carries a bad signature".to_string(),
                C::Expired | C::ExpiredContext { .. } => "has expired".to_string(),
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "is not valid yet (is this machine's clock right?)".to_string()
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "does not name the host in the URL".to_string()
                }
                C::Revoked => "is revoked".to_string(),
                other => format!("was refused ({other:?})"),
            };
            let trusted = roots.map_or_else(
                || "no CA roots".to_string(),
                |r| format!("the {} CA certificates from {}", r.len(), r.origin()),
            );
            format!(
                "TLS: the server's certificate {what}; checked against {trusted}: give the server's CA with --ca FILE (the deploy environment: `imprint initramfs build --ca FILE`)"
            )
        }
        other => format!("TLS: {other}"),
    }
}
