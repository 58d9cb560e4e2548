//! The public builder, [`Endless`], and its [`Handle`].

use std::fmt;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::Extensions;

use crate::config::{Bind, HammerTime, ProcessMode, ServerSettings, Settings};
use crate::drain::{AppFactory, OnConnect, Server};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hooks::{
    DrainEnd, DrainStart, HookStage, Hooks, ServingEvent, SignalEvent, UpgradeEvent,
};
use crate::listeners::Serve;
use crate::runtime::{self, App};
use crate::server::{Configure, Gate};
use crate::signals::{Action, Signal};

/// A cheap, cloneable handle that asks the runtime to act, as the signals do.
///
/// Commands sent through a handle run the same actions as the signals but not the signal
/// hooks. Each method returns `false` if the runtime has already finished.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Event>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    /// Starts an upgrade, as `SIGHUP` does.
    pub fn upgrade(&self) -> bool {
        self.tx.send(Event::Command(Action::Upgrade)).is_ok()
    }

    /// Upgrades and waits until the new generation serves: its pid and generation, or
    /// [`Error::UpgradeFailed`] with the reason (the new build exited, was not ready in
    /// time, failed its readiness gate, or an upgrade was already in progress). It resolves
    /// when the new generation reports ready, so a request handler of this (old) generation
    /// can await it; a rollback within the commit window comes later and is reported on the
    /// control socket. In a master's worker it is a failure (the master upgrades: use its
    /// control socket).
    pub async fn upgrade_and_wait(&self) -> Result<crate::ctl::Upgraded> {
        let (reply, answers) = channel();
        self.tx
            .send(Event::Control(crate::control::Request::Upgrade(reply)))
            .map_err(|_| Error::UpgradeFailed {
                reason: "the runtime has finished".to_owned(),
            })?;
        actix_rt::task::spawn_blocking(move || crate::control::outcome(answers))
            .await
            .unwrap_or_else(|e| {
                Err(Error::UpgradeFailed {
                    reason: format!("waiting for the outcome: {e}"),
                })
            })
    }

    /// Starts a graceful stop, as `SIGTERM` does (a second call forces the close).
    pub fn graceful_stop(&self) -> bool {
        self.tx.send(Event::Command(Action::GracefulStop)).is_ok()
    }

    /// Closes every connection now, as `SIGUSR2` does.
    pub fn force_stop(&self) -> bool {
        self.tx.send(Event::Command(Action::ForceStop)).is_ok()
    }
}

/// The runtime builder: an actix-web application plus how to serve, upgrade and stop it.
///
/// | option | default |
/// |---|---|
/// | [`bind`](Self::bind) | none: at least one address, unless sockets are inherited |
/// | [`pid_file`](Self::pid_file) | none |
/// | [`hammer_time`](Self::hammer_time) | 60 s |
/// | [`upgrade_timeout`](Self::upgrade_timeout) | 30 s |
/// | [`idle_close_after`](Self::idle_close_after) | the [`keep_alive`](Self::keep_alive) timeout (actix-web: 5 s) |
/// | [`backlog`](Self::backlog) | 4096 |
/// | [`executable`](Self::executable) | the path this process was started as |
/// | [`workers`](Self::workers), [`keep_alive`](Self::keep_alive), ... | actix-web's defaults |
/// | [`configure`](Self::configure) | nothing: actix-web's defaults |
#[must_use = "an Endless builder does nothing until `.run().await` (or `.run_blocking()`) is called"]
pub struct Endless<F, I, S, B>
where
    F: Fn() -> I + Send + 'static,
    I: IntoServiceFactory<S, actix_http::Request>,
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    factory: F,
    binds: Vec<Bind>,
    settings: Settings,
    server: ServerSettings,
    hooks: Hooks,
    configure: Vec<Configure<S, B>>,
    on_connect: Option<OnConnect>,
    ready_gate: Option<Gate>,
    setup: Option<Gate>,
    events: (Sender<Event>, Receiver<Event>),
    _types: std::marker::PhantomData<fn() -> I>,
}

impl<F, I, S, B> Endless<F, I, S, B>
where
    F: Fn() -> I + Send + 'static,
    I: IntoServiceFactory<S, actix_http::Request>,
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    /// A runtime for the application `factory` (what `HttpServer::new` takes).
    pub fn new(factory: F) -> Self {
        Endless {
            factory,
            binds: Vec::new(),
            settings: Settings::default(),
            server: ServerSettings::default(),
            hooks: Hooks::default(),
            configure: Vec::new(),
            on_connect: None,
            ready_gate: None,
            setup: None,
            events: channel(),
            _types: std::marker::PhantomData,
        }
    }

    /// Serves on a TCP address, as `HttpServer::bind` does: anything that resolves to socket
    /// addresses, such as `"127.0.0.1:8080"`, `("0.0.0.0", 8080)` or `"[::]:443"`; may be called
    /// more than once. A name that resolves to several addresses serves on all of them.
    ///
    /// The address is resolved now: an address that cannot be resolved, or resolves to
    /// nothing, is an error here. The socket itself is created when the runtime starts
    /// ([`run`](Self::run)), which reports bind errors naming the address; in a new generation
    /// it is the socket inherited for that address, never a new one.
    pub fn bind(mut self, addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        self.binds.push(Bind::tcp(addr, Serve::Http1)?);
        Ok(self)
    }

    /// Serves HTTP/1.x and HTTP/2 with prior knowledge (h2c) on a TCP address (requires the
    /// `http2` feature), as `HttpServer::bind_auto_h2c` does; the address is resolved as by
    /// [`bind`](Self::bind). A drain sends each h2c connection a GOAWAY, as for HTTP/2 over
    /// TLS. Served by the runtime's own actix server, like `bind_rustls` (see
    /// [`configure`](Self::configure)).
    #[cfg(feature = "http2")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http2")))]
    pub fn bind_auto_h2c(mut self, addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        self.binds.push(Bind::tcp(addr, Serve::AutoH2c)?);
        Ok(self)
    }

    /// Serves HTTPS on a TCP address with `config` (requires the `rustls` feature), as
    /// `HttpServer::bind_rustls_0_23` does; the address is resolved as by [`bind`](Self::bind).
    /// Each generation is configured by the code that starts it, so loading the certificate
    /// and key from files before calling this makes `SIGHUP` rotate them; a new generation
    /// that cannot load them fails to start and the old one serves on.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn bind_rustls(
        mut self,
        addr: impl ToSocketAddrs,
        config: rustls::ServerConfig,
    ) -> std::io::Result<Self> {
        self.binds
            .push(Bind::tcp(addr, Serve::Tls(std::sync::Arc::new(config)))?);
        Ok(self)
    }

    /// Serves on a Unix domain socket at `path` (mixed freely with TCP), as
    /// `HttpServer::bind_uds` does. The socket is handed over on upgrades like any other; the
    /// runtime never unlinks it, and a stale socket file left by a dead process is replaced
    /// at the first bind. The socket is created when the runtime starts, which reports errors.
    pub fn bind_uds(mut self, path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a Unix socket path must not be empty",
            ));
        }
        self.binds.push(Bind::unix(path.to_path_buf()));
        Ok(self)
    }

    /// Whether upgrades re-execute this process ([`ProcessMode::Reexec`], the default) or run
    /// under a stable-pid master ([`ProcessMode::Master`]).
    pub fn process_mode(mut self, mode: ProcessMode) -> Self {
        self.settings.mode = mode;
        self
    }

    /// A commit window after each upgrade (off by default): once the new generation reported
    /// ready, the old one stops accepting and drains as usual, but stays alive, paused, with
    /// the listening sockets until `window` has passed since the hand-over (or hammer time
    /// comes first). If the new generation dies within it, the old one takes over again and
    /// the upgrade's outcome on the control socket is `failed` ("rolled back"). Re-exec mode
    /// only: in [`ProcessMode::Master`] the master replaces a worker that dies at any time.
    pub fn commit_after(mut self, window: Duration) -> Self {
        self.settings.commit_after = Some(window);
        self
    }

    /// Answers deploy scripts on a Unix socket at `path` (created with mode 0600; only its
    /// owner and root may use it): `upgrade` streams the upgrade's progress and its outcome,
    /// `status` and `stop` do what they say (see [`crate::ctl`] for the client, and the
    /// README for the protocol). The serving generation answers (in
    /// [`ProcessMode::Master`], the master); the socket is handed over on upgrades.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.control_socket = Some(path.into());
        self
    }

    /// Serves on listening descriptors passed without `LISTEN_PID`, as `systemfd --no-pid`
    /// passes them in the development loop actix-web's docs recommend
    /// (`systemfd --no-pid -s http::8080 -- cargo watch -x run`). Off by default: systemd's
    /// protocol says such descriptors are not ours, and when some are passed but ignored the
    /// start-up error says so.
    pub fn adopt_unclaimed_fds(mut self) -> Self {
        self.settings.unclaimed = crate::listeners::Unclaimed::Adopt;
        self
    }

    /// The permission bits given to Unix domain sockets this runtime creates, e.g. `0o660`
    /// (default: as the umask leaves them).
    pub fn unix_socket_mode(mut self, mode: u32) -> Self {
        self.settings.unix_socket_mode = Some(mode);
        self
    }

    /// Writes this process's pid to `path` once it serves (atomically: a temporary file and a
    /// rename). After an upgrade the new process rewrites it before it reports ready; at the
    /// final exit the file is removed if, and only if, it still names this process.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.pid_file = Some(path.into());
        self
    }

    /// How long a graceful drain (after an upgrade or on `SIGTERM`) may last before the
    /// remaining connections are forced closed. A `Duration` or [`HammerTime::Never`].
    pub fn hammer_time(mut self, hammer_time: impl Into<HammerTime>) -> Self {
        self.settings.hammer_time = hammer_time.into();
        self
    }

    /// How long a new process has to report ready before the upgrade counts as failed, the new
    /// process is killed and this one serves on.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.settings.upgrade_timeout = timeout;
        self
    }

    /// During a drain, once no request has been in flight for this long, the connections left
    /// are idle keep-alive connections and are closed. Every connection that does send a
    /// request during the drain gets `Connection: close` on its response instead.
    ///
    /// The default is the [`keep_alive`](Self::keep_alive) timeout (actix-web's 5 s when it
    /// is not set, or set to `KeepAlive::Os` or in [`configure`](Self::configure)): a drain
    /// closes an idle connection no sooner than normal operation would, so a proxy whose own
    /// idle timeout is shorter (nginx's upstream `keepalive_timeout 4s`) always closes first and
    /// never sends a request on a connection the server is closing. A shorter value lets an old
    /// generation with idle clients exit sooner, at the cost of that race: a client sending on
    /// the connection at the moment it closes sees it fail (idempotent requests are retried by
    /// most clients and proxies; a `POST` behind nginx gets a 502).
    pub fn idle_close_after(mut self, idle: Duration) -> Self {
        self.settings.idle_close_after = Some(idle);
        self
    }

    /// The listen backlog of sockets this runtime binds (inherited sockets keep theirs).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.settings.backlog = backlog;
        self
    }

    /// The program an upgrade starts, instead of the path this process was started as.
    /// A relative path is taken from the working directory at start-up.
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.executable = Some(path.into());
        self
    }

    /// How long a graceful drain may last: an alias of [`hammer_time`](Self::hammer_time)
    /// under `HttpServer`'s name for it.
    pub fn shutdown_timeout(self, timeout: Duration) -> Self {
        self.hammer_time(timeout)
    }

    /// The number of worker threads, as `HttpServer::workers` (default: one per physical
    /// core). Zero is an error reported by [`run`](Self::run).
    pub fn workers(mut self, workers: usize) -> Self {
        self.server.workers = Some(workers);
        self
    }

    /// How long an idle keep-alive connection is kept, as `HttpServer::keep_alive`.
    pub fn keep_alive(mut self, keep_alive: impl Into<actix_web::http::KeepAlive>) -> Self {
        self.server.keep_alive = Some(keep_alive.into());
        self
    }

    /// How long a client has to send a request's head, as `HttpServer::client_request_timeout`.
    pub fn client_request_timeout(mut self, timeout: Duration) -> Self {
        self.server.client_request_timeout = Some(timeout);
        self
    }

    /// How long a client has to close its side of a closing connection, as
    /// `HttpServer::client_disconnect_timeout`.
    pub fn client_disconnect_timeout(mut self, timeout: Duration) -> Self {
        self.server.client_disconnect_timeout = Some(timeout);
        self
    }

    /// How long a client has to complete the TLS handshake on a `bind_rustls` listener
    /// (requires the `rustls` feature), as `HttpServer::tls_handshake_timeout`; by default
    /// actix-tls's 3 s. A connection still handshaking then is closed.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.server.tls_handshake_timeout = Some(timeout);
        self
    }

    /// The most connections each worker serves at once, as `HttpServer::max_connections`.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.server.max_connections = Some(max);
        self
    }

    /// The most TLS handshakes each worker runs at once, as
    /// `HttpServer::max_connection_rate`.
    pub fn max_connection_rate(mut self, max: usize) -> Self {
        self.server.max_connection_rate = Some(max);
        self
    }

    /// Tunes the inner `HttpServer` further, e.g.
    /// `.configure(|server| server.server_hostname("example.com"))`. Calls compose in order,
    /// after the builder's own settings ([`workers`](Self::workers) and the like), so a
    /// setting made here wins.
    ///
    /// The `HttpServer` serves the [`bind`](Self::bind) and [`bind_uds`](Self::bind_uds)
    /// listeners. TLS and h2c listeners (`bind_rustls`, `bind_auto_h2c`) are served by the
    /// runtime's own actix server, which writes the HTTP/2 GOAWAY of a drain into each
    /// connection's stream; it takes the builder's settings (`workers`, `keep_alive`, the
    /// client timeouts, `max_connections`, `max_connection_rate`,
    /// `tls_handshake_timeout`) but not what is set here.
    ///
    /// Some of `HttpServer` belongs to the runtime:
    ///
    /// - listening sockets: `HttpServer::bind`, `listen` and their TLS and Unix variants make
    ///   the start fail with [`Error::Config`] naming this method; use [`bind`](Self::bind),
    ///   [`bind_uds`](Self::bind_uds) or `bind_rustls`;
    /// - `on_connect` and signal handling are replaced by the runtime's (no error: they are
    ///   set after these calls); use [`on_connect`](Self::on_connect) and [`hook`](Self::hook);
    /// - `HttpServer::backlog` set here cannot be detected and has no effect, since the
    ///   runtime creates the sockets itself: use [`backlog`](Self::backlog);
    /// - `HttpServer::shutdown_timeout` set here cannot be detected and has no effect on a
    ///   drain, which the runtime bounds itself: use [`hammer_time`](Self::hammer_time) (or
    ///   its alias [`shutdown_timeout`](Self::shutdown_timeout)).
    pub fn configure(
        mut self,
        configure: impl FnOnce(Server<S, B>) -> Server<S, B> + 'static,
    ) -> Self {
        self.configure.push(Box::new(configure));
        self
    }

    /// An async check that must pass before this generation accepts its first connection,
    /// e.g. a database ping or a cache warm-up. It runs in every generation after the
    /// application's setup, bounded by the [`upgrade_timeout`](Self::upgrade_timeout). When it
    /// fails or times out in a new generation, that generation exits without having served a
    /// request, the upgrade fails with the check's error in the old generation's log, and the
    /// old generation serves on. At first start a failing check is a start-up error.
    pub fn ready_when<Fut, E>(mut self, check: impl FnOnce() -> Fut + 'static) -> Self
    where
        Fut: std::future::Future<Output = std::result::Result<(), E>> + 'static,
        E: fmt::Display,
    {
        self.ready_gate = Some(Box::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }));
        self
    }

    /// A per-connection callback, as `HttpServer::on_connect` (which the runtime uses itself).
    pub fn on_connect(
        mut self,
        f: impl Fn(&dyn std::any::Any, &mut Extensions) + Send + Sync + 'static,
    ) -> Self {
        self.on_connect = Some(Box::new(f));
        self
    }

    /// Runs `hook` before ([`HookStage::Pre`]) or after ([`HookStage::Post`]) the runtime acts
    /// on `signal`. Hooks run on the runtime's control thread, in registration order; a slow
    /// hook delays the handling of later signals.
    pub fn hook(
        mut self,
        signal: Signal,
        stage: HookStage,
        hook: impl Fn(&SignalEvent) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.add_signal(signal, stage, Box::new(hook));
        self
    }

    /// Runs `hook` in every generation once it serves (after its pid file is written and it
    /// has reported ready).
    pub fn on_serving(mut self, hook: impl Fn(&ServingEvent) + Send + Sync + 'static) -> Self {
        self.hooks.serving.push(Box::new(hook));
        self
    }

    /// Runs `hook` in the old process when the new one has reported ready, before the drain.
    pub fn on_upgrade_ready(
        mut self,
        hook: impl Fn(&UpgradeEvent) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.upgrade_ready.push(Box::new(hook));
        self
    }

    /// Runs `hook` when this process starts draining: after it handed over to a new
    /// generation, or on a stop. (Handlers can await the same moment: [`crate::Draining`].)
    pub fn on_drain_start(mut self, hook: impl Fn(&DrainStart) + Send + Sync + 'static) -> Self {
        self.hooks.drain_start.push(Box::new(hook));
        self
    }

    /// Runs `hook` when a drain ends, with its duration and how its connections ended (on
    /// their own, closed idle, or cut at hammer time or by a forced stop).
    pub fn on_drain_end(mut self, hook: impl Fn(&DrainEnd) + Send + Sync + 'static) -> Self {
        self.hooks.drain_end.push(Box::new(hook));
        self
    }

    /// Runs `hook` in the old process when an upgrade fails (it serves on).
    pub fn on_upgrade_failed(mut self, hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.hooks.upgrade_failed.push(Box::new(hook));
        self
    }

    /// A handle to command the runtime from code, e.g. from an admin endpoint.
    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.events.0.clone(),
        }
    }

    /// Serves until this process is done: stopped by a signal or a [`Handle`], or drained after
    /// handing over to a new generation. The drop-in for `HttpServer::run`: call it from
    /// `#[actix_web::main]` (or `#[tokio::main]`, as actix-web allows) and await it; it runs
    /// on the caller's runtime. Fails if the runtime cannot start (the error is logged too,
    /// with the pid and generation); [`Error`] converts into the `std::io::Error` returned.
    ///
    /// On `SIGHUP` the new generation runs `main` from the start, so whatever `main` does
    /// before this call (connecting to a database, say) runs again in it before it reports
    /// ready. When that fails, let [`setup_failed`](crate::setup_failed) tell the old
    /// generation why; see [`with_setup`](Self::with_setup) for setup that must never run in
    /// a stable-pid master.
    pub async fn run(self) -> std::io::Result<()> {
        runtime::run(self.into_app()).await.map_err(Into::into)
    }

    /// [`run`](Self::run) for a synchronous `main`: blocks the calling thread, serving on an
    /// actix system of its own, until this process is done.
    pub fn run_blocking(self) -> Result<()> {
        runtime::run_blocking(self.into_app())
    }

    fn into_app(self) -> App<S, B> {
        let factory = self.factory;
        App {
            factory: Box::new(move || factory().into_factory()),
            binds: self.binds,
            settings: self.settings.resolve_idle_close(&self.server),
            server: self.server,
            hooks: self.hooks,
            configure: self.configure,
            on_connect: self.on_connect,
            ready_gate: self.ready_gate,
            setup: self.setup,
            events: self.events,
        }
    }
}

/// The application factory [`Endless::with_setup`] builds: the user's factory, called with the
/// setup's result.
pub type SetupFactory<I> = Box<dyn Fn() -> I + Send>;

impl<I, S, B> Endless<SetupFactory<I>, I, S, B>
where
    I: IntoServiceFactory<S, actix_http::Request> + 'static,
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    /// A runtime whose application needs async setup first, e.g. a connection pool:
    /// `setup` runs once in each process that serves, before the readiness gate
    /// ([`ready_when`](Self::ready_when)) and before any worker starts, and `factory` builds
    /// the application from its result (per worker thread, as `HttpServer::new`'s factory).
    ///
    /// The difference with setup written in `main` before [`Endless::new`]: in
    /// [`ProcessMode::Master`] the master never serves, so `setup` never runs there (no pool,
    /// no migrations in the master), while `main`'s own code runs in the master too. When
    /// `setup` fails in a new generation, the upgrade fails with `setup failed: <error>` in the
    /// old generation's log and the old generation serves on; at first start it is a start-up
    /// error. A `setup` that panics ends the process, which the old generation reports with
    /// its exit status.
    ///
    /// ```no_run
    /// use actix_web::{web, App, HttpResponse};
    ///
    /// struct Pool(String);
    /// async fn connect() -> std::io::Result<Pool> {
    ///     Ok(Pool("db".into()))
    /// }
    ///
    /// #[actix_web::main]
    /// async fn main() -> std::io::Result<()> {
    ///     actix_endless::Endless::with_setup(
    ///         || async { connect().await.map(web::Data::new) },
    ///         |pool: &web::Data<Pool>| {
    ///             App::new()
    ///                 .app_data(pool.clone())
    ///                 .route("/", web::get().to(|| async { HttpResponse::Ok().finish() }))
    ///         },
    ///     )
    ///     .process_mode(actix_endless::ProcessMode::Master)
    ///     .bind(("127.0.0.1", 8080))?
    ///     .run()
    ///     .await
    /// }
    /// ```
    pub fn with_setup<T, E, Fut>(
        setup: impl FnOnce() -> Fut + 'static,
        factory: impl Fn(&T) -> I + Send + Sync + 'static,
    ) -> Self
    where
        T: Send + Sync + 'static,
        E: fmt::Display,
        Fut: std::future::Future<Output = std::result::Result<T, E>> + 'static,
    {
        let state = std::sync::Arc::new(std::sync::OnceLock::<T>::new());
        let set = std::sync::Arc::clone(&state);
        let mut endless = Endless::new(Box::new(move || {
            // The runtime builds the server only once `setup` has succeeded.
            let state = state
                .get()
                .expect("the application factory is called only after a successful setup");
            factory(state)
        }) as SetupFactory<I>);
        endless.setup = Some(Box::new(move || {
            let fut = setup();
            Box::pin(async move {
                let value = fut.await.map_err(|e| e.to_string())?;
                // `setup` runs once per process: the cell is still empty.
                let _ = set.set(value);
                Ok(())
            })
        }));
        endless
    }
}
