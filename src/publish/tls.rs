//! rustls client configuration from `[mqtt.tls]`.

use std::path::Path;
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use super::TlsConfig;
use crate::config::ConfigError;

/// Builds the TLS client configuration; every problem names its config key (`key` is the
/// `[mqtt.tls]` table's path, e.g. `mqtt.tls`).
pub(crate) fn client_config(tls: &TlsConfig, key: &str) -> Result<Arc<ClientConfig>, ConfigError> {
    let roots = match &tls.ca_file {
        Some(path) => {
            let k = format!("{key}.ca_file");
            let mut roots = RootCertStore::empty();
            for cert in read_certs(&k, path)? {
                roots.add(cert).map_err(|e| {
                    ConfigError::invalid(&k, format!("{}: unusable CA: {e}", path.display()))
                })?;
            }
            roots
        }
        None => system_roots(&format!("{key}.ca_file"))?,
    };
    // An explicit provider: never depends on which crypto backends other crates enabled.
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError::invalid(key, e))?
    .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(private)) => {
            let certs = read_certs(&format!("{key}.client_cert_file"), cert)?;
            let k = format!("{key}.client_key_file");
            let bytes = read(&k, private)?;
            let private_key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                ConfigError::invalid(
                    &k,
                    format!("{}: no usable PEM private key: {e}", private.display()),
                )
            })?;
            builder
                .with_client_auth_cert(certs, private_key)
                .map_err(|e| ConfigError::invalid(&k, format!("{}: {e}", private.display())))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(key, format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(certs)
}

fn system_roots(key: &str) -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), |e| e.to_string());
        return Err(ConfigError::invalid(
            key,
            format!("not set, and the system's root certificates are unusable: {why}"),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let tls = TlsConfig {
            ca_file: Some(ca),
            client_cert_file: None,
            client_key_file: None,
        };
        let e = client_config(&tls, "mqtt.tls").unwrap_err().to_string();
        assert!(
            e.starts_with("mqtt.tls.ca_file: ") && e.ends_with("no PEM certificate found"),
            "{e}"
        );
    }

    #[test]
    fn system_roots_are_used_without_a_ca_file() {
        let tls = TlsConfig {
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        };
        // With Debian's ca-certificates installed the system roots are used; without them
        // (a minimal box) the error names the key. One outcome per box, asserted.
        let roots = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").is_file();
        match client_config(&tls, "mqtt.tls") {
            Ok(_) => assert!(roots, "a TLS config without any root certificate"),
            Err(e) => {
                assert!(!roots, "the system roots were not used: {e}");
                assert!(
                    e.to_string().starts_with("mqtt.tls.ca_file: not set"),
                    "{e}"
                );
            }
        }
    }
}
