//! The inheritance protocol: which listening sockets a process was handed, and how it hands them
//! on.
//!
//! It is systemd's socket-passing protocol, so the same code adopts sockets from systemd socket
//! activation and from a previous generation of this process:
//!
//! | variable | meaning |
//! |---|---|
//! | `LISTEN_PID` | the pid the variables are meant for; any other value means "not for us" |
//! | `LISTEN_FDS` | how many listening sockets start at fd 3 |
//! | `LISTEN_FDNAMES` | their names, separated by `:` (optional) |
//! | `ACTIX_ENDLESS_READY_FD` | a pipe on which to write one byte once serving (upgrades only) |
//! | `ACTIX_ENDLESS_GENERATION` | this process's generation number (upgrades only) |
//! | `ACTIX_ENDLESS_MASTER_PID` | the master's pid, for a worker in stable-pid mode |
//!
//! Parsing ([`parse`]) is pure and never touches a descriptor; adopting them then validates every
//! descriptor (open, a socket, a listening stream socket of a known family) before it takes
//! ownership, and leaves descriptors alone when validation fails.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::sys::{self, ListenerFamily};

/// systemd: the pid the passed descriptors are meant for.
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
/// systemd: how many descriptors are passed, from fd 3 on.
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
/// systemd: the `:`-separated names of the passed descriptors.
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// This crate: the descriptor on which a new generation reports ready.
pub(crate) const READY_FD: &str = "ACTIX_ENDLESS_READY_FD";
/// This crate: the generation number of the new process.
pub(crate) const GENERATION: &str = "ACTIX_ENDLESS_GENERATION";
/// This crate: the pid of the master process, for a worker in stable-pid mode.
pub(crate) const MASTER_PID: &str = "ACTIX_ENDLESS_MASTER_PID";

/// The first descriptor number of the protocol.
const FIRST_FD: RawFd = 3;
/// More passed sockets than this is not a plausible configuration.
const MAX_FDS: usize = 4096;

/// The raw values of the inheritance variables, as found in the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InheritEnv {
    /// `LISTEN_PID`.
    pub listen_pid: Option<String>,
    /// `LISTEN_FDS`.
    pub listen_fds: Option<String>,
    /// `LISTEN_FDNAMES`.
    pub listen_fdnames: Option<String>,
    /// `ACTIX_ENDLESS_READY_FD`.
    pub ready_fd: Option<String>,
    /// `ACTIX_ENDLESS_GENERATION`.
    pub generation: Option<String>,
    /// `ACTIX_ENDLESS_MASTER_PID`.
    pub master_pid: Option<String>,
}

impl InheritEnv {
    /// Reads the variables from this process's environment (non-UTF-8 values are kept lossily,
    /// so they fail parsing with a clear message instead of being skipped).
    pub(crate) fn from_process() -> Self {
        let var = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        InheritEnv {
            listen_pid: var(LISTEN_PID),
            listen_fds: var(LISTEN_FDS),
            listen_fdnames: var(LISTEN_FDNAMES),
            ready_fd: var(READY_FD),
            generation: var(GENERATION),
            master_pid: var(MASTER_PID),
        }
    }
}

/// What the variables say, before any descriptor is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InheritPlan {
    /// The passed listener descriptors and their names, in order.
    pub listeners: Vec<(RawFd, String)>,
    /// The readiness pipe, on an upgrade.
    pub ready_fd: Option<RawFd>,
    /// This process's generation: 1 unless an upgrade says otherwise.
    pub generation: u64,
    /// The master's pid, when this process is a worker in stable-pid mode.
    pub master: Option<u32>,
    /// Descriptors that were passed without `LISTEN_PID` and ignored, said as a sentence.
    pub ignored: Option<String>,
}

/// What to do with descriptors passed without `LISTEN_PID` (as `systemfd --no-pid` passes
/// them, since a process run through `cargo watch` cannot be known in advance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Unclaimed {
    /// Ignore them, as systemd's protocol says (the default).
    #[default]
    Ignore,
    /// Serve on them: for the `systemfd` development loop.
    Adopt,
}

/// Parses the inheritance variables for the process `my_pid`. Pure: no descriptor is touched.
///
/// Variables meant for another pid are ignored, as systemd specifies, and the result is a
/// plain first start; so are descriptors passed with no `LISTEN_PID` at all, unless
/// `unclaimed` says to adopt them. Values that are meant for us but malformed are an
/// [`Error::Env`] that names the variable.
pub(crate) fn parse(env: &InheritEnv, my_pid: u32, unclaimed: Unclaimed) -> Result<InheritPlan> {
    let fresh = InheritPlan {
        listeners: Vec::new(),
        ready_fd: None,
        generation: 1,
        master: None,
        ignored: None,
    };
    match (env.listen_pid.as_deref(), env.listen_fds.as_deref(), unclaimed) {
        (Some(pid_text), _, _) => {
            let pid: u32 = parse_number(LISTEN_PID, pid_text)?;
            if pid != my_pid {
                return Ok(fresh);
            }
        }
        (None, Some(_), Unclaimed::Adopt) => {}
        (None, Some(fds), Unclaimed::Ignore) => {
            return Ok(InheritPlan {
                ignored: Some(format!(
                    "{LISTEN_FDS}={fds} was passed without {LISTEN_PID} (as `systemfd --no-pid` does) and is ignored; to serve on those descriptors, opt in with Endless::adopt_unclaimed_fds() (the examples: ENDLESS_ADOPT_UNCLAIMED_FDS=1)"
                )),
                ..fresh
            })
        }
        (None, None, _) => return Ok(fresh),
    }
    let count: usize = match env.listen_fds.as_deref() {
        None => 0,
        Some(text) => parse_number(LISTEN_FDS, text)?,
    };
    if count > MAX_FDS {
        return Err(env_error(
            LISTEN_FDS,
            &count.to_string(),
            format!("more than {MAX_FDS} descriptors"),
        ));
    }
    let names: Vec<String> = match env.listen_fdnames.as_deref() {
        None => vec!["unknown".to_owned(); count],
        Some(text) => {
            let names: Vec<String> = if text.is_empty() && count == 0 {
                Vec::new()
            } else {
                text.split(':').map(str::to_owned).collect()
            };
            if names.len() != count {
                return Err(env_error(
                    LISTEN_FDNAMES,
                    text,
                    format!("{} names for {count} descriptors", names.len()),
                ));
            }
            if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
                return Err(env_error(
                    LISTEN_FDNAMES,
                    text,
                    format!("name {bad:?} is empty, too long or has control characters"),
                ));
            }
            names
        }
    };
    let listeners = (FIRST_FD..).zip(names).collect();
    let first_free = FIRST_FD + count as RawFd;
    let ready_fd = match env.ready_fd.as_deref() {
        None => None,
        Some(text) => {
            let fd: RawFd = parse_number(READY_FD, text)?;
            if fd < first_free {
                return Err(env_error(
                    READY_FD,
                    text,
                    format!("must be above the {count} listening descriptors from fd 3"),
                ));
            }
            Some(fd)
        }
    };
    let generation = match env.generation.as_deref() {
        None => 1,
        Some(text) => {
            let generation: u64 = parse_number(GENERATION, text)?;
            if generation < 1 {
                return Err(env_error(
                    GENERATION,
                    text,
                    "generations are numbered from 1".to_owned(),
                ));
            }
            if generation == u64::MAX {
                return Err(env_error(
                    GENERATION,
                    text,
                    "is the last generation number: this one could not be upgraded".to_owned(),
                ));
            }
            generation
        }
    };
    let master = match env.master_pid.as_deref() {
        None => None,
        Some(text) => match parse_number(MASTER_PID, text)? {
            0 => return Err(env_error(MASTER_PID, text, "is not a pid".to_owned())),
            pid => Some(pid),
        },
    };
    Ok(InheritPlan {
        listeners,
        ready_fd,
        generation,
        master,
        ignored: None,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(|c| c.is_control())
}

fn parse_number<T: std::str::FromStr>(var: &'static str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|_| env_error(var, text, "is not a non-negative decimal number".to_owned()))
}

fn env_error(var: &'static str, value: &str, reason: String) -> Error {
    Error::Env {
        var,
        value: value.chars().take(200).collect(),
        reason,
    }
}

/// A listening socket the server serves on.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Socket {
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
        }
    }

    pub(crate) fn try_clone(&self) -> std::io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(l) => Socket::Tcp(l.try_clone()?),
            Socket::Unix(l) => Socket::Unix(l.try_clone()?),
        })
    }
}

impl fmt::Display for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socket::Tcp(l) => match l.local_addr() {
                Ok(addr) => write!(f, "{addr}"),
                Err(_) => write!(f, "tcp socket"),
            },
            Socket::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.to_owned()))
            {
                Some(path) => write!(f, "unix:{}", path.display()),
                None => write!(f, "unix socket"),
            },
        }
    }
}

/// The TLS configuration a TCP listener is served with.
#[cfg(feature = "rustls")]
pub(crate) type TlsConfig = std::sync::Arc<rustls::ServerConfig>;

/// How a listening socket is served.
#[derive(Debug, Clone, Default)]
pub(crate) enum Serve {
    /// HTTP/1.x, by actix-web's `HttpServer` (`Endless::bind`, `bind_uds`).
    #[default]
    Http1,
    /// HTTP/1.x, and HTTP/2 with prior knowledge (h2c): `Endless::bind_auto_h2c`.
    #[cfg(feature = "http2")]
    AutoH2c,
    /// HTTPS: HTTP/1.1, and HTTP/2 by ALPN with the `http2` feature (`Endless::bind_rustls`).
    #[cfg(feature = "rustls")]
    Tls(TlsConfig),
}

/// A named listening socket, and how it is served.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) name: String,
    pub(crate) socket: Socket,
    pub(crate) serve: Serve,
}

/// What a process adopted from its parent (or from systemd).
#[derive(Debug)]
pub(crate) struct Inherited {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) ready: Option<OwnedFd>,
    pub(crate) generation: u64,
    pub(crate) master: Option<u32>,
}

/// Validates every descriptor the plan names and takes ownership of them, all or nothing.
pub(crate) fn adopt(plan: InheritPlan) -> Result<Inherited> {
    let mut checked = Vec::with_capacity(plan.listeners.len());
    for (fd, name) in plan.listeners {
        let fd_error = |reason: String| Error::InheritedFd {
            var: LISTEN_FDS,
            fd,
            reason,
        };
        let borrowed = sys::borrow_inherited(fd)
            .map_err(|e| fd_error(format!("is not an open descriptor ({e})")))?;
        let family = sys::inspect_listener(borrowed).map_err(fd_error)?;
        checked.push((borrowed, name, family));
    }
    let ready = match plan.ready_fd {
        None => None,
        Some(fd) => {
            let fd_error = |reason: String| Error::InheritedFd {
                var: READY_FD,
                fd,
                reason,
            };
            let borrowed = sys::borrow_inherited(fd)
                .map_err(|e| fd_error(format!("is not an open descriptor ({e})")))?;
            if !sys::is_fifo(borrowed) {
                return Err(fd_error("is not a pipe".to_owned()));
            }
            Some(borrowed)
        }
    };
    // Everything is valid: only now take ownership (and set close-on-exec).
    let mut listeners = Vec::with_capacity(checked.len());
    for (borrowed, name, family) in checked {
        let fd = borrowed.as_raw_fd();
        let owned = sys::own_inherited(borrowed).map_err(|e| Error::InheritedFd {
            var: LISTEN_FDS,
            fd,
            reason: format!("cannot be made close-on-exec ({e})"),
        })?;
        let socket = match family {
            ListenerFamily::Tcp => Socket::Tcp(TcpListener::from(owned)),
            ListenerFamily::Unix => Socket::Unix(UnixListener::from(owned)),
        };
        listeners.push(Listener {
            name,
            socket,
            serve: Serve::default(),
        });
    }
    let ready = match ready {
        None => None,
        Some(borrowed) => {
            let fd = borrowed.as_raw_fd();
            Some(
                sys::own_inherited(borrowed).map_err(|e| Error::InheritedFd {
                    var: READY_FD,
                    fd,
                    reason: format!("cannot be made close-on-exec ({e})"),
                })?,
            )
        }
    };
    Ok(Inherited {
        listeners,
        ready,
        generation: plan.generation,
        master: plan.master,
    })
}

/// An address the application asked to serve on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket path, with the permission bits to give it.
    Unix { path: PathBuf, mode: Option<u32> },
}

impl BindAddr {
    /// The name this address goes by in `LISTEN_FDNAMES` (which forbids `:`).
    pub(crate) fn name(&self) -> String {
        let name = match self {
            BindAddr::Tcp(addr) => format!("tcp-{addr}"),
            BindAddr::Unix { path, .. } => format!("unix-{}", path.display()),
        };
        name.replace(':', "_")
            .chars()
            .filter(|c| !c.is_control())
            .take(255)
            .collect()
    }

    fn fits(&self, socket: &Socket) -> bool {
        matches!(
            (self, socket),
            (BindAddr::Tcp(_), Socket::Tcp(_)) | (BindAddr::Unix { .. }, Socket::Unix(_))
        )
    }

    fn bind(&self, backlog: u32) -> Result<Socket> {
        let bound = match self {
            BindAddr::Tcp(addr) => sys::bind_tcp(*addr, backlog).map(Socket::Tcp),
            BindAddr::Unix { path, mode } => sys::bind_unix(path, backlog, *mode).map(Socket::Unix),
        };
        bound.map_err(|source| Error::Bind {
            addr: self.to_string(),
            source,
        })
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Matches configured addresses to inherited sockets (by name first, then by position among
/// the unmatched ones of the same kind), binds the rest, and returns the listeners in
/// configuration order. Inherited sockets that match nothing are served too when nothing is
/// configured (pure socket activation); otherwise they are closed with a warning.
pub(crate) fn assemble(
    configured: &[BindAddr],
    inherited: Vec<Listener>,
    backlog: u32,
) -> Result<Vec<Listener>> {
    let mut pool: Vec<Option<Listener>> = inherited.into_iter().map(Some).collect();
    let names: Vec<String> = configured.iter().map(BindAddr::name).collect();
    let mut chosen: Vec<Option<Listener>> = configured
        .iter()
        .zip(&names)
        .map(|(addr, name)| {
            pool.iter_mut()
                .find(|slot| matches!(slot, Some(l) if &l.name == name && addr.fits(&l.socket)))
                .and_then(Option::take)
        })
        .collect();
    for (addr, slot) in configured.iter().zip(chosen.iter_mut()) {
        if slot.is_none() {
            *slot = pool
                .iter_mut()
                .find(|l| matches!(l, Some(l) if addr.fits(&l.socket) && !names.contains(&l.name)))
                .and_then(Option::take);
        }
    }
    let mut listeners = Vec::with_capacity(configured.len());
    for ((addr, name), slot) in configured.iter().zip(names).zip(chosen) {
        let socket = match slot {
            Some(inherited) => {
                log::debug!("adopting inherited socket {} for {addr}", inherited.socket);
                inherited.socket
            }
            None => addr.bind(backlog)?,
        };
        listeners.push(Listener {
            name,
            socket,
            serve: Serve::default(),
        });
    }
    let leftover = pool.into_iter().flatten();
    if configured.is_empty() {
        listeners.extend(leftover);
    } else {
        for l in leftover {
            log::warn!(
                "closing inherited socket {} ({:?}): it matches no configured address",
                l.socket,
                l.name
            );
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests;
