//! TLS for the network sinks (`https://` for the HTTP consumer, `wss://` and
//! `https://` for the Socket.IO consumer), through rustls on the `ring`
//! provider: the wheel links no libssl.
//!
//! Trust: Mozilla's root certificates as compiled into the `webpki-roots` crate
//! (the same on every machine, and present in slim containers without
//! `/etc/ssl`), plus the certificates of an optional CA file (PEM) for a private
//! or self-signed dashboard. A client certificate and key (PEM) may be given for
//! mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// What a consumer's TLS connections trust and present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Extra trusted CA certificates (PEM), added to the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    std::fs::metadata(path).map_err(|e| format!("{what} {shown:?}: cannot read it ({e})"))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {shown:?}: cannot read it ({e})"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {shown:?}: not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {shown:?}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it"
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    std::fs::metadata(path).map_err(|e| format!("client_key {shown:?}: cannot read it ({e})"))?;
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("client_key {shown:?}: no PEM private key in it ({e})"))
}

/// The configuration with no options (webpki roots, no client certificate,
/// ALPN `http/1.1`), built once.
pub fn default_client_config() -> Arc<ClientConfig> {
    static DEFAULT: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            Arc::new(
                client_config(&TlsOptions::default(), &[b"http/1.1"])
                    .expect("the default TLS configuration reads no file"),
            )
        })
        .clone()
}

/// Builds the rustls client configuration for `opts`, offering `alpn`
/// (e.g. `http/1.1`) if not empty. Errors name the file at fault.
pub fn client_config(opts: &TlsOptions, alpn: &[&[u8]]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &opts.ca_file {
        for cert in read_certs("ca_file", ca)? {
            roots.add(cert).map_err(|e| {
                format!(
                    "ca_file {:?}: not a usable CA certificate ({e})",
                    ca.display()
                )
            })?;
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_root_certificates(roots);
    let mut config = match (&opts.client_cert, &opts.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs("client_cert", cert)?;
            let key_der = read_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "client_cert {:?} / client_key {:?}: not a usable pair ({e})",
                    cert.display(),
                    key.display()
                )
            })?
        }
        (Some(_), None) => return Err("client_cert needs client_key (the PEM private key)".into()),
        (None, Some(_)) => {
            return Err("client_key needs client_cert (the PEM certificate chain)".into())
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsOptions {
        TlsOptions {
            ca_file: ca.map(Path::to_path_buf),
            client_cert: cert.map(Path::to_path_buf),
            client_key: key.map(Path::to_path_buf),
        }
    }

    #[test]
    fn the_default_trusts_the_webpki_roots() {
        let c = client_config(&TlsOptions::default(), &[b"http/1.1"]).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = client_config(&opts(Some(&missing), None, None), &[]).unwrap_err();
        assert!(
            err.starts_with("ca_file ") && err.contains("nope.pem"),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&opts(Some(&empty), None, None), &[]).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );

        let err = client_config(&opts(None, Some(&empty), None), &[]).unwrap_err();
        assert_eq!(err, "client_cert needs client_key (the PEM private key)");
        let err = client_config(&opts(None, None, Some(&empty)), &[]).unwrap_err();
        assert_eq!(
            err,
            "client_key needs client_cert (the PEM certificate chain)"
        );
    }
}
