//! TLS to PostgreSQL: libpq's `sslmode`, honoured by both kinds of
//! connection a service opens (tokio-postgres for queries, pgwire-replication
//! for the replication stream), with rustls and the `ring` provider on both.
//!
//! | `sslmode`     | encrypted            | certificate checked against `sslrootcert` | host name checked |
//! |---------------|----------------------|-------------------------------------------|-------------------|
//! | `disable`     | no                   | no                                        | no                |
//! | `prefer`      | if the server offers | no                                        | no                |
//! | `require`     | yes, or fail         | no                                        | no                |
//! | `verify-ca`   | yes, or fail         | yes                                       | no                |
//! | `verify-full` | yes, or fail         | yes                                       | yes               |
//!
//! As in libpq, `prefer` and `require` protect against eavesdropping but not
//! against a server in the middle; production should use `verify-full`. The
//! `verify-*` modes need `sslrootcert` (the CA certificate, PEM): there is no
//! implicit trust store for database servers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, unverified (libpq's default).
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection must be encrypted.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// The mode from a tokio-postgres config parsed out of a URL
    /// (`?sslmode=disable|prefer|require`).
    pub fn from_url(pg: &tokio_postgres::Config) -> SslMode {
        match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to secure connections to one database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgTls {
    pub mode: SslMode,
    /// The CA certificate(s) the server's certificate must chain to (PEM).
    pub root_cert: Option<PathBuf>,
}

impl PgTls {
    /// Checks that the settings are complete; `what` names the config
    /// section in the message (`source`, `legacy`, ...). The certificate
    /// file itself is read by [`PgTls::connector`], when connecting.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.root_cert.is_none()
        {
            return Err(format!(
                "{what}.sslmode = {} needs {what}.sslrootcert (the CA certificate file, PEM)",
                self.mode
            ));
        }
        Ok(())
    }

    /// Sets the tokio-postgres side of the mode (whether to ask for TLS and
    /// whether to insist).
    pub fn configure(&self, pg: &mut tokio_postgres::Config) {
        pg.ssl_mode(match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    }

    /// The connector for tokio-postgres, verifying as the mode says.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let config = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly::new(&provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let path = self
                    .root_cert
                    .as_deref()
                    .ok_or_else(|| format!("sslmode {} needs sslrootcert", self.mode))?;
                let roots = Arc::new(read_roots(path).map_err(|e| format!("sslrootcert: {e}"))?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS setup: {e}"))?;
                if self.mode == SslMode::VerifyFull {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyHostName(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// The same settings for the replication connection to `host`.
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::TlsConfig;
        match self.mode {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::disabled()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig::verify_ca(self.root_cert.clone()),
            SslMode::VerifyFull => {
                TlsConfig::verify_full(self.root_cert.clone()).with_sni_hostname(host)
            }
        }
    }
}

/// Whether a tokio-postgres connection error is a TLS failure a retry cannot
/// fix: the server refuses TLS, or its certificate does not verify.
pub fn is_tls_refusal(error: &tokio_postgres::Error) -> bool {
    let text = crate::error::error_chain(error);
    text.contains("server does not support TLS") || text.contains("invalid peer certificate")
}

/// When `error` is a TLS refusal ([`is_tls_refusal`]), what the operator
/// must fix, naming the configuration `section` (`source`, `legacy`, ...)
/// and the `database` as the person knows it.
pub fn refusal_advice(
    error: &tokio_postgres::Error,
    section: &str,
    database: &str,
    mode: SslMode,
) -> Option<String> {
    is_tls_refusal(error).then(|| {
        format!(
            "TLS to {database} failed with {section}.sslmode = {mode}: {}; enable ssl on the server, fix {section}.sslrootcert, or change {section}.sslmode",
            crate::error::error_chain(error)
        )
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        roots
            .add(certificate)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// `prefer` / `require`: the channel is encrypted and the handshake signature
/// checked, but the certificate is not (libpq's behaviour for these modes).
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl EncryptOnly {
    fn new(provider: &CryptoProvider) -> Self {
        EncryptOnly {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the name may differ.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_libpq_spells_them() {
        #[derive(Deserialize)]
        struct Holder {
            sslmode: SslMode,
        }
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let holder: Holder = toml::from_str(&format!("sslmode = {text:?}")).unwrap();
            assert_eq!(holder.sslmode, mode);
            assert_eq!(mode.as_str(), text);
        }
        assert!(toml::from_str::<Holder>("sslmode = \"verify_full\"").is_err());
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        let tls = PgTls {
            mode: SslMode::VerifyFull,
            root_cert: None,
        };
        let error = tls.validate("source").unwrap_err();
        assert!(error.contains("source.sslrootcert"), "{error}");
        let missing = PgTls {
            mode: SslMode::VerifyCa,
            root_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
        };
        assert!(missing.validate("legacy").is_ok());
        let error = missing.connector().err().unwrap();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        assert!(PgTls::default().validate("source").is_ok());
        assert!(PgTls::default().connector().is_ok());
    }

    #[test]
    fn the_replication_connection_gets_the_same_mode() {
        let tls = PgTls {
            mode: SslMode::VerifyFull,
            root_cert: Some(PathBuf::from("/etc/ca.pem")),
        };
        let replication = tls.replication("db.example");
        assert_eq!(replication.mode, pgwire_replication::SslMode::VerifyFull);
        assert_eq!(replication.ca_pem_path, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(replication.sni_hostname.as_deref(), Some("db.example"));
        let require = PgTls {
            mode: SslMode::Require,
            root_cert: None,
        };
        assert_eq!(
            require.replication("h").mode,
            pgwire_replication::SslMode::Require
        );
        assert_eq!(
            PgTls::default().replication("h").mode,
            pgwire_replication::SslMode::Prefer
        );
    }
}
