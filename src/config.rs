//! The runtime's configuration: plain data the builder fills in and every other module reads.
//!
//! It sits below everything that uses it, so that the builder, the runtime and the process
//! modes can all read the settings without importing each other.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::listeners::{BindAddr, Serve, Unclaimed};

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

impl fmt::Display for HammerTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HammerTime::After(d) => write!(f, "{d:?}"),
            HammerTime::Never => f.write_str("never"),
        }
    }
}

/// How upgrades change processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessMode {
    /// The serving process re-executes itself on `SIGHUP`: the pid changes on every upgrade,
    /// like Go's endless and nginx. The default.
    #[default]
    Reexec,
    /// A small master process keeps its pid and the listening sockets; server generations run
    /// as its workers. For supervisors that track a pid (supervisord, runit, container PID 1).
    Master,
}

impl fmt::Display for ProcessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProcessMode::Reexec => "reexec",
            ProcessMode::Master => "master",
        })
    }
}

/// The builder's plain settings (see [`crate::Endless`] for what each means and its default).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) hammer_time: HammerTime,
    pub(crate) upgrade_timeout: Duration,
    /// `None` until [`Settings::resolve_idle_close`]: the keep-alive timeout.
    pub(crate) idle_close_after: Option<Duration>,
    pub(crate) backlog: u32,
    pub(crate) executable: Option<PathBuf>,
    pub(crate) unix_socket_mode: Option<u32>,
    pub(crate) mode: ProcessMode,
    pub(crate) unclaimed: Unclaimed,
    pub(crate) control_socket: Option<PathBuf>,
    pub(crate) commit_after: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pid_file: None,
            hammer_time: HammerTime::After(Duration::from_secs(60)),
            upgrade_timeout: Duration::from_secs(30),
            idle_close_after: None,
            backlog: 4096,
            executable: None,
            unix_socket_mode: None,
            mode: ProcessMode::Reexec,
            unclaimed: Unclaimed::Ignore,
            control_socket: None,
            commit_after: None,
        }
    }
}

/// actix-web's keep-alive timeout when none is set (`KeepAlive::default()`).
const ACTIX_KEEP_ALIVE: Duration = Duration::from_secs(5);

impl Settings {
    /// Sets the drain's idle close, unless the builder did, to the keep-alive timeout: a
    /// drain then closes an idle connection no sooner than normal operation would, so a
    /// client or proxy that closes its idle connections first (nginx's upstream
    /// `keepalive_timeout` below the app's) never sends on one the server is closing.
    pub(crate) fn resolve_idle_close(mut self, server: &ServerSettings) -> Self {
        use actix_web::http::KeepAlive;
        let keep_alive = match server.keep_alive {
            Some(KeepAlive::Timeout(timeout)) => timeout,
            _ => ACTIX_KEEP_ALIVE,
        };
        self.idle_close_after.get_or_insert(keep_alive);
        self
    }

    /// The drain's idle close (resolved when the runtime starts).
    pub(crate) fn idle_close(&self) -> Duration {
        self.idle_close_after.unwrap_or(ACTIX_KEEP_ALIVE)
    }
}

/// One configured address: what it resolved to, and how to serve it.
pub(crate) struct Bind {
    resolved: Vec<BindAddr>,
    serve: Serve,
}

impl Bind {
    /// A TCP address, resolved now, as `HttpServer::bind` does. An address that cannot be
    /// resolved or resolves to nothing is an error.
    pub(crate) fn tcp(addr: impl ToSocketAddrs, serve: Serve) -> std::io::Result<Bind> {
        let resolved: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if resolved.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the address to bind resolves to no address",
            ));
        }
        Ok(Bind {
            resolved: resolved.into_iter().map(BindAddr::Tcp).collect(),
            serve,
        })
    }

    /// A Unix domain socket path.
    pub(crate) fn unix(path: PathBuf) -> Bind {
        Bind {
            resolved: vec![BindAddr::Unix { path, mode: None }],
            serve: Serve::Http1,
        }
    }
}

/// The configured addresses, each with how to serve it; Unix sockets get `unix_socket_mode`.
pub(crate) fn resolve(binds: Vec<Bind>, unix_socket_mode: Option<u32>) -> Vec<(BindAddr, Serve)> {
    let mut addrs = Vec::new();
    for Bind { resolved, serve } in binds {
        addrs.extend(resolved.into_iter().map(|addr| {
            let addr = match addr {
                BindAddr::Unix { path, .. } => BindAddr::Unix {
                    path,
                    mode: unix_socket_mode,
                },
                tcp => tcp,
            };
            (addr, serve.clone())
        }));
    }
    addrs
}

/// `HttpServer` settings the builder sets directly (`None`: actix-web's default).
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerSettings {
    pub(crate) workers: Option<usize>,
    pub(crate) keep_alive: Option<actix_web::http::KeepAlive>,
    pub(crate) client_request_timeout: Option<Duration>,
    pub(crate) client_disconnect_timeout: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connection_rate: Option<usize>,
    /// TLS listeners only (`None`: actix-tls's 3 s).
    #[cfg(feature = "rustls")]
    pub(crate) tls_handshake_timeout: Option<Duration>,
}

impl ServerSettings {
    /// Checks what actix-web would otherwise reject with a panic.
    pub(crate) fn validate(&self) -> Result<()> {
        let positive = |setting: &'static str, value: Option<usize>| match value {
            Some(0) => Err(Error::Config {
                setting,
                reason: "must be at least 1".to_owned(),
            }),
            _ => Ok(()),
        };
        positive("workers", self.workers)?;
        positive("max_connections", self.max_connections)?;
        positive("max_connection_rate", self.max_connection_rate)
    }
}
