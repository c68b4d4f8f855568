//! TLS to PostgreSQL with rustls: the client configuration for each
//! `sslmode`, and what a refused certificate means in words.
//!
//! rustls rather than OpenSSL: nothing to link or keep in step with the
//! system's libssl, memory-safe Rust, a small and well-kept code base
//! (used by the `redis` crate too). The `ring` provider is chosen
//! explicitly, so a second provider pulled in by another crate cannot make
//! rustls refuse to pick one. The system's roots come from
//! `rustls-native-certs`, which reads the operating system's trust store
//! (on Debian `/etc/ssl/certs`, including CAs added with
//! `update-ca-certificates`; `SSL_CERT_FILE` overrides it): a provider's
//! CA installed there is trusted, and updates come with the OS, unlike a
//! bundle compiled into the binary (`webpki-roots`).

use crate::conninfo::{RootCert, SslMode, TlsParams};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::Path;
use std::sync::Arc;

/// The rustls configuration for `params`. The error names the parameter
/// and the file that could not be used.
pub fn client_config(params: &TlsParams) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if params.verifies_chain() {
        let roots = Arc::new(roots(&params.roots())?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("sslrootcert: {e}"))?;
        if params.mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly(webpki))
        }
    } else {
        Arc::new(Unverified(provider.clone()))
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&params.cert, &params.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: {}", key.display(), pem_error(&e)))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read it: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected kind in it".into()
        }
        other => format!("not a valid PEM file: {other}"),
    }
}

fn certificates(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{param} {}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{param} {}: no certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn roots(source: &RootCert) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match source {
        RootCert::File(path) => {
            for cert in certificates("sslrootcert", path)? {
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "sslrootcert is not given and the system has no trusted roots (Debian package \
                     ca-certificates): set sslrootcert to the server's CA file"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must end in a trusted root, whatever host name
/// the certificate is for.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: encrypted, the
/// certificate not checked (libpq's meaning). The handshake's signatures
/// are still verified, so the session keys belong to whoever holds the
/// certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error somewhere in `e`'s chain (tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips it).
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

/// What to do about a TLS failure, in words naming the setting to change.
pub fn advice(e: &rustls::Error, params: &TlsParams, host: &str) -> String {
    let roots = match params.roots() {
        RootCert::File(p) => format!("the CA in sslrootcert ({})", p.display()),
        RootCert::System => "the system's trusted roots (no sslrootcert given)".to_owned(),
    };
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not valid for host {host} (sslmode=verify-full checks it): \
             connect by a name the certificate lists in database_url, or use sslmode=verify-ca"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "the server's certificate is not signed by {roots}: set sslrootcert in database_url to \
             the CA file of the server (your provider's bundle)"
        ),
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired: renew it on the server".to_owned()
        }
        rustls::Error::InvalidCertificate(other) => format!(
            "the server's certificate was refused ({other:?}): check sslrootcert and sslmode in database_url"
        ),
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}): if it asks for a client certificate, set \
             sslcert and sslkey in database_url to one its ssl_ca_file trusts"
        ),
        other => format!("TLS handshake failed ({other}): check sslmode and sslrootcert in database_url"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::split;

    #[test]
    fn unreadable_files_are_named_with_their_parameter() {
        let c =
            split("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap();
        let e = client_config(&c.tls).unwrap_err();
        assert!(
            e.contains("sslrootcert /nonexistent/ca.pem") && e.contains("cannot read"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let c = split(&format!(
            "postgres://h/db?sslmode=require&sslcert={0}&sslkey={0}",
            empty.display()
        ))
        .unwrap();
        let e = client_config(&c.tls).unwrap_err();
        assert!(
            e.starts_with("sslcert ") && e.contains("no certificate"),
            "{e}"
        );
    }

    #[test]
    fn every_mode_without_files_builds() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let c = split(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            client_config(&c.tls).unwrap_or_else(|e| panic!("{mode}: {e}"));
        }
    }
}
