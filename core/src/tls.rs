//! TLS for `rediss://` connections: the CA to trust and the client
//! certificate to present, read from PEM files.
//!
//! Without a CA file the system's roots are trusted (the platform's store,
//! read with `rustls-native-certs`: on Debian `/etc/ssl/certs`, which
//! `update-ca-certificates` maintains and an administrator can add a private
//! CA to). The TLS stack is rustls with the `ring` provider: no OpenSSL to
//! link or keep patched, and no C toolchain beyond `cc`.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The CA to trust and the client certificate to present on `rediss://`
/// connections. Empty (the default) means the system's roots and no client
/// certificate. `Debug` prints whether each part is set, never its bytes.
///
/// ```no_run
/// use smartcache_core::tls::Tls;
/// let tls = Tls::from_files(
///     Some("/etc/smartcache/redis-ca.pem".as_ref()),
///     Some(("/etc/smartcache/client.crt".as_ref(), "/etc/smartcache/client.key".as_ref())),
/// )
/// .unwrap();
/// assert!(tls.has_ca() && tls.has_client_cert());
/// ```
#[derive(Clone, Default)]
pub struct Tls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Which file a [`TlsFileError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFile {
    /// The CA certificates to trust.
    Ca,
    /// The client certificate (chain).
    ClientCert,
    /// The client certificate's private key.
    ClientKey,
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFile::Ca => "CA file",
            TlsFile::ClientCert => "client certificate file",
            TlsFile::ClientKey => "client key file",
        })
    }
}

/// A TLS file that cannot be used: unreadable, or not the PEM it should be.
#[derive(Debug)]
pub struct TlsFileError {
    /// Which file.
    pub file: TlsFile,
    /// Its path.
    pub path: PathBuf,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Read(std::io::Error),
    Pem(&'static str),
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, path) = (self.file, self.path.display());
        match &self.problem {
            Problem::Read(e) => write!(f, "cannot read the {file} {path}: {e}"),
            Problem::Pem(what) => write!(f, "the {file} {path} holds no {what}"),
        }
    }
}

impl std::error::Error for TlsFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Read(e) => Some(e),
            Problem::Pem(_) => None,
        }
    }
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        file,
        path: path.to_owned(),
        problem: Problem::Read(e),
    })
}

impl Tls {
    /// Reads and checks the PEM files: `ca` holds one or more CA
    /// certificates (trusted instead of the system's roots), `client` a
    /// certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// ```
    /// use smartcache_core::tls::{Tls, TlsFile};
    /// let e = Tls::from_files(Some("/nonexistent/ca.pem".as_ref()), None).unwrap_err();
    /// assert_eq!(e.file, TlsFile::Ca);
    /// assert!(e.to_string().contains("/nonexistent/ca.pem"));
    /// ```
    pub fn from_files(
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsFileError> {
        let ca = match ca {
            None => None,
            Some(path) => {
                let pem = read(TlsFile::Ca, path)?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .filter(|c| c.is_ok())
                    .count();
                if certs == 0 {
                    return Err(TlsFileError {
                        file: TlsFile::Ca,
                        path: path.to_owned(),
                        problem: Problem::Pem("PEM certificate (-----BEGIN CERTIFICATE-----)"),
                    });
                }
                Some(pem)
            }
        };
        let client = match client {
            None => None,
            Some((cert_path, key_path)) => {
                let cert = read(TlsFile::ClientCert, cert_path)?;
                if !CertificateDer::pem_slice_iter(&cert).any(|c| c.is_ok()) {
                    return Err(TlsFileError {
                        file: TlsFile::ClientCert,
                        path: cert_path.to_owned(),
                        problem: Problem::Pem("PEM certificate (-----BEGIN CERTIFICATE-----)"),
                    });
                }
                let key = read(TlsFile::ClientKey, key_path)?;
                if PrivateKeyDer::from_pem_slice(&key).is_err() {
                    return Err(TlsFileError {
                        file: TlsFile::ClientKey,
                        path: key_path.to_owned(),
                        problem: Problem::Pem("PEM private key (-----BEGIN PRIVATE KEY-----)"),
                    });
                }
                Some((cert, key))
            }
        };
        Ok(Self { ca, client })
    }

    /// Whether a CA replaces the system's roots.
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether a client certificate is presented.
    pub fn has_client_cert(&self) -> bool {
        self.client.is_some()
    }

    /// Whether nothing is set (system roots, no client certificate).
    pub fn is_empty(&self) -> bool {
        !self.has_ca() && !self.has_client_cert()
    }

    /// The certificates in the form the redis crate takes them.
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.has_ca())
            .field("client_cert", &self.has_client_cert())
            .finish()
    }
}

/// Makes rustls' `ring` provider the process default unless one is set
/// already: rustls needs one, and picks none by itself when the build
/// enables several.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("sc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = Tls::from_files(Some(&junk), None).unwrap_err();
        assert_eq!(e.file, TlsFile::Ca);
        assert!(
            e.to_string().contains("junk.pem") && e.to_string().contains("PEM"),
            "{e}"
        );
        let e = Tls::from_files(None, Some((&junk, &junk))).unwrap_err();
        assert_eq!(e.file, TlsFile::ClientCert);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_no_bytes() {
        let tls = Tls {
            ca: Some(b"secret-ca".to_vec()),
            client: Some((b"cert".to_vec(), b"secret-key".to_vec())),
        };
        let shown = format!("{tls:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
