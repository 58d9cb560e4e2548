//! The crate's one error type.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the runtime, at start-up or during an upgrade.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An inheritance variable (`LISTEN_FDS`, `LISTEN_FDNAMES`, `ACTIX_ENDLESS_*`) holds a value
    /// that cannot be used.
    Env {
        /// The variable's name.
        var: &'static str,
        /// What it held.
        value: String,
        /// Why that is wrong.
        reason: String,
    },
    /// A descriptor named by the inheritance variables is not what the protocol promises.
    InheritedFd {
        /// The variable that named it.
        var: &'static str,
        /// The descriptor number.
        fd: RawFd,
        /// What is wrong with it.
        reason: String,
    },
    /// Creating a listener for a configured address failed.
    Bind {
        /// The address as configured.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The pid file could not be written or removed.
    PidFile {
        /// The pid file's path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The new generation could not be started.
    Spawn {
        /// The executable that was tried.
        program: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The working directory that new generations start in is gone or not a directory.
    WorkingDirectory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// No address is configured and no socket was inherited.
    NothingToListenOn,
    /// A setting cannot be used.
    Config {
        /// The builder method that sets it, e.g. `workers`.
        setting: &'static str,
        /// Why not.
        reason: String,
    },
    /// The new generation ended before it reported ready.
    ChildExited {
        /// Its pid.
        pid: u32,
        /// How it ended, e.g. `exit status: 1`.
        status: String,
    },
    /// A generation will not serve: its setup ([`crate::Endless::with_setup`],
    /// [`crate::setup_failed`]) or its readiness gate ([`crate::Endless::ready_when`]) failed
    /// or timed out. In a new generation, the upgrade failed before it served any request.
    NotReady {
        /// The process whose gate failed.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// An upgrade asked for on the control socket did not take (or the server refused the
    /// request), and why.
    UpgradeFailed {
        /// The server's reason.
        reason: String,
    },
    /// The new generation did not report ready within the upgrade timeout.
    ReadyTimeout {
        /// Its pid.
        pid: u32,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Another runtime is already running in this process (signals are process-wide).
    AlreadyRunning,
    /// Any other I/O error, with what was being done.
    Io {
        /// What the runtime was doing.
        context: &'static str,
        /// The cause.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { context, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Env { var, value, reason } => write!(f, "{var}={value:?}: {reason}"),
            Error::InheritedFd { var, fd, reason } => {
                write!(f, "fd {fd} (passed in {var}) {reason}")
            }
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::PidFile { path, source } => {
                write!(f, "pid file {}: {source}", path.display())
            }
            Error::Spawn { program, source } => {
                write!(f, "cannot start {}: {source}", program.display())
            }
            Error::WorkingDirectory { path, source } => write!(
                f,
                "cannot start the new generation: working directory {}: {source}",
                path.display()
            ),
            Error::NothingToListenOn => {
                f.write_str("nothing to listen on: no address configured and no socket inherited")
            }
            Error::Config { setting, reason } => write!(f, "{setting}: {reason}"),
            Error::ChildExited { pid, status } => {
                write!(
                    f,
                    "new process {pid} ended ({status}) before it reported ready"
                )
            }
            Error::UpgradeFailed { reason } => write!(f, "{reason}"),
            Error::NotReady { pid, reason } => {
                write!(f, "new process {pid} is not ready: {reason}")
            }
            Error::ReadyTimeout { pid, timeout } => {
                write!(
                    f,
                    "new process {pid} did not report ready within {timeout:?}"
                )
            }
            Error::AlreadyRunning => {
                write!(
                    f,
                    "an actix-endless runtime is already running in this process"
                )
            }
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. }
            | Error::PidFile { source, .. }
            | Error::Spawn { source, .. }
            | Error::WorkingDirectory { source, .. }
            | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match &err {
            Error::Bind { source, .. }
            | Error::PidFile { source, .. }
            | Error::Spawn { source, .. }
            | Error::WorkingDirectory { source, .. }
            | Error::Io { source, .. } => source.kind(),
            Error::ReadyTimeout { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
