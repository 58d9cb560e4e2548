//! Process control: signals, reaping, the parent, the subreaper flag.

use std::io;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// A signal, as the operating system numbers it.
pub(crate) use nix::sys::signal::Signal as OsSignal;

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(OsSignal),
}

impl Exit {
    /// Whether it ended by exiting with status 0.
    pub(crate) fn success(self) -> bool {
        self == Exit::Code(0)
    }

    fn from_wait(status: WaitStatus) -> Option<(u32, Exit)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw() as u32, Exit::Code(code))),
            WaitStatus::Signaled(pid, signal, _) => {
                Some((pid.as_raw() as u32, Exit::Signal(signal)))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // As `std::process::ExitStatus` says it.
            Exit::Code(code) => write!(f, "exit status: {code}"),
            Exit::Signal(signal) => write!(f, "signal: {} ({signal})", *signal as i32),
        }
    }
}

/// Sends `signal` to the process `pid`. `Ok(false)`: there is no such process (any more).
pub(crate) fn send_signal(pid: u32, signal: OsSignal) -> io::Result<bool> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to every process of the process group `pgid`. `Ok(false)`: the group is empty.
pub(crate) fn send_group_signal(pgid: u32, signal: OsSignal) -> io::Result<bool> {
    let pgid = i32::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    match nix::sys::signal::killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the child `pid` if it has ended, without blocking.
pub(crate) fn reap(pid: u32) -> Option<Exit> {
    let pid = Pid::from_raw(i32::try_from(pid).ok()?);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => return Exit::from_wait(status).map(|(_, exit)| exit),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Whether the child `pid` has ended (or is gone), without reaping it: while it is not reaped
/// its pid, and so its process group id, cannot be reused.
pub(crate) fn has_ended(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match nix::sys::wait::waitid(nix::sys::wait::Id::Pid(Pid::from_raw(raw)), flags) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// Reaps any child of this process that has ended, without blocking: its pid and how it ended.
pub(crate) fn reap_any() -> Option<(u32, Exit)> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return None,
            Ok(status) => match Exit::from_wait(status) {
                Some(exited) => return Some(exited),
                None => continue,
            },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// This process's parent.
pub(crate) fn parent_pid() -> u32 {
    nix::unistd::getppid().as_raw() as u32
}

/// Makes this process the reaper of its orphaned descendants.
pub(crate) fn become_child_subreaper() -> io::Result<()> {
    Ok(nix::sys::prctl::set_child_subreaper(true)?)
}
