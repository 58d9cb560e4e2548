//! The runtime's own actix server, for the listeners whose connections may speak HTTP/2: TLS
//! (rustls with ALPN: `h2` with the `http2` feature, then `http/1.1`) and h2c (HTTP/2 with
//! prior knowledge on plain TCP, told from HTTP/1 by the connection preface). Their streams
//! are wrapped in [`GoAway`], which moves an HTTP/2 connection off a draining process
//! ([`crate::goaway`]).
//!
//! It is built from actix's own parts, as `HttpServer::listen_rustls_0_23` and
//! `listen_auto_h2c` build their services (actix-tls's rustls acceptor, then actix-http's
//! `HttpService` around the application), with one difference: the connection's stream is
//! wrapped before actix-http sees it. `HttpServer` cannot take such a service, so these
//! listeners get their own actix server, with the builder's settings ([`ServerSettings`]);
//! `Endless::configure` tunes only the `HttpServer` of the other listeners.

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpServiceBuilder, Protocol};
use actix_rt::net::TcpStream;
use actix_server::Server;
use actix_service::{fn_service, map_config, ServiceFactory, ServiceFactoryExt as _};
#[cfg(feature = "rustls")]
use actix_tls::accept::{
    rustls_0_23::{Acceptor, TlsStream},
    TlsError,
};
use actix_web::body::MessageBody;
use actix_web::dev::AppConfig;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::ServerSettings;
use crate::drain::{self, AppFactory, OnConnect};
use crate::goaway::GoAway;
use crate::listeners::Serve;

/// actix-web's defaults for what [`ServerSettings`] leaves unset.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds and starts (but does not poll) one server for `listeners`, each a TCP socket served
/// with TLS or as h2c. Must run inside an actix `System`.
pub(crate) fn build<S, B>(
    settings: &ServerSettings,
    on_connect: Option<Arc<OnConnect>>,
    listeners: Vec<(TcpListener, Serve)>,
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
    for (listener, serve) in listeners {
        let addr = listener.local_addr()?;
        let settings = settings.clone();
        let on_connect = on_connect.clone();
        builder = match serve {
            #[cfg(feature = "rustls")]
            Serve::Tls(tls) => {
                let config = with_alpn(&tls);
                builder.listen(format!("actix-endless-tls-{addr}"), listener, move || {
                    tls_service::<S, B>(&settings, on_connect.clone(), config.clone(), addr)
                })?
            }
            #[cfg(feature = "http2")]
            Serve::AutoH2c => {
                builder.listen(format!("actix-endless-h2c-{addr}"), listener, move || {
                    h2c_service::<S, B>(&settings, on_connect.clone(), addr)
                })?
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(io::Error::other(format!(
                    "{addr}: only TLS and h2c listeners are served here"
                )))
            }
        };
    }
    Ok(builder.run())
}

/// actix-http's HTTP/1.1 and HTTP/2 service for connections whose stream is `T` (wrapped in
/// [`GoAway`]), into the application inside the runtime's drain wrapper. `secure`: what the
/// application's `ConnectionInfo` says about the scheme.
fn http_service<T, S, B>(
    settings: &ServerSettings,
    on_connect: Option<Arc<OnConnect>>,
    addr: SocketAddr,
    secure: bool,
) -> impl ServiceFactory<
    (GoAway<T>, Protocol, Option<SocketAddr>),
    Config = (),
    Response = (),
    Error = DispatchError,
    InitError = (),
>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let host = addr.to_string();
    let app = drain::make_app::<S, B>().map_err(|e: S::Error| {
        let e: actix_web::Error = e.into();
        e.error_response()
    });
    // The hidden constructor is the only public way to build this configuration, which
    // `HttpServer` builds through a crate-private one.
    let app = map_config(app, move |()| {
        AppConfig::__priv_test_new(secure, host.clone(), addr)
    });
    HttpServiceBuilder::<GoAway<T>, _>::default()
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
        .on_connect_ext(move |io: &GoAway<T>, ext: &mut _| {
            // The application's callback sees the stream `HttpServer` would give it.
            drain::on_connect(on_connect.as_deref(), io.get_ref() as &dyn Any, ext)
        })
        .finish(app)
}

/// A TLS listener's per-worker service: handshake, ALPN, then HTTP/1.1 or HTTP/2.
#[cfg(feature = "rustls")]
fn tls_service<S, B>(
    settings: &ServerSettings,
    on_connect: Option<Arc<OnConnect>>,
    config: rustls::ServerConfig,
    addr: SocketAddr,
) -> impl ServiceFactory<
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
    let http = http_service::<TlsStream<TcpStream>, S, B>(settings, on_connect, addr, true)
        .map_err(TlsError::Service);
    let mut acceptor = Acceptor::new(config);
    if let Some(timeout) = settings.tls_handshake_timeout {
        acceptor.set_handshake_timeout(timeout);
    }
    acceptor
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

/// An h2c listener's per-worker service: HTTP/2 if the connection starts with HTTP/2's
/// preface (RFC 9113 §3.4; the part of it actix-http's `tcp_auto_h2c` peeks at), otherwise
/// HTTP/1.x.
#[cfg(feature = "http2")]
fn h2c_service<S, B>(
    settings: &ServerSettings,
    on_connect: Option<Arc<OnConnect>>,
    addr: SocketAddr,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = DispatchError, InitError = ()>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    const PREFACE: &[u8] = b"PRI * HTTP/2";
    fn_service(|io: TcpStream| async move {
        let mut start = [0; PREFACE.len()];
        io.peek(&mut start).await?;
        let http2 = start == PREFACE;
        let peer = io.peer_addr().ok();
        let protocol = if http2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        Ok::<_, DispatchError>((GoAway::new(io, http2), protocol, peer))
    })
    .and_then(http_service::<TcpStream, S, B>(
        settings, on_connect, addr, false,
    ))
}

/// `tls` with the protocols this server speaks offered first, as actix-http does: `h2` (with
/// the `http2` feature), `http/1.1`, then the configuration's own.
#[cfg(feature = "rustls")]
fn with_alpn(tls: &crate::listeners::TlsConfig) -> rustls::ServerConfig {
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
