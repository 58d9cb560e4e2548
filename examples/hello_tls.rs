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

use std::io;

use actix_web::App;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn load_tls(cert: &str, key: &str) -> io::Result<rustls::ServerConfig> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(cert, &e))?;
    if chain.is_empty() {
        return Err(invalid(cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
    rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate and key", &e))
}

fn main() {
    common::init_logging();
    let options = common::Options::parse(&["--tls-cert", "--tls-key"]);
    let (Some(cert), Some(key)) = (options.extra("--tls-cert"), options.extra("--tls-key")) else {
        eprintln!("--tls-cert PATH and --tls-key PATH are required");
        std::process::exit(2);
    };
    let config = match load_tls(cert, key) {
        Ok(config) => config,
        Err(e) => {
            log::error!("cannot load the TLS certificate: {e}");
            return common::exit_on_error(Err(e));
        }
    };
    let mut endless =
        actix_endless::Endless::new(|| App::new().configure(hello_app::routes("tls")));
    for bind in &options.binds {
        endless = endless.bind_rustls(bind.as_str(), config.clone());
    }
    common::exit_on_error(common::configure(endless, &options).run());
}
