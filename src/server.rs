//! The actix-web server inside a serving process: built around the application with the
//! runtime's drain wrapper and listeners, observed until its first poll, and commanded
//! (pause, resume, stop) from the control thread.

use std::fmt;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Response, ServerHandle, Service, ServiceFactory};
use actix_web::HttpServer;

use crate::config::ServerSettings;
use crate::drain::{self, DrainApp, OnConnect};
use crate::error::{Error, Result};
use crate::listeners::{Listener, Socket};

/// An application's service factory, as `HttpServer::new` accepts it: what an actix-web `App`
/// is. Implemented for every type that qualifies; it only names the bounds once.
pub trait AppFactory<B>:
    ServiceFactory<
        actix_http::Request,
        Config = AppConfig,
        Error: Into<actix_web::Error> + 'static,
        InitError: fmt::Debug,
        Response: Into<Response<B>> + 'static,
        Service: Service<actix_http::Request, Future: 'static> + 'static,
    > + 'static
{
}

impl<S, B> AppFactory<B> for S where
    S: ServiceFactory<
            actix_http::Request,
            Config = AppConfig,
            Error: Into<actix_web::Error> + 'static,
            InitError: fmt::Debug,
            Response: Into<Response<B>> + 'static,
            Service: Service<actix_http::Request, Future: 'static> + 'static,
        > + 'static
{
}

/// What [`crate::Endless::ready_when`] stores: an async check that must pass before the
/// server accepts its first connection.
pub(crate) type Gate = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), String>>>>>;

/// What [`crate::Endless::configure`] stores: one step applied to the inner `HttpServer`.
pub(crate) type Configure<S, B> = Box<dyn FnOnce(drain::Server<S, B>) -> drain::Server<S, B>>;

/// A running server, before its first poll, and the descriptors of its acceptor's sockets.
pub(crate) struct Built {
    pub(crate) server: actix_web::dev::Server,
    pub(crate) acceptor_fds: Vec<RawFd>,
}

/// Builds and starts (but does not poll) the server for the registered application on
/// `listeners`. Must run inside an actix `System`.
pub(crate) fn build<S, B>(
    settings: &ServerSettings,
    configure: Vec<Configure<S, B>>,
    on_connect: Option<OnConnect>,
    listeners: &[Listener],
) -> Result<Built>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let make_app: fn() -> DrainApp<S, B> = drain::make_app::<S, B>;
    let mut server = HttpServer::new(make_app);
    if let Some(workers) = settings.workers {
        server = server.workers(workers);
    }
    if let Some(keep_alive) = settings.keep_alive {
        server = server.keep_alive(keep_alive);
    }
    if let Some(timeout) = settings.client_request_timeout {
        server = server.client_request_timeout(timeout);
    }
    if let Some(timeout) = settings.client_disconnect_timeout {
        server = server.client_disconnect_timeout(timeout);
    }
    if let Some(max) = settings.max_connections {
        server = server.max_connections(max);
    }
    if let Some(max) = settings.max_connection_rate {
        server = server.max_connection_rate(max);
    }
    for step in configure {
        server = step(server);
    }
    let bound = server.addrs();
    if !bound.is_empty() {
        let bound: Vec<String> = bound.iter().map(ToString::to_string).collect();
        return Err(Error::Config {
            setting: "configure",
            reason: format!(
                "HttpServer::bind or listen was called inside configure (on {}): the runtime owns \
the listening sockets and hands them to every generation; use Endless::bind, Endless::bind_uds \
or Endless::bind_rustls instead",
                bound.join(", ")
            ),
        });
    }
    server = server
        .on_connect(move |io, ext| drain::on_connect(on_connect.as_ref(), io, ext))
        .disable_signals();
    let mut acceptor_fds = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let fd;
        (server, fd) = listen(server, listener).map_err(|source| Error::Bind {
            addr: listener.socket.to_string(),
            source,
        })?;
        acceptor_fds.push(fd);
    }
    Ok(Built {
        server: server.run(),
        acceptor_fds,
    })
}

/// Hands one of our listening sockets to the server, keeping our own copy for the next
/// hand-over. Returns the descriptor the server got.
fn listen<S, B>(
    server: drain::Server<S, B>,
    listener: &Listener,
) -> std::io::Result<(drain::Server<S, B>, RawFd)>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let socket = listener.socket.try_clone()?;
    let fd = socket.fd().as_raw_fd();
    let server = match socket {
        #[cfg(feature = "rustls")]
        Socket::Tcp(l) if listener.tls.is_some() => {
            l.set_nonblocking(true)?;
            let config = listener
                .tls
                .as_deref()
                .cloned()
                .expect("checked by the guard");
            server.listen_rustls_0_23(l, config)
        }
        Socket::Tcp(l) => {
            l.set_nonblocking(true)?;
            server.listen(l)
        }
        Socket::Unix(l) => {
            l.set_nonblocking(true)?;
            server.listen_uds(l)
        }
    }?;
    Ok((server, fd))
}

/// Polls the server and calls `first` after its first poll, which is when actix starts the
/// workers (synchronously) and the acceptor.
pub(crate) struct NotifyFirstPoll<Fut, F> {
    server: Fut,
    first: Option<F>,
}

impl<Fut, F> NotifyFirstPoll<Fut, F> {
    pub(crate) fn new(server: Fut, first: F) -> Self {
        NotifyFirstPoll {
            server,
            first: Some(first),
        }
    }
}

impl<Fut: Future + Unpin, F: FnOnce() + Unpin> Future for NotifyFirstPoll<Fut, F> {
    type Output = Fut::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = Pin::new(&mut self.server).poll(cx);
        if polled.is_pending() {
            if let Some(first) = self.first.take() {
                first();
            }
        }
        polled
    }
}

/// The control thread's levers on the server.
pub(crate) struct Levers(pub(crate) ServerHandle);

impl Levers {
    /// Stops accepting; returns whether the server confirmed within `timeout`.
    pub(crate) fn pause(&self, timeout: Duration) -> bool {
        block_on_for(self.0.pause(), timeout)
    }

    /// Accepts again. `ServerHandle` sends when the method is called; the future it returns
    /// only awaits the confirmation, which the control loop does not need (it observes the
    /// effect through the connection counts and the server's end).
    pub(crate) fn resume(&self) {
        drop(self.0.resume());
    }

    /// Stops the server, closing every connection still open.
    pub(crate) fn stop(&self) {
        drop(self.0.stop(false));
    }
}

/// Drives `fut` to completion on this (non-async) thread, for at most `timeout`.
/// Returns whether it completed.
fn block_on_for<Fut: Future>(fut: Fut, timeout: Duration) -> bool {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if fut.as_mut().poll(&mut cx).is_ready() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::park_timeout(left);
    }
}

#[cfg(test)]
mod tests {
    use actix_service::IntoServiceFactory;
    use actix_web::body::BoxBody;

    use super::*;

    /// Builds a server for the application `_app` makes, with one `configure` step that binds.
    fn bind_in_configure<S, I>(_app: fn() -> I) -> Result<Built>
    where
        S: AppFactory<BoxBody>,
        I: IntoServiceFactory<S, actix_http::Request>,
    {
        let step: Configure<S, BoxBody> =
            Box::new(|server| server.bind("127.0.0.1:0").expect("binding a free port"));
        build(&ServerSettings::default(), vec![step], None, &[])
    }

    #[test]
    fn bind_inside_configure_is_an_error_naming_the_builder_method() {
        let result =
            actix_rt::System::new().block_on(async { bind_in_configure(actix_web::App::new) });
        let Err(Error::Config { setting, reason }) = result else {
            panic!("binding inside configure was accepted");
        };
        assert_eq!(setting, "configure");
        assert!(reason.contains("use Endless::bind"), "{reason}");
        assert!(
            reason.contains("127.0.0.1:"),
            "the address is not named: {reason}"
        );
    }
}
