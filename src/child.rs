//! Process control for both modes: starting the next generation (or a master's worker), the
//! readiness handshake, signalling, and giving up on a child.
//!
//! The parent creates a pipe, passes the write end to the child with the listeners, and keeps
//! the read end. The child writes [`READY`] once it serves, and keeps the pipe open while it is
//! the newest serving generation. When it hands over to a successor of its own or is asked to
//! stop, it writes [`RESIGNED`] and closes the pipe. So the parent learns three things from one
//! descriptor: end of file before `READY` means the child died before serving; no byte within
//! the upgrade timeout means it hangs; end of file after `READY` without `RESIGNED` means the
//! serving generation died (and a draining parent may take the sockets back).
//!
//! Every child leads a process group of its own, so that giving up on it also ends whatever it
//! started (a wrapper script's children would otherwise keep the listening sockets).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::listeners::{
    Listener, GENERATION, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, MASTER_PID, READY_FD,
};
use crate::notify::NOTIFY_SOCKET;
use crate::sys::{self, Exit, OsSignal};

/// The byte a ready child writes.
const READY: u8 = b'R';
/// The byte a serving child writes when it stops being the newest serving generation.
const RESIGNED: u8 = b'D';
/// The byte a child writes when it will not serve, followed by the reason (UTF-8, then EOF).
const REFUSED: u8 = b'F';
/// The longest reason read after [`REFUSED`].
const MAX_REASON: usize = 4096;
/// How often a child that is being given up on is checked for its exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

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
    /// The working directory at start-up, as the shell named it (`$PWD`) when that names the
    /// same directory, so that `current -> releases/vN` is followed again at every upgrade.
    cwd: PathBuf,
}

impl Executable {
    /// Resolves the program this process was started as. `overridden` replaces the path.
    pub(crate) fn resolve(overridden: Option<&Path>) -> io::Result<Executable> {
        let cwd = logical_cwd(std::env::current_dir()?);
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

/// `$PWD` when it is absolute and names the same directory as `physical` (as shells and Go's
/// `os.Getwd` keep it), else `physical`.
fn logical_cwd(physical: PathBuf) -> PathBuf {
    let Some(pwd) = std::env::var_os("PWD").map(PathBuf::from) else {
        return physical;
    };
    let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if pwd.is_absolute() && same(&pwd, &physical) {
        pwd
    } else {
        physical
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

/// What the child will be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// The next generation of a re-executing server.
    Generation,
    /// A worker of the stable-pid master `master` (this process). It is told the master's pid,
    /// is not given `NOTIFY_SOCKET` (the master alone talks to systemd), and gets `SIGTERM`
    /// (a graceful stop) if the master dies.
    Worker { master: u32 },
}

/// A child process: the leader of its own process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) generation: u64,
}

/// A started child and the read end of its readiness pipe.
pub(crate) struct Spawned {
    pub(crate) process: Process,
    pub(crate) ready: OwnedFd,
}

/// Starts `generation` with `listeners` at fds 3.. and the readiness pipe after them.
pub(crate) fn spawn(
    exe: &Executable,
    listeners: &[&Listener],
    generation: u64,
    role: Role,
) -> Result<Spawned> {
    let spawn_error = |source| Error::Spawn {
        program: exe.path.clone(),
        source,
    };
    if let Err(source) = std::fs::metadata(&exe.cwd).and_then(|m| {
        m.is_dir()
            .then_some(())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTDIR))
    }) {
        return Err(Error::WorkingDirectory {
            path: exe.cwd.clone(),
            source,
        });
    }
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
    let master = match role {
        Role::Generation => None,
        Role::Worker { master } => Some(master),
    };
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
    let parent_death = master.map(|_| OsSignal::SIGTERM);
    let plan =
        sys::ExecPlan::new(&exe.path, &argv, &fds, env, parent_death).map_err(spawn_error)?;
    // `Command` forks, sets the working directory and standard streams, and runs the plan's
    // `pre_exec` step, which executes the program (see `sys::ExecPlan`).
    let mut cmd = Command::new(&exe.path);
    cmd.current_dir(&exe.cwd);
    plan.install(&mut cmd);
    let child = cmd.spawn().map_err(spawn_error)?;
    // Our copies of the write end must be gone, so that the child's death reads as end of file.
    drop(cmd);
    drop(ready_write);
    // The child is reaped by pid (`Process::reap`, or a master's `reap_any`); `Child` would
    // only duplicate that.
    let pid = child.id();
    drop(child);
    Ok(Spawned {
        process: Process { pid, generation },
        ready: ready_read,
    })
}

impl Process {
    /// Sends `signal` to the child alone. Returns `false` if it is gone.
    pub(crate) fn signal(&self, signal: OsSignal) -> bool {
        match sys::send_signal(self.pid, signal) {
            Ok(alive) => alive,
            Err(e) => {
                log::warn!("cannot send {signal} to pid {}: {e}", self.pid);
                false
            }
        }
    }

    /// Reaps the child if it has ended.
    pub(crate) fn reap(&self) -> Option<Exit> {
        sys::reap(self.pid)
    }

    /// Gives up on a child that will not serve (or no longer may), and reaps it: first it gets
    /// `first` (if any) and `grace` to end by itself, so that a live child finishes what it
    /// accepted and the log shows the child's own exit status; then its whole process group
    /// is killed, descendants included. `Exit` is how the child itself ended, `None` if it
    /// could not be reaped (it was not our child).
    pub(crate) fn abandon(&self, first: Option<OsSignal>, grace: Duration) -> Option<Exit> {
        if let Some(signal) = first {
            self.signal(signal);
        }
        let deadline = Instant::now() + grace;
        while !sys::has_ended(self.pid) && Instant::now() < deadline {
            std::thread::sleep(EXIT_POLL);
        }
        // Before reaping the leader: while it is a zombie its group id cannot be reused.
        if let Err(e) = sys::send_group_signal(self.pid, OsSignal::SIGKILL) {
            log::warn!("cannot kill process group {}: {e}", self.pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(exit) = self.reap() {
                return Some(exit);
            }
            if Instant::now() >= deadline
                || !sys::send_signal(self.pid, OsSignal::SIGKILL).unwrap_or(false)
            {
                return self.reap();
            }
            std::thread::sleep(EXIT_POLL);
        }
    }
}

impl Process {
    /// Kills what is left of the process group of a child that has already been reaped: a
    /// wrapper's children would otherwise keep the listening sockets. (While any member is
    /// alive the group id cannot be reused; when none is, there is nothing to signal.)
    pub(crate) fn kill_descendants(&self) {
        if let Err(e) = sys::send_group_signal(self.pid, OsSignal::SIGKILL) {
            log::warn!("cannot kill process group {}: {e}", self.pid);
        }
    }
}

/// What a child's readiness pipe said.
#[derive(Debug)]
pub(crate) enum News {
    /// The child wrote its ready byte: it serves.
    Ready,
    /// End of file before the ready byte: the child closed the pipe (usually: it exited).
    Closed,
    /// Nothing within the timeout.
    TimedOut,
    /// Reading the pipe failed, or it said something outside the protocol.
    Failed(io::Error),
    /// The child said it will not serve, and why (its readiness gate failed).
    Refused(String),
    /// After `Ready`: the child handed over to a successor of its own, or was asked to stop.
    Resigned,
    /// After `Ready`: end of file without resigning: the serving child died.
    Died,
}

impl News {
    /// For a child that will not serve (any news but [`News::Ready`]): the error to report.
    /// `give_up(why, first)` gives up on the child (sending `first`, if any, before its grace)
    /// and returns how it ended; it is called once.
    pub(crate) fn failure(
        self,
        pid: u32,
        timeout: Duration,
        give_up: impl FnOnce(&'static str, Option<OsSignal>) -> String,
    ) -> Error {
        match self {
            // It is usually exiting: it gets its grace without a signal, so that its own exit
            // status is what is reported.
            News::Closed => Error::ChildExited {
                pid,
                status: give_up("it closed the readiness pipe", None),
            },
            News::TimedOut => {
                give_up("it did not report ready in time", Some(OsSignal::SIGTERM));
                Error::ReadyTimeout { pid, timeout }
            }
            News::Refused(reason) => {
                give_up("its readiness gate failed", None);
                Error::NotReady { pid, reason }
            }
            other => {
                give_up("its readiness pipe failed", Some(OsSignal::SIGTERM));
                Error::Io {
                    context: "reading the readiness pipe",
                    source: match other {
                        News::Failed(source) => source,
                        other => io::Error::other(format!("{other:?} before it was ready")),
                    },
                }
            }
        }
    }
}

/// Blocks until the child reports ready, closes the pipe, or `timeout` passes.
fn await_ready(ready: &OwnedFd, timeout: Duration) -> News {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return News::TimedOut;
        }
        match sys::wait_readable(ready.as_fd(), left) {
            Ok(false) => continue,
            Ok(true) => {
                return match sys::read_byte(ready.as_fd()) {
                    Ok(Some(READY)) => News::Ready,
                    Ok(Some(REFUSED)) => News::Refused(read_reason(ready, deadline)),
                    Ok(Some(other)) => News::Failed(unexpected(other)),
                    Ok(None) => News::Closed,
                    Err(e) => News::Failed(e),
                }
            }
            Err(e) => return News::Failed(e),
        }
    }
}

/// Blocks until a serving child resigns or its pipe ends.
fn await_resignation(ready: &OwnedFd) -> News {
    loop {
        match sys::wait_readable(ready.as_fd(), Duration::from_secs(60)) {
            Ok(false) => continue,
            Ok(true) => {
                return match sys::read_byte(ready.as_fd()) {
                    Ok(Some(RESIGNED)) => News::Resigned,
                    Ok(Some(other)) => News::Failed(unexpected(other)),
                    Ok(None) => News::Died,
                    Err(e) => News::Failed(e),
                }
            }
            Err(e) => return News::Failed(e),
        }
    }
}

/// Reads the reason that follows [`REFUSED`], up to end of file, [`MAX_REASON`] bytes or the
/// deadline.
fn read_reason(ready: &OwnedFd, deadline: Instant) -> String {
    let mut reason = Vec::new();
    while reason.len() < MAX_REASON {
        let left = deadline.saturating_duration_since(Instant::now());
        match sys::wait_readable(ready.as_fd(), left) {
            Ok(true) => match sys::read_byte(ready.as_fd()) {
                Ok(Some(byte)) => reason.push(byte),
                _ => break,
            },
            _ => break,
        }
    }
    let reason = String::from_utf8_lossy(&reason).trim().to_owned();
    if reason.is_empty() {
        "no reason given".to_owned()
    } else {
        reason
    }
}

fn unexpected(byte: u8) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected byte {byte:#04x} on the readiness pipe"),
    )
}

/// Watches `ready` on a thread of its own and reports each piece of news through `report`, so
/// that the control loop stays free to handle signals meanwhile: first the readiness verdict,
/// then, after [`News::Ready`], whether the child resigned or died.
pub(crate) fn watch(
    ready: OwnedFd,
    timeout: Duration,
    report: impl Fn(News) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("actix-endless-readiness".into())
        .spawn(move || {
            let news = await_ready(&ready, timeout);
            let serving = matches!(news, News::Ready);
            report(news);
            if serving {
                report(await_resignation(&ready));
            }
        })
        .map(drop)
}

/// Child side: the write end of the pipe to the parent that started this generation.
#[derive(Debug)]
pub(crate) struct ParentPipe(OwnedFd);

impl ParentPipe {
    /// Wraps the inherited write end.
    pub(crate) fn new(fd: OwnedFd) -> ParentPipe {
        ParentPipe(fd)
    }

    /// Tells the parent this process serves; the pipe stays open.
    pub(crate) fn report_ready(&self) -> io::Result<()> {
        sys::write_byte(self.0.as_fd(), READY)
    }

    /// Calls `gone` from a thread of its own once the parent has closed its end (it exited),
    /// so that this process can close its own end too.
    pub(crate) fn on_parent_gone(&self, gone: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let fd = sys::dup_cloexec_above(self.0.as_fd(), 3)?;
        std::thread::Builder::new()
            .name("actix-endless-parent".into())
            .spawn(move || {
                if sys::wait_reader_gone(fd.as_fd()).is_ok() {
                    drop(fd);
                    gone();
                }
            })
            .map(drop)
    }

    /// Tells the parent this process will not serve, and why; closes the pipe.
    pub(crate) fn refuse(self, reason: &str) -> io::Result<()> {
        sys::write_byte(self.0.as_fd(), REFUSED)?;
        for byte in reason.bytes().take(MAX_REASON) {
            sys::write_byte(self.0.as_fd(), byte)?;
        }
        Ok(())
    }

    /// Tells the parent this process no longer is the newest serving generation, and closes
    /// the pipe.
    pub(crate) fn resign(self) -> io::Result<()> {
        sys::write_byte(self.0.as_fd(), RESIGNED)
    }
}
