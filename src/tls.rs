//! The server of the TLS listeners: rustls with ALPN (`h2` with the `http2` feature, then
//! `http/1.1`), and the GOAWAY that moves an HTTP/2 connection off a draining process
//! ([`crate::goaway`]).
//!
//! It is built from actix's own parts, as `HttpServer::listen_rustls_0_23` builds its service
//! (actix-tls's rustls acceptor, then actix-http's `HttpService` around the application), with
//! one difference: the decrypted stream is wrapped in [`GoAway`] before actix-http sees it.
//! `HttpServer` cannot take such a service, so these listeners get their own actix server,
//! with the builder's settings ([`ServerSettings`]); `Endless::configure` tunes only the
//! `HttpServer` of the plain TCP and Unix listeners.

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpServiceBuilder, Protocol};
use actix_rt::net::TcpStream;
use actix_server::Server;
use actix_service::{fn_service, map_config, ServiceFactoryExt as _};
use actix_tls::accept::rustls_0_23::{Acceptor, TlsStream};
use actix_tls::accept::TlsError;
use actix_web::body::MessageBody;
use actix_web::dev::AppConfig;

use crate::config::ServerSettings;
use crate::drain::{self, AppFactory, OnConnect};
use crate::goaway::GoAway;
use crate::listeners::TlsConfig;

/// actix-web's defaults for what [`ServerSettings`] leaves unset.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection's stream as the application's HTTP service sees it.
type Stream = GoAway<TlsStream<TcpStream>>;

/// Builds and starts (but does not poll) one server for `listeners`, each a TCP socket with
/// its TLS configuration. Must run inside an actix `System`.
pub(crate) fn build<S, B>(
    settings: &ServerSettings,
    on_connect: Option<Arc<OnConnect>>,
    listeners: Vec<(TcpListener, TlsConfig)>,
) -> io::Result<Server>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let mut builder = Server::build().disable_signals();
    if let Some(workers) = settings.workers {
        builder = builder.workers(workers);
    }
    if let Some(max) = settings.max_connections {
        builder = builder.max_concurrent_connections(max);
    }
    for (listener, tls) in listeners {
        let addr = listener.local_addr()?;
        let config = with_alpn(&tls);
        let settings = settings.clone();
        let on_connect = on_connect.clone();
        builder = builder.listen(format!("actix-endless-tls-{addr}"), listener, move || {
            service::<S, B>(&settings, on_connect.clone(), config.clone(), addr)
        })?;
    }
    Ok(builder.run())
}

/// The per-worker service of one listener: TLS handshake, ALPN, the GOAWAY wrapper for h2,
/// then HTTP/1.1 or HTTP/2 into the application (inside the runtime's drain wrapper).
fn service<S, B>(
    settings: &ServerSettings,
    on_connect: Option<Arc<OnConnect>>,
    config: rustls::ServerConfig,
    addr: SocketAddr,
) -> impl actix_service::ServiceFactory<
    TcpStream,
    Config = (),
    Response = (),
    Error = TlsError<io::Error, DispatchError>,
    InitError = (),
>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let host = addr.to_string();
    let app = drain::make_app::<S, B>().map_err(|e: S::Error| {
        let e: actix_web::Error = e.into();
        e.error_response()
    });
    // The hidden constructor is the only public way to say "HTTPS on this address", which
    // `HttpServer` says through a crate-private one.
    let app = map_config(app, move |()| {
        AppConfig::__priv_test_new(true, host.clone(), addr)
    });
    let http = HttpServiceBuilder::<Stream, _>::default()
        .keep_alive(settings.keep_alive.unwrap_or_default())
        .client_request_timeout(
            settings
                .client_request_timeout
                .unwrap_or(CLIENT_REQUEST_TIMEOUT),
        )
        .client_disconnect_timeout(
            settings
                .client_disconnect_timeout
                .unwrap_or(CLIENT_DISCONNECT_TIMEOUT),
        )
        .local_addr(addr)
        .on_connect_ext(move |io: &Stream, ext: &mut _| {
            // The application's callback sees actix-tls's stream, as with `HttpServer`.
            drain::on_connect(on_connect.as_deref(), io.get_ref() as &dyn Any, ext)
        })
        .finish(app)
        .map_err(TlsError::Service);
    Acceptor::new(config)
        .map_err(TlsError::into_service_error)
        .and_then(fn_service(|io: TlsStream<TcpStream>| async move {
            let http2 = io
                .get_ref()
                .1
                .alpn_protocol()
                .is_some_and(|proto| proto == b"h2");
            // HTTP/2 writes a response as small frames in separate TLS records: without
            // TCP_NODELAY the second waits for the client's delayed ACK (40 ms).
            let _ = io.get_ref().0.set_nodelay(true);
            let peer = io.get_ref().0.peer_addr().ok();
            let protocol = if http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            Ok::<_, TlsError<io::Error, DispatchError>>((GoAway::new(io, http2), protocol, peer))
        }))
        .and_then(http)
}

/// `tls` with the protocols this server speaks offered first, as actix-http does: `h2` (with
/// the `http2` feature), `http/1.1`, then the configuration's own.
fn with_alpn(tls: &TlsConfig) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::clone(tls);
    let mut protocols = Vec::new();
    if cfg!(feature = "http2") {
        protocols.push(b"h2".to_vec());
    }
    protocols.push(b"http/1.1".to_vec());
    protocols.append(&mut config.alpn_protocols);
    config.alpn_protocols = protocols;
    config
}
