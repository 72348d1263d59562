//! TLS: turns `rabbit.toml`'s `[tls]` section into rustls server configurations, and a
//! verified client certificate into the user name EXTERNAL logs in as.
//!
//! Two acceptors come out of [`Tls::load`]: one for AMQPS listeners, which asks for client
//! certificates as `verify_peer` / `fail_if_no_peer_cert` say, and one for the management
//! API over HTTPS, which never asks (browsers and `curl` would be refused). `main` builds
//! them at boot, before anything is bound, so a bad file stops the boot with one line
//! naming it; `server` and `http` accept with them; `connection` asks [`login_name`] once
//! per TLS connection. Nothing here runs per frame. The crypto provider is rustls' `ring`,
//! named explicitly, so the configuration never depends on a process-wide default.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{CertLoginFrom, ConfigError, Tls as TlsConfig};

/// The acceptors built from `[tls]`.
#[derive(Clone)]
pub struct Tls {
    /// For AMQPS listeners: client certificates as configured.
    pub amqp: TlsAcceptor,
    /// For the management API: no client certificates.
    pub management: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn invalid(key: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { key, problem }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Every certificate in a PEM file; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(key, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(key, format!("{}: unreadable PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads the certificate, key and CA files and builds both acceptors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key and the file: missing, unreadable, not PEM,
    /// a key that does not belong to the certificate, a CA file rustls refuses.
    pub fn load(cfg: &TlsConfig) -> Result<Self, ConfigError> {
        let (Some(certfile), Some(keyfile)) = (&cfg.certfile, &cfg.keyfile) else {
            return Err(invalid(
                "tls.certfile",
                "tls.certfile and tls.keyfile are both needed".into(),
            ));
        };
        let chain = certificates("tls.certfile", certfile)?;
        let key_pem = read("tls.keyfile", keyfile)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            invalid(
                "tls.keyfile",
                format!("{}: no usable PEM private key: {e}", keyfile.display()),
            )
        })?;
        let provider = provider();
        // Checked once here, so the builders below cannot fail on the pair.
        if let Err(e) =
            rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        {
            let problem = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "{}: the key does not match the certificate in {}",
                    keyfile.display(),
                    certfile.display()
                ),
                other => format!("{}: {other}", keyfile.display()),
            };
            return Err(invalid("tls.keyfile", problem));
        }
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = cfg
            .versions
            .iter()
            .filter_map(|v| match v.as_str() {
                "tlsv1.2" => Some(&rustls::version::TLS12),
                "tlsv1.3" => Some(&rustls::version::TLS13),
                _ => None,
            })
            .collect();
        let builder = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&versions)
                .map_err(|e| invalid("tls.versions", e.to_string()))
        };
        let cert_error =
            |e: rustls::Error| invalid("tls.certfile", format!("{}: {e}", certfile.display()));

        let amqp = if cfg.verify_peer {
            let Some(cafile) = &cfg.cacertfile else {
                return Err(invalid("tls.verify_peer", "needs tls.cacertfile".into()));
            };
            let mut roots = RootCertStore::empty();
            for ca in certificates("tls.cacertfile", cafile)? {
                roots
                    .add(ca)
                    .map_err(|e| invalid("tls.cacertfile", format!("{}: {e}", cafile.display())))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if cfg.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid("tls.cacertfile", format!("{}: {e}", cafile.display())))?;
            builder()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(cert_error)?
        } else {
            builder()?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(cert_error)?
        };
        let mut management = builder()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(cert_error)?;
        management.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            amqp: TlsAcceptor::from(Arc::new(amqp)),
            management: TlsAcceptor::from(Arc::new(management)),
        })
    }
}

/// The user name EXTERNAL logs in as, from a client certificate rustls has verified, or
/// `None` when the subject cannot be read or has no common name (asked for).
pub fn login_name(cert: &CertificateDer<'_>, from: CertLoginFrom) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = cert.subject();
    match from {
        CertLoginFrom::CommonName => subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertLoginFrom::DistinguishedName => Some(rfc4514(subject)),
    }
}

/// A subject as RFC 4514 writes it, as RabbitMQ's `ssl_cert_login_from =
/// distinguished_name` does: the last RDN of the sequence first (`CN=client,O=Org,C=US`
/// for a subject issued as C, O, CN), `+` between the values of one RDN, specials
/// escaped. A value that is not a string type is written `#` and its hex octets.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            match short_name(&oid.to_id_string()) {
                Some(n) => out.push_str(n),
                None => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match atv.as_str() {
                Ok(v) => escape_into(&mut out, v),
                Err(_) => {
                    out.push('#');
                    for b in atv.attr_value().data.iter() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

/// The attribute names RFC 4514 section 3 lists; others are written as dotted OIDs.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// RFC 4514 section 2.4: `"+,;<>\` anywhere, `#` or a space first, a space last, NUL.
fn escape_into(out: &mut String, v: &str) {
    let last = v.chars().count().saturating_sub(1);
    for (i, ch) in v.chars().enumerate() {
        match ch {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(ch);
            }
            ' ' if i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(ch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_are_escaped_as_rfc_4514_says() {
        let mut s = String::new();
        escape_into(&mut s, "#a, b+c ");
        assert_eq!(s, "\\#a\\, b\\+c\\ ");
        let mut s = String::new();
        escape_into(&mut s, " x");
        assert_eq!(s, "\\ x");
    }
}
