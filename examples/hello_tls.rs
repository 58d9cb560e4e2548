//! The `hello` demo over HTTPS (`--features rustls`). The certificate and key are read when
//! each generation starts, so replacing the files and sending `SIGHUP` rotates them; a broken
//! new certificate makes the new generation fail to start and the old one serves on.
//!
//! ```text
//! cargo run --features rustls --example hello_tls -- \
//!     --bind 127.0.0.1:8443 --tls-cert cert.pem --tls-key key.pem --pid-file tls.pid
//! ```

// Shared with the plain demos; this one binds its own (TLS) addresses and uses only the routes.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "common/hello_app.rs"]
mod hello_app;
#[path = "common/streams.rs"]
mod streams;

use std::io;
use std::path::{Path, PathBuf};

use actix_web::App;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The flags of this example besides the common ones.
#[derive(Debug, clap::Args)]
struct Own {
    /// PEM file with the certificate chain, leaf first (read by every generation).
    #[arg(long, value_name = "PATH", env = "ENDLESS_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM file with the private key (read by every generation).
    #[arg(long, value_name = "PATH", env = "ENDLESS_TLS_KEY")]
    tls_key: PathBuf,
    /// How long a client has to complete the TLS handshake (default 3s).
    #[arg(long, value_name = "DURATION", env = "ENDLESS_TLS_HANDSHAKE_TIMEOUT", value_parser = common::parse_duration)]
    tls_handshake_timeout: Option<std::time::Duration>,
}

fn load_tls(cert: &Path, key: &Path) -> io::Result<rustls::ServerConfig> {
    let invalid = |what: &dyn std::fmt::Display, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(&cert.display(), &e))?;
    if chain.is_empty() {
        return Err(invalid(&cert.display(), &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(&key.display(), &e))?;
    rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&"TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&"certificate and key", &e))
}

fn main() {
    common::init_logging();
    let (options, own) = common::Options::parse_with::<Own>(
        "The hello demo over HTTPS: the certificate and key are read by every generation, so \
replacing the files and sending SIGHUP rotates them.",
    );
    let config = match load_tls(&own.tls_cert, &own.tls_key) {
        Ok(config) => config,
        Err(e) => {
            log::error!("cannot load the TLS certificate: {e}");
            return common::exit_on_error(Err(e));
        }
    };
    let mut endless =
        actix_endless::Endless::new(|| App::new().configure(hello_app::routes("tls")));
    for bind in &options.binds {
        endless = match endless.bind_rustls(bind.as_str(), config.clone()) {
            Ok(endless) => endless,
            Err(e) => {
                log::error!("cannot listen on {bind}: {e}");
                return common::exit_on_error(Err(e));
            }
        };
    }
    if let Some(timeout) = own.tls_handshake_timeout {
        endless = endless.tls_handshake_timeout(timeout);
    }
    common::exit_on_error(common::configure(endless, &options).run_blocking());
}
