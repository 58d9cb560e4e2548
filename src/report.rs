//! One reporter for both process modes: the log prefix, user hooks, systemd notifications, the
//! pid file and the post hooks of the signals that stopped the process.
//!
//! Both control loops (re-exec and master) tell the reporter what happened; it decides nothing,
//! so both modes log, notify and run hooks the same way and in the same order.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::config::HammerTime;
use crate::decide;
use crate::error::{Error, Result};
use crate::hooks::{
    run_guarded, DrainEnd, DrainStart, HookStage, Hooks, ServingEvent, UpgradeEvent,
};
use crate::listeners::{Listener, Socket};
use crate::notify::{self, Notifier};
use crate::pidfile;
use crate::signals::Signal;
use crate::sys;

/// Which process this is, for the log prefix and the hooks' events.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// A serving process of [`crate::ProcessMode::Reexec`], or a worker of a master.
    Server { generation: u64 },
    /// A stable-pid master (hooks see generation 0).
    Master,
}

/// `pid 123 generation 2` or `master pid 122`: the prefix of every lifecycle log line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who {
    pub(crate) pid: u32,
    pub(crate) role: Role,
}

impl Who {
    /// The generation hooks are told (0 for a master).
    pub(crate) fn generation(&self) -> u64 {
        match self.role {
            Role::Server { generation } => generation,
            Role::Master => 0,
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Server { generation } => write!(f, "pid {} generation {generation}", self.pid),
            Role::Master => write!(f, "master pid {}", self.pid),
        }
    }
}

/// Owns the hooks, the notification socket, the pid file and the stop signals' post hooks.
pub(crate) struct Reporter {
    pub(crate) who: Who,
    hooks: Hooks,
    notifier: Option<Notifier>,
    pid_file: Option<PathBuf>,
    /// Stop signals whose post hooks run once the process has stopped.
    final_signals: Vec<Signal>,
    /// How often systemd wants `WATCHDOG=1`, and when it was last sent.
    watchdog: Option<(Duration, Instant)>,
}

impl Reporter {
    pub(crate) fn new(
        who: Who,
        hooks: Hooks,
        notifier: Option<Notifier>,
        pid_file: Option<PathBuf>,
    ) -> Reporter {
        let watchdog = notifier
            .as_ref()
            .and(notify::watchdog_interval())
            .map(|every| (every, Instant::now()));
        Reporter {
            who,
            hooks,
            notifier,
            pid_file,
            final_signals: Vec::new(),
            watchdog,
        }
    }

    /// Tells systemd (when it listens) what is happening.
    pub(crate) fn notify(&self, lines: &[&str]) {
        if let Some(notifier) = &self.notifier {
            if let Err(e) = notifier.send(lines) {
                warn!("{}: cannot notify systemd: {e}", self.who);
            }
        }
    }

    /// How long until the next `WATCHDOG=1` is due (`None`: no watchdog).
    pub(crate) fn watchdog_due_in(&self) -> Option<Duration> {
        self.watchdog
            .map(|(every, sent)| every.saturating_sub(sent.elapsed()))
    }

    /// Sends `WATCHDOG=1` if it is due.
    pub(crate) fn watchdog(&mut self) {
        if let Some((every, sent)) = &mut self.watchdog {
            if sent.elapsed() >= *every {
                *sent = Instant::now();
                self.notify(&["WATCHDOG=1"]);
            }
        }
    }

    /// A long drain's progress: `what` (e.g. `2 connection(s), 1 request(s) in flight`) in the
    /// log and, for a stop, in `STATUS=` with `EXTEND_TIMEOUT_USEC=`, so that systemd's stop
    /// timeout follows the hammer time.
    pub(crate) fn progress(&self, what: &str, elapsed: Duration, hammer: HammerTime, stop: bool) {
        let (left, extend) = decide::time_left(hammer, elapsed);
        let left = match left {
            Some(left) => format!("{}s before hammer time", left.as_secs()),
            None => "no hammer time".to_owned(),
        };
        info!("{}: draining for {elapsed:.1?}: {what}, {left}", self.who);
        if stop {
            self.notify(&[
                &format!("STATUS=stopping: draining {what}, {left}"),
                &format!("EXTEND_TIMEOUT_USEC={}", extend.as_micros()),
            ]);
        }
    }

    /// A signal arrived: logs it and runs its pre hooks.
    pub(crate) fn pre(&self, signal: Signal) {
        info!("{}: {signal} received", self.who);
        self.hooks
            .run_signal(HookStage::Pre.event(signal, self.who.pid, self.who.generation()));
    }

    /// Runs the post hooks of `signal` now, if the action came from a signal.
    pub(crate) fn post(&self, signal: Option<Signal>) {
        if let Some(signal) = signal {
            self.hooks.run_signal(HookStage::Post.event(
                signal,
                self.who.pid,
                self.who.generation(),
            ));
        }
    }

    /// Keeps `signal`'s post hooks for the end of the process (a stop).
    pub(crate) fn post_at_exit(&mut self, signal: Option<Signal>) {
        self.final_signals.extend(signal);
    }

    /// Writes the pid file (if configured) with `pid`.
    pub(crate) fn write_pid_file(&self, pid: u32) -> Result<()> {
        match &self.pid_file {
            Some(path) => pidfile::write(path, pid),
            None => Ok(()),
        }
    }

    /// Writes the pid file, logging a failure instead of returning it.
    pub(crate) fn rewrite_pid_file(&self) {
        if let Err(e) = self.write_pid_file(self.who.pid) {
            error!("{}: {e}", self.who);
        }
    }

    /// `generation` serves on `listeners`: systemd hears `MAINPID` (always this process),
    /// `READY=1` and `status`, then the serving hooks run.
    pub(crate) fn serving(&self, generation: u64, listeners: &[Listener], status: &str) {
        self.notify(&[
            &format!("MAINPID={}", self.who.pid),
            "READY=1",
            &format!("STATUS={status}"),
        ]);
        let event = ServingEvent {
            pid: self.who.pid,
            generation,
            addrs: tcp_addrs(listeners),
        };
        for hook in &self.hooks.serving {
            run_guarded("serving", || hook(&event));
        }
    }

    /// A new generation reported ready and this process hands over to it.
    pub(crate) fn upgrade_ready(&self, new_pid: u32, new_generation: u64) {
        let event = UpgradeEvent {
            pid: self.who.pid,
            new_pid,
            new_generation,
        };
        for hook in &self.hooks.upgrade_ready {
            run_guarded("upgrade-ready", || hook(&event));
        }
    }

    /// A drain began.
    pub(crate) fn drain_start(&self, event: DrainStart) {
        for hook in &self.hooks.drain_start {
            run_guarded("drain-start", || hook(&event));
        }
    }

    /// A drain ended: logs how, and runs the drain-end hooks.
    pub(crate) fn drain_end(&self, event: DrainEnd) {
        info!(
            "{}: drain ended after {:?}: {} connection(s) ended on their own, {} idle closed, {} cut",
            self.who, event.duration, event.ended_on_their_own, event.idle_closed, event.cut
        );
        for hook in &self.hooks.drain_end {
            run_guarded("drain-end", || hook(&event));
        }
    }

    /// An upgrade failed and `status` says who serves on.
    pub(crate) fn upgrade_failed(&self, error: &Error, status: &str) {
        self.notify(&["READY=1", &format!("STATUS={status}")]);
        for hook in &self.hooks.upgrade_failed {
            run_guarded("upgrade-failed", || hook(error));
        }
    }

    /// The end of the process: the stop signals' post hooks, then the pid file is removed if it
    /// still names this process.
    pub(crate) fn finish(self) {
        for signal in &self.final_signals {
            self.post(Some(*signal));
        }
        if let Some(path) = &self.pid_file {
            match pidfile::remove_if_ours(path, self.who.pid) {
                Ok(true) => info!("{}: removed pid file {}", self.who, path.display()),
                Ok(false) => {}
                Err(e) => warn!("{}: {e}", self.who),
            }
        }
        info!("{}: exiting", self.who);
    }
}

/// The TCP addresses of `listeners` (what the serving hooks are told).
pub(crate) fn tcp_addrs(listeners: &[Listener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter_map(|l| match &l.socket {
            Socket::Tcp(t) => t.local_addr().ok(),
            Socket::Unix(_) => None,
        })
        .collect()
}

/// `127.0.0.1:8080, unix:/run/app.sock`: how log lines and statuses name the listeners.
pub(crate) fn shown(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| l.socket.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The files of this process's Unix sockets as they were at start-up, to notice when one is
/// deleted or replaced under the running server.
pub(crate) struct SocketFiles(Vec<(PathBuf, Option<(u64, u64)>)>);

impl SocketFiles {
    /// Records the device and inode of each Unix listener's socket file.
    pub(crate) fn record(listeners: &[Listener]) -> SocketFiles {
        SocketFiles(
            listeners
                .iter()
                .filter_map(|l| match sys::LocalAddr::of(l.socket.fd()) {
                    Some(sys::LocalAddr::Unix(path)) => {
                        let id = file_id(&path);
                        Some((path, id))
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// Warns about each socket file that is gone or replaced since start-up: clients that
    /// connect by path no longer reach this server, and only a restart creates it again.
    pub(crate) fn warn_changes(&self, who: &Who) {
        for (path, recorded) in &self.0 {
            match (file_id(path), recorded) {
                (None, _) => warn!(
                    "{who}: the socket file {} is missing (deleted under the running server): clients connecting by path cannot reach it; a restart (not an upgrade) creates it again",
                    path.display()
                ),
                (Some(now), Some(then)) if now != *then => warn!(
                    "{who}: the socket file {} was replaced by another file since start-up: clients connecting by path reach that file, not this server",
                    path.display()
                ),
                _ => {}
            }
        }
    }
}

fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}
