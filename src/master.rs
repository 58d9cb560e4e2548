//! Stable-pid mode: a small master that keeps its pid and the listening sockets while server
//! generations (workers) come and go.
//!
//! The master never starts an actix runtime and never serves a request. It binds or adopts the
//! sockets, starts each worker with the same inheritance and readiness code as a `SIGHUP`
//! re-exec, and turns signals into worker changes:
//!
//! | signal to the master | effect |
//! |---|---|
//! | `SIGHUP` | start a new worker; once it is ready, `SIGTERM` the old one (it drains) |
//! | `SIGINT`, `SIGTERM` | `SIGTERM` the worker (it drains), then exit with its status; a second one forces |
//! | `SIGUSR2` | `SIGUSR2` every worker (forced close), then exit |
//! | `SIGUSR1`, `SIGTSTP` | the master's hooks, then forwarded to the worker's hooks |
//!
//! A worker that dies unexpectedly is restarted with exponential back-off. The master reaps
//! every child, orphans included, so it can run as a container's PID 1.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::child::{self, Executable, Readiness};
use crate::error::{Error, Result};
use crate::hooks::{run_guarded, HookStage, Hooks, ServingEvent, UpgradeEvent};
use crate::listeners::{Listener, Socket};
use crate::notify::{self, Notifier};
use crate::pidfile;
use crate::runtime::{Event, Settings};
use crate::signals::{Action, Signal};

/// How often the master reaps children and checks its timers.
const TICK: Duration = Duration::from_millis(20);
/// The first restart delay after a worker died; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a worker that closed its readiness pipe has to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// A worker that served this long before dying resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// A worker process.
#[derive(Debug, Clone, Copy)]
struct Worker {
    pid: u32,
    generation: u64,
    since: Instant,
}

/// How the master is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Graceful,
    Forced,
}

pub(crate) struct Master {
    pid: u32,
    settings: Settings,
    hooks: Hooks,
    exe: Executable,
    listeners: Vec<Listener>,
    notifier: Option<Notifier>,
    tx: Sender<Event>,
    /// The worker that serves.
    current: Option<Worker>,
    /// A worker started but not ready yet, and the signal that asked for it.
    next: Option<(Worker, Option<Signal>)>,
    /// Old workers told to drain.
    draining: Vec<Worker>,
    last_generation: u64,
    stop: Option<Stop>,
    final_signals: Vec<Signal>,
    /// When to start a replacement for a worker that died, and the delay used.
    restart_at: Option<Instant>,
    backoff: Duration,
    /// How the last serving worker ended, once stopping.
    exit: Option<WaitStatus>,
    /// Whether any worker has reported ready: a first worker that fails ends the service.
    ever_ready: bool,
    /// Why the service could not start.
    failure: Option<String>,
}

impl Master {
    pub(crate) fn new(
        settings: Settings,
        hooks: Hooks,
        exe: Executable,
        listeners: Vec<Listener>,
        notifier: Option<Notifier>,
        tx: Sender<Event>,
    ) -> Master {
        Master {
            pid: std::process::id(),
            settings,
            hooks,
            exe,
            listeners,
            notifier,
            tx,
            current: None,
            next: None,
            draining: Vec::new(),
            last_generation: 0,
            stop: None,
            final_signals: Vec::new(),
            restart_at: None,
            backoff: MIN_BACKOFF,
            exit: None,
            ever_ready: false,
            failure: None,
        }
    }

    /// Runs until the service is stopped; returns an error if the last worker failed.
    pub(crate) fn run(mut self, rx: Receiver<Event>) -> Result<()> {
        let shown: Vec<String> = self
            .listeners
            .iter()
            .map(|l| l.socket.to_string())
            .collect();
        info!(
            "master pid {}: holding {} and starting the first worker",
            self.pid,
            shown.join(", ")
        );
        // Orphaned descendants (a worker's children) are reparented to us and reaped below,
        // whether or not this process is PID 1.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(
                "master pid {}: cannot become a child subreaper: {e}",
                self.pid
            );
        }
        self.start_worker(None);
        loop {
            match rx.recv_timeout(TICK) {
                Ok(Event::Signal(signal)) => self.on_signal(signal),
                Ok(Event::Command(action)) => self.act(action, None),
                Ok(Event::Readiness { pid, readiness }) => self.on_readiness(pid, readiness),
                Ok(Event::Serving | Event::ServerStopped) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.reap();
            if self.stop.is_none() && self.restart_at.is_some_and(|at| Instant::now() >= at) {
                self.restart_at = None;
                self.start_worker(None);
            }
            if self.stop.is_some()
                && self.current.is_none()
                && self.next.is_none()
                && self.draining.is_empty()
            {
                break;
            }
        }
        for signal in &self.final_signals {
            self.hooks
                .run_signal(HookStage::Post.event(*signal, self.pid, 0));
        }
        if let Some(path) = &self.settings.pid_file {
            match pidfile::remove_if_ours(path, self.pid) {
                Ok(true) => info!(
                    "master pid {}: removed pid file {}",
                    self.pid,
                    path.display()
                ),
                Ok(false) => {}
                Err(e) => warn!("master pid {}: {e}", self.pid),
            }
        }
        info!("master pid {}: exiting", self.pid);
        if let Some(failure) = self.failure {
            return Err(Error::Io {
                context: "starting the first worker",
                source: std::io::Error::other(failure),
            });
        }
        match self.exit {
            Some(WaitStatus::Exited(_, 0)) | None => Ok(()),
            Some(status) => Err(Error::ChildExited {
                pid: status.pid().map_or(0, |p| p.as_raw() as u32),
                status: describe(status),
            }),
        }
    }

    fn notify(&self, lines: &[&str]) {
        if let Some(notifier) = &self.notifier {
            if let Err(e) = notifier.send(lines) {
                warn!("master pid {}: cannot notify systemd: {e}", self.pid);
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        info!("master pid {}: {signal} received", self.pid);
        self.hooks
            .run_signal(HookStage::Pre.event(signal, self.pid, 0));
        self.act(signal.action(), Some(signal));
    }

    fn post(&self, signal: Option<Signal>) {
        if let Some(signal) = signal {
            self.hooks
                .run_signal(HookStage::Post.event(signal, self.pid, 0));
        }
    }

    fn act(&mut self, action: Action, signal: Option<Signal>) {
        match action {
            Action::Upgrade => {
                if self.stop.is_some() {
                    info!("master pid {}: upgrade ignored: stopping", self.pid);
                    self.post(signal);
                } else if self.next.is_some() {
                    info!(
                        "master pid {}: upgrade ignored: a new worker is starting",
                        self.pid
                    );
                    self.post(signal);
                } else {
                    self.notify(&[
                        "RELOADING=1",
                        &notify::monotonic_usec(),
                        "STATUS=starting a new worker",
                    ]);
                    self.start_worker(signal);
                }
            }
            Action::GracefulStop => {
                self.final_signals.extend(signal);
                self.stop_graceful();
            }
            Action::ForceStop => {
                self.final_signals.extend(signal);
                self.stop_forced();
            }
            Action::HooksOnly => {
                if let (Some(signal), Some(worker)) = (signal, self.current) {
                    send(worker.pid, signal.number());
                }
                self.post(signal);
            }
        }
    }

    fn start_worker(&mut self, signal: Option<Signal>) {
        let generation = self.last_generation + 1;
        let spawned = match child::spawn(&self.exe, &self.listeners, generation, Some(self.pid)) {
            Ok(spawned) => spawned,
            Err(e) => return self.worker_failed(None, e, signal),
        };
        self.last_generation = generation;
        let pid = spawned.child.id();
        // The master reaps with waitpid(-1) (it may be PID 1), so it tracks pids, not `Child`.
        drop(spawned.child);
        let timeout = self.settings.upgrade_timeout;
        info!("master pid {}: worker generation {generation} started as pid {pid}; waiting up to {timeout:?} for it to report ready", self.pid);
        let worker = Worker {
            pid,
            generation,
            since: Instant::now(),
        };
        self.next = Some((worker, signal));
        if let Err(e) = child::watch(spawned.ready, pid, timeout, self.tx.clone()) {
            self.next = None;
            send(pid, libc::SIGKILL);
            self.worker_failed(
                Some(worker),
                Error::io("starting the readiness watcher")(e),
                signal,
            );
        }
    }

    /// A new worker could not start; the old one (if any) serves on.
    fn worker_failed(&mut self, worker: Option<Worker>, error: Error, signal: Option<Signal>) {
        let what = worker.map_or_else(
            || "a new worker".to_owned(),
            |w| format!("worker generation {} (pid {})", w.generation, w.pid),
        );
        match self.current {
            Some(current) => error!(
                "master pid {}: upgrade failed: {what}: {error}; worker generation {} (pid {}) keeps serving",
                self.pid, current.generation, current.pid
            ),
            None if !self.ever_ready => {
                error!("master pid {}: the first worker failed: {what}: {error}; exiting", self.pid);
                self.stop = Some(Stop::Forced);
                self.failure = Some(error.to_string());
            }
            None => {
                error!("master pid {}: {what} failed: {error}; retrying in {:?}", self.pid, self.backoff);
                self.schedule_restart();
            }
        }
        self.notify(&["READY=1", &format!("STATUS=worker start failed: {error}")]);
        for hook in &self.hooks.upgrade_failed {
            run_guarded("upgrade-failed", || hook(&error));
        }
        self.post(signal);
    }

    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn on_readiness(&mut self, pid: u32, readiness: Readiness) {
        let Some((worker, signal)) = self.next.filter(|(w, _)| w.pid == pid) else {
            return;
        };
        self.next = None;
        let error = match readiness {
            Readiness::Ready => return self.promote(worker, signal),
            // It is usually exiting: give it a moment, so its own status is what we report.
            Readiness::Closed => Error::ChildExited {
                pid,
                status: reap_within(pid, EXIT_GRACE)
                    .map_or_else(|| "closed the readiness pipe".to_owned(), describe),
            },
            Readiness::TimedOut => Error::ReadyTimeout {
                pid,
                timeout: self.settings.upgrade_timeout,
            },
            Readiness::Failed(source) => Error::Io {
                context: "reading the readiness pipe",
                source,
            },
        };
        // It will not serve: make sure it is gone; `reap` collects it.
        send(pid, libc::SIGKILL);
        self.worker_failed(Some(worker), error, signal);
    }

    /// A new worker is ready: it becomes the current one and the old one drains.
    fn promote(&mut self, worker: Worker, signal: Option<Signal>) {
        let pid = self.pid;
        info!(
            "master pid {pid}: worker generation {} (pid {}) is ready after {:?}",
            worker.generation,
            worker.pid,
            worker.since.elapsed()
        );
        if !self.ever_ready {
            if let Some(path) = &self.settings.pid_file {
                if let Err(e) = pidfile::write(path, pid) {
                    error!("master pid {pid}: {e}");
                }
            }
            self.ever_ready = true;
        }
        if let Some(old) = self.current.replace(worker) {
            info!(
                "master pid {pid}: telling worker generation {} (pid {}) to drain",
                old.generation, old.pid
            );
            send(old.pid, libc::SIGTERM);
            self.draining.push(old);
            let event = UpgradeEvent {
                pid,
                new_pid: worker.pid,
                new_generation: worker.generation,
            };
            for hook in &self.hooks.upgrade_ready {
                run_guarded("upgrade-ready", || hook(&event));
            }
        }
        self.notify(&[
            &format!("MAINPID={pid}"),
            "READY=1",
            &format!(
                "STATUS=worker generation {} (pid {}) serving",
                worker.generation, worker.pid
            ),
        ]);
        let event = ServingEvent {
            pid,
            generation: worker.generation,
            addrs: self
                .listeners
                .iter()
                .filter_map(|l| match &l.socket {
                    Socket::Tcp(t) => t.local_addr().ok(),
                    Socket::Unix(_) => None,
                })
                .collect(),
        };
        for hook in &self.hooks.serving {
            run_guarded("serving", || hook(&event));
        }
        self.post(signal);
        if self.stop.is_some() {
            // A stop arrived while it started: it drains like the others.
            self.stop_worker(worker, Stop::Graceful);
        }
    }

    fn stop_graceful(&mut self) {
        let pid = self.pid;
        match self.stop {
            Some(_) => {
                info!("master pid {pid}: second stop request: forcing the workers closed");
                self.stop_forced();
            }
            None => {
                info!("master pid {pid}: graceful stop: draining the workers");
                self.notify(&["STOPPING=1", "STATUS=stopping: draining the workers"]);
                self.stop = Some(Stop::Graceful);
                self.abandon_next();
                if let Some(worker) = self.current {
                    self.stop_worker(worker, Stop::Graceful);
                }
            }
        }
    }

    fn stop_forced(&mut self) {
        self.notify(&["STOPPING=1", "STATUS=stopping: closing every connection"]);
        self.stop = Some(Stop::Forced);
        self.abandon_next();
        let workers: Vec<Worker> = self.current.iter().chain(&self.draining).copied().collect();
        for worker in workers {
            self.stop_worker(worker, Stop::Forced);
        }
    }

    fn stop_worker(&self, worker: Worker, how: Stop) {
        let signal = match how {
            Stop::Graceful => libc::SIGTERM,
            Stop::Forced => libc::SIGUSR2,
        };
        send(worker.pid, signal);
    }

    fn abandon_next(&mut self) {
        if let Some((worker, signal)) = self.next.take() {
            warn!(
                "master pid {}: abandoning worker generation {} (pid {}) that was starting",
                self.pid, worker.generation, worker.pid
            );
            send(worker.pid, libc::SIGKILL);
            self.post(signal);
        }
    }

    /// Collects every child that has ended, workers and orphans alike.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let Some(pid) = status.pid().map(|p| p.as_raw() as u32) else {
                return;
            };
            if !matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                continue;
            }
            self.on_exit(pid, status);
        }
    }

    fn on_exit(&mut self, pid: u32, status: WaitStatus) {
        let me = self.pid;
        let how = describe(status);
        if let Some(i) = self.draining.iter().position(|w| w.pid == pid) {
            let worker = self.draining.remove(i);
            info!(
                "master pid {me}: worker generation {} (pid {pid}) finished draining: {how}",
                worker.generation
            );
        } else if self.next.is_some_and(|(w, _)| w.pid == pid) {
            // The readiness watcher reports the failure (end of file on the pipe).
            info!("master pid {me}: starting worker pid {pid} ended: {how}");
        } else if let Some(worker) = self.current.filter(|w| w.pid == pid) {
            self.current = None;
            if self.stop.is_some() {
                info!(
                    "master pid {me}: worker generation {} (pid {pid}) stopped: {how}",
                    worker.generation
                );
                self.exit = Some(status);
            } else {
                if worker.since.elapsed() >= STABLE_AFTER {
                    self.backoff = MIN_BACKOFF;
                }
                error!(
                    "master pid {me}: worker generation {} (pid {pid}) died unexpectedly ({how}); starting another in {:?}",
                    worker.generation, self.backoff
                );
                self.notify(&[&format!("STATUS=worker died ({how}); restarting")]);
                self.schedule_restart();
            }
        } else {
            log::debug!("master pid {me}: reaped orphan pid {pid}: {how}");
        }
    }
}

/// Waits up to `grace` for the child `pid` to end and reaps it.
fn reap_within(pid: u32, grace: Duration) -> Option<WaitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Some(status)
            }
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// Sends a signal to a pid, logging failures other than "already gone".
fn send(pid: u32, signal: i32) {
    let Ok(signal) = NixSignal::try_from(signal) else {
        return;
    };
    match kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!("cannot send {signal} to pid {pid}: {e}"),
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}
