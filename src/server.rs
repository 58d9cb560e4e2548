//! The actix-web server inside a serving process: built around the application with the
//! runtime's drain wrapper and listeners, observed until its first poll, and commanded
//! (pause, resume, stop) from the control thread.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::ServerHandle;
use actix_web::HttpServer;

use crate::config::ServerSettings;
use crate::drain::{self, AppFactory, DrainApp, OnConnect};
use crate::error::{Error, Result};
#[cfg(any(feature = "rustls", feature = "http2"))]
use crate::listeners::Serve;
use crate::listeners::{Listener, Socket};

/// What [`crate::Endless::ready_when`] stores: an async check that must pass before the
/// server accepts its first connection.
pub(crate) type Gate = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), String>>>>>;

/// What [`crate::Endless::configure`] stores: one step applied to the inner `HttpServer`.
pub(crate) type Configure<S, B> = Box<dyn FnOnce(drain::Server<S, B>) -> drain::Server<S, B>>;

/// The running servers (the `HttpServer` of the HTTP/1 TCP and Unix listeners, the runtime's
/// own server of the TLS and h2c listeners: `own_server.rs`), before their first poll, and the
/// descriptors of their acceptors' sockets.
pub(crate) struct Built {
    pub(crate) servers: Servers,
    pub(crate) acceptor_fds: Vec<RawFd>,
}

impl Built {
    /// The control thread's levers on every server.
    pub(crate) fn levers(&self) -> Levers {
        Levers(self.servers.running.iter().map(|s| s.handle()).collect())
    }
}

/// Runs until every server has stopped; then the first error, if any.
pub(crate) struct Servers {
    running: Vec<actix_web::dev::Server>,
    failed: Option<std::io::Error>,
}

impl Future for Servers {
    type Output = std::io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Servers { running, failed } = &mut *self;
        running.retain_mut(|server| match Pin::new(server).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(done) => {
                if let Err(e) = done {
                    failed.get_or_insert(e);
                }
                false
            }
        });
        if !running.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(failed.take().map_or(Ok(()), Err))
    }
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
    let on_connect = on_connect.map(std::sync::Arc::new);
    let user = on_connect.clone();
    server = server
        .on_connect(move |io, ext| drain::on_connect(user.as_deref(), io, ext))
        .disable_signals();
    let mut acceptor_fds = Vec::with_capacity(listeners.len());
    let mut plain = 0;
    // TLS and h2c listeners: the runtime's own server (`own_server.rs`).
    #[cfg(any(feature = "rustls", feature = "http2"))]
    let mut own = Vec::new();
    for listener in listeners {
        let bind_error = |source| Error::Bind {
            addr: listener.socket.to_string(),
            source,
        };
        let socket = listener.socket.try_clone().map_err(bind_error)?;
        acceptor_fds.push(socket.fd().as_raw_fd());
        match (socket, &listener.serve) {
            #[cfg(any(feature = "rustls", feature = "http2"))]
            (Socket::Tcp(l), serve) if !matches!(serve, Serve::Http1) => {
                own.push((l, serve.clone()));
            }
            (socket, _) => {
                server = listen(server, socket).map_err(bind_error)?;
                plain += 1;
            }
        }
    }
    let mut running = Vec::new();
    if plain > 0 {
        running.push(server.run());
    }
    #[cfg(any(feature = "rustls", feature = "http2"))]
    if !own.is_empty() {
        let addrs: Vec<String> = own
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        let server =
            crate::own_server::build::<S, B>(settings, on_connect, own).map_err(|source| {
                Error::Bind {
                    addr: addrs.join(", "),
                    source,
                }
            })?;
        running.push(server);
    }
    Ok(Built {
        servers: Servers {
            running,
            failed: None,
        },
        acceptor_fds,
    })
}

/// Hands a copy of one of our plain (TCP or Unix) listening sockets to the `HttpServer`; our
/// own copy stays for the next hand-over.
fn listen<S, B>(server: drain::Server<S, B>, socket: Socket) -> std::io::Result<drain::Server<S, B>>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    match socket {
        Socket::Tcp(l) => {
            l.set_nonblocking(true)?;
            server.listen(l)
        }
        Socket::Unix(l) => {
            l.set_nonblocking(true)?;
            server.listen_uds(l)
        }
    }
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

/// The control thread's levers on the servers.
pub(crate) struct Levers(Vec<ServerHandle>);

impl Levers {
    /// Stops accepting; returns whether every server confirmed within `timeout`.
    pub(crate) fn pause(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let pauses: Vec<_> = self.0.iter().map(ServerHandle::pause).collect();
        let mut confirmed = true;
        for pause in pauses {
            confirmed &= block_on_for(pause, deadline.saturating_duration_since(Instant::now()));
        }
        confirmed
    }

    /// Accepts again. `ServerHandle` sends when the method is called; the future it returns
    /// only awaits the confirmation, which the control loop does not need (it observes the
    /// effect through the connection counts and the servers' end).
    pub(crate) fn resume(&self) {
        for handle in &self.0 {
            drop(handle.resume());
        }
    }

    /// Stops the servers, closing every connection still open.
    pub(crate) fn stop(&self) {
        for handle in &self.0 {
            drop(handle.stop(false));
        }
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
