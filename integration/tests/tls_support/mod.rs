//! Support code for the TLS tests (`tls.rs`, `h2_goaway.rs`, included with
//! `mod tls_support;`): self-signed test certificates generated with `rcgen`, the files
//! `hello_tls` reads them from, and a rustls client configuration that trusts them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use integration::replace_file;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The name the client asks for (SNI) and verifies the certificate against.
pub const SERVER_NAME: &str = "localhost";

/// A self-signed certificate for `localhost` and `127.0.0.1`, with its private key.
pub struct TestCert {
    /// A short name for messages (`A`, `B`), also in the certificate's common name.
    pub name: &'static str,
    cert_pem: String,
    key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// Generates a new key pair and a self-signed certificate whose common name is
    /// `actix-endless test certificate {name}`, so that two test certificates never share a
    /// subject (the client trusts both).
    pub fn generate(name: &'static str) -> TestCert {
        let mut params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
                .expect("valid subject alternative names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("actix-endless test certificate {name}"),
        );
        let key = rcgen::KeyPair::generate().expect("cannot generate a key pair");
        let cert = params
            .self_signed(&key)
            .expect("cannot self-sign the certificate");
        TestCert {
            name,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Where the server reads its certificate and key.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// `cert.pem` and `key.pem` in `dir`.
    pub fn in_dir(dir: &Path) -> CertFiles {
        CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Replaces both files with `cert`, each atomically (written aside, then renamed).
    pub fn install(&self, cert: &TestCert) {
        replace_file(&self.key, cert.key_pem.as_bytes(), 0o600);
        replace_file(&self.cert, cert.cert_pem.as_bytes(), 0o644);
    }

    /// The arguments that make `hello_tls` use these files.
    pub fn args(&self) -> [&str; 4] {
        fn utf8(path: &Path) -> &str {
            path.to_str().expect("temporary paths are UTF-8")
        }
        ["--tls-cert", utf8(&self.cert), "--tls-key", utf8(&self.key)]
    }
}

/// A client configuration (ring provider, default protocol versions) that trusts exactly the
/// `trusted` certificates.
pub fn client_config(trusted: &[&TestCert]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots
            .add(cert.der.clone())
            .unwrap_or_else(|e| panic!("cannot trust certificate {}: {e}", cert.name));
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
