//! Starting the next generation and the readiness handshake.
//!
//! The parent creates a pipe, passes the write end to the child with the listeners, and keeps
//! the read end. The child writes one byte once it serves; end of file before that byte means
//! the child died (every copy of the write end is gone), and no byte within the upgrade timeout
//! means it hangs.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::listeners::{
    Listener, GENERATION, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, MASTER_PID, READY_FD,
};
use crate::notify::NOTIFY_SOCKET;
use crate::runtime::Event;
use crate::sys;
use std::sync::mpsc::Sender;

/// The byte a ready child writes.
const READY: u8 = b'R';

/// How to start the next generation: what was resolved at start-up.
#[derive(Debug, Clone)]
pub(crate) struct Executable {
    /// The program path, absolute but with symlinks unresolved, so that a binary replaced on
    /// disk or a switched `current -> releases/vN` link is what runs next.
    pub(crate) path: PathBuf,
    /// `argv[0]` as this process got it.
    arg0: OsString,
    /// `argv[1..]`.
    args: Vec<OsString>,
    /// The working directory at start-up.
    cwd: PathBuf,
}

impl Executable {
    /// Resolves the program this process was started as. `overridden` replaces the path.
    pub(crate) fn resolve(overridden: Option<&Path>) -> io::Result<Executable> {
        let cwd = std::env::current_dir()?;
        let mut argv = std::env::args_os();
        let arg0 = argv.next().unwrap_or_default();
        let args: Vec<OsString> = argv.collect();
        let path = match overridden {
            Some(path) => cwd.join(path),
            None => from_arg0(&arg0, &cwd).map_or_else(std::env::current_exe, Ok)?,
        };
        Ok(Executable {
            path,
            arg0,
            args,
            cwd,
        })
    }
}

/// The program named by `argv[0]`: relative to the start-up directory if it has a `/`, else
/// looked up in `PATH` as the shell did.
fn from_arg0(arg0: &OsString, cwd: &Path) -> Option<PathBuf> {
    let arg0 = Path::new(arg0);
    if arg0.as_os_str().is_empty() {
        return None;
    }
    if arg0.components().count() > 1 || arg0.is_absolute() {
        return Some(cwd.join(arg0));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| cwd.join(dir).join(arg0))
        .find(|candidate| candidate.is_file())
}

/// A started child and the read end of its readiness pipe.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) ready: OwnedFd,
}

/// Starts the next generation with `listeners` at fds 3.. and the readiness pipe after them.
///
/// A worker of a stable-pid master (`master` is its pid) also gets `ACTIX_ENDLESS_MASTER_PID`,
/// and not `NOTIFY_SOCKET`: the master alone talks to systemd.
pub(crate) fn spawn(
    exe: &Executable,
    listeners: &[Listener],
    generation: u64,
    master: Option<u32>,
) -> Result<Spawned> {
    let spawn_error = |source| Error::Spawn {
        program: exe.path.clone(),
        source,
    };
    let (ready_read, ready_write) = sys::pipe().map_err(spawn_error)?;
    let mut fds: Vec<_> = listeners.iter().map(|l| l.socket.fd()).collect();
    fds.push(ready_write.as_fd());
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    let count = listeners.len();
    let ours = [
        LISTEN_PID,
        LISTEN_FDS,
        LISTEN_FDNAMES,
        READY_FD,
        GENERATION,
        MASTER_PID,
    ];
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !ours.iter().any(|o| k == o))
        .filter(|(k, _)| master.is_none() || k != NOTIFY_SOCKET)
        .collect();
    if let Some(master) = master {
        env.push((MASTER_PID.into(), master.to_string().into()));
    }
    env.push((LISTEN_FDS.into(), count.to_string().into()));
    env.push((LISTEN_FDNAMES.into(), names.join(":").into()));
    env.push((READY_FD.into(), (3 + count).to_string().into()));
    env.push((GENERATION.into(), generation.to_string().into()));
    let argv: Vec<OsString> = std::iter::once(exe.arg0.clone())
        .chain(exe.args.iter().cloned())
        .collect();
    let plan = sys::ExecPlan::new(&exe.path, &argv, &fds, env).map_err(spawn_error)?;
    // `Command` forks, sets the working directory and standard streams, and runs the plan's
    // `pre_exec` step, which executes the program (see `sys::ExecPlan`).
    let mut cmd = Command::new(&exe.path);
    cmd.current_dir(&exe.cwd);
    plan.install(&mut cmd);
    let child = cmd.spawn().map_err(spawn_error)?;
    // Our copies of the write end must be gone, so that the child's death reads as end of file.
    drop(cmd);
    drop(ready_write);
    Ok(Spawned {
        child,
        ready: ready_read,
    })
}

/// What the readiness pipe said.
#[derive(Debug)]
pub(crate) enum Readiness {
    /// The child wrote its byte.
    Ready,
    /// End of file: the child closed the pipe (usually: it exited) without reporting ready.
    Closed,
    /// Nothing within the timeout.
    TimedOut,
    /// Reading the pipe failed.
    Failed(io::Error),
}

/// Blocks until the child reports ready, closes the pipe, or `timeout` passes.
pub(crate) fn await_ready(ready: &OwnedFd, timeout: Duration) -> Readiness {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Readiness::TimedOut;
        }
        match sys::wait_readable(ready.as_fd(), left) {
            Ok(false) => continue,
            Ok(true) => {
                return match sys::read_byte(ready.as_fd()) {
                    Ok(Some(READY)) => Readiness::Ready,
                    Ok(Some(other)) => Readiness::Failed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected byte {other:#04x} on the readiness pipe"),
                    )),
                    Ok(None) => Readiness::Closed,
                    Err(e) => Readiness::Failed(e),
                }
            }
            Err(e) => return Readiness::Failed(e),
        }
    }
}

/// Watches `ready` on a thread of its own and reports the verdict on `tx` as
/// [`Event::Readiness`], so that the control loop stays free to handle signals meanwhile.
pub(crate) fn watch(
    ready: OwnedFd,
    pid: u32,
    timeout: Duration,
    tx: Sender<Event>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("actix-endless-readiness".into())
        .spawn(move || {
            let readiness = await_ready(&ready, timeout);
            let _ = tx.send(Event::Readiness { pid, readiness });
        })
        .map(drop)
}

/// Child side: tells the parent this process serves, and closes the pipe.
pub(crate) fn report_ready(ready: OwnedFd) -> io::Result<()> {
    sys::write_byte(ready.as_fd(), READY)
}
