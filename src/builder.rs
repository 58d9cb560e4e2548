//! The public builder, [`Endless`], and its [`Handle`].

use std::fmt;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Extensions, Response, Service, ServiceFactory};

use crate::drain::{OnConnect, Server};
use crate::error::{Error, Result};
use crate::hooks::{HookStage, Hooks, ServingEvent, SignalEvent, UpgradeEvent};
use crate::listeners::{BindAddr, TlsConfig};
use crate::runtime::{self, Event, ProcessMode, Settings};
use crate::signals::{Action, Signal};

/// How long a graceful drain may last before the remaining connections are closed by force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HammerTime {
    /// Force the close once this much time has passed since the drain began.
    After(Duration),
    /// Never force: the drain lasts until the last connection is gone (or `SIGUSR2`).
    Never,
}

impl From<Duration> for HammerTime {
    fn from(d: Duration) -> Self {
        HammerTime::After(d)
    }
}

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

    /// Starts a graceful stop, as `SIGTERM` does (a second call forces the close).
    pub fn graceful_stop(&self) -> bool {
        self.tx.send(Event::Command(Action::GracefulStop)).is_ok()
    }

    /// Closes every connection now, as `SIGUSR2` does.
    pub fn force_stop(&self) -> bool {
        self.tx.send(Event::Command(Action::ForceStop)).is_ok()
    }
}

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

type Configure<S, B> = Box<dyn FnOnce(Server<S, B>) -> Server<S, B>>;

/// The runtime builder: an actix-web application plus how to serve, upgrade and stop it.
///
/// | option | default |
/// |---|---|
/// | [`bind`](Self::bind) | none: at least one address, unless sockets are inherited |
/// | [`pid_file`](Self::pid_file) | none |
/// | [`hammer_time`](Self::hammer_time) | 60 s |
/// | [`upgrade_timeout`](Self::upgrade_timeout) | 30 s |
/// | [`idle_close_after`](Self::idle_close_after) | 250 ms |
/// | [`backlog`](Self::backlog) | 4096 |
/// | [`executable`](Self::executable) | the path this process was started as |
/// | [`configure`](Self::configure) | actix-web's defaults |
pub struct Endless<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, actix_http::Request>,
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    pub(crate) factory: F,
    pub(crate) binds: Vec<Bind>,
    pub(crate) settings: Settings,
    pub(crate) hooks: Hooks,
    pub(crate) configure: Option<Configure<S, B>>,
    pub(crate) on_connect: Option<OnConnect>,
    pub(crate) events: (Sender<Event>, Receiver<Event>),
    _types: std::marker::PhantomData<fn() -> I>,
}

impl<F, I, S, B> Endless<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
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
            hooks: Hooks::default(),
            configure: None,
            on_connect: None,
            events: channel(),
            _types: std::marker::PhantomData,
        }
    }

    /// Serves on a TCP address such as `127.0.0.1:8080` or `[::]:443`; may be called more than
    /// once. A name that resolves to several addresses serves on all of them. Resolution or
    /// bind errors are reported by [`run`](Self::run), naming the address.
    pub fn bind(mut self, addr: impl ToSocketAddrs + fmt::Display) -> Self {
        let resolved = addr
            .to_socket_addrs()
            .map(|addrs| addrs.map(BindAddr::Tcp).collect());
        self.binds.push(Bind {
            text: addr.to_string(),
            resolved,
            tls: None,
        });
        self
    }

    /// Serves HTTPS on a TCP address with `config` (requires the `rustls` feature). Each
    /// generation is configured by the code that starts it, so loading the certificate and key
    /// from files before calling this makes `SIGHUP` rotate them; a new generation that cannot
    /// load them fails to start and the old one serves on.
    #[cfg(feature = "rustls")]
    pub fn bind_rustls(
        mut self,
        addr: impl ToSocketAddrs + fmt::Display,
        config: rustls::ServerConfig,
    ) -> Self {
        let resolved = addr
            .to_socket_addrs()
            .map(|addrs| addrs.map(BindAddr::Tcp).collect());
        self.binds.push(Bind {
            text: addr.to_string(),
            resolved,
            tls: Some(std::sync::Arc::new(config)),
        });
        self
    }

    /// Serves on a Unix domain socket at `path` (mixed freely with TCP). The socket is handed
    /// over on upgrades like any other; the runtime never unlinks it, and a stale socket file
    /// left by a dead process is replaced at the first bind.
    pub fn bind_uds(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let text = format!("unix:{}", path.display());
        self.binds.push(Bind {
            text,
            resolved: Ok(vec![BindAddr::Unix { path, mode: None }]),
            tls: None,
        });
        self
    }

    /// Whether upgrades re-execute this process ([`ProcessMode::Reexec`], the default) or run
    /// under a stable-pid master ([`ProcessMode::Master`]).
    pub fn process_mode(mut self, mode: ProcessMode) -> Self {
        self.settings.mode = mode;
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
    pub fn idle_close_after(mut self, idle: Duration) -> Self {
        self.settings.idle_close_after = idle;
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

    /// Tunes the inner `HttpServer` (workers, keep-alive, timeouts, ...), e.g.
    /// `.configure(|server| server.workers(4))`. Listening sockets, signals and `on_connect`
    /// are the runtime's: use [`bind`](Self::bind) and [`on_connect`](Self::on_connect).
    pub fn configure(
        mut self,
        configure: impl FnOnce(Server<S, B>) -> Server<S, B> + 'static,
    ) -> Self {
        self.configure = Some(Box::new(configure));
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
    /// handing over to a new generation. Returns an error if it cannot start.
    pub fn run(self) -> Result<()> {
        runtime::run(self)
    }
}

/// One configured address, as given, resolved, and how to serve it.
pub(crate) struct Bind {
    text: String,
    resolved: std::io::Result<Vec<BindAddr>>,
    tls: Option<TlsConfig>,
}

/// Resolves the configured addresses, failing on the first that did not resolve.
pub(crate) fn resolve(
    binds: Vec<Bind>,
    unix_socket_mode: Option<u32>,
) -> Result<Vec<(BindAddr, Option<TlsConfig>)>> {
    let mut addrs = Vec::new();
    for Bind {
        text,
        resolved,
        tls,
    } in binds
    {
        let resolved = resolved.map_err(|source| Error::Bind {
            addr: text.clone(),
            source,
        })?;
        if resolved.is_empty() {
            return Err(Error::Bind {
                addr: text,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "resolves to no address",
                ),
            });
        }
        addrs.extend(resolved.into_iter().map(|addr| {
            let addr = match addr {
                BindAddr::Unix { path, .. } => BindAddr::Unix {
                    path,
                    mode: unix_socket_mode,
                },
                tcp => tcp,
            };
            (addr, tls.clone())
        }));
    }
    Ok(addrs)
}
