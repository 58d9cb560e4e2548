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
//! | `SIGINT`, `SIGTERM`, `SIGQUIT` | `SIGTERM` the worker (it drains), then exit with its status; a second one forces |
//! | `SIGUSR2` | `SIGUSR2` every worker (forced close), then exit |
//! | `SIGUSR1`, `SIGTSTP` | the master's hooks, then forwarded to the worker's hooks |
//!
//! A worker that dies unexpectedly is restarted with exponential back-off. The master reaps
//! every child, orphans included, so it can run as a container's PID 1. It is event driven:
//! child exits arrive as `SIGCHLD`, and it sleeps unless a restart is scheduled.

use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde_json::json;

use crate::child::{self, Executable, News, Process, Role};
use crate::config::Settings;
use crate::control::{ControlSlot, Watchers};
use crate::decide::{self, MIN_BACKOFF};
use crate::error::{Error, Result};
use crate::event::{self, Event};
use crate::listeners::Listener;
use crate::notify;
use crate::report::{self, Reporter, SocketFiles};
use crate::signals::{Action, Signal};
use crate::sys::{self, Exit, OsSignal};

mod control;
mod phase;

use phase::{describe, Phase, Starting, Worker};

/// How long a worker that is given up on has to end by itself before its group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// The stable-pid master: owns the workers, the sockets and the service's exit status.
pub(crate) struct Master {
    reporter: Reporter,
    settings: Settings,
    exe: Executable,
    listeners: Vec<Listener>,
    socket_files: SocketFiles,
    tx: Sender<Event>,
    /// Old workers told to drain.
    draining: Vec<Worker>,
    last_generation: u64,
    backoff: Duration,
    /// Whether any worker has reported ready (the pid file is written then).
    ever_ready: bool,
    /// How the last serving worker ended, once stopping.
    exit: Option<(u32, Exit)>,
    /// Why the service could not start.
    failure: Option<Error>,
    /// When the stop began, and when its progress was last reported.
    stopping: Option<(Instant, Instant)>,
    /// The control socket and its accept loop.
    control: ControlSlot,
    /// Control-socket clients waiting for the upgrade in progress, and after a hand-over, for
    /// the old worker's drain: (old worker's pid, new worker, its clients).
    upgrade_watchers: Watchers,
    handovers: Vec<(u32, Process, Watchers, Instant)>,
    /// Upgrades that took and that failed, and the last failure.
    tally: (u64, u64, Option<String>),
}

impl Master {
    pub(crate) fn new(
        reporter: Reporter,
        settings: Settings,
        exe: Executable,
        listeners: Vec<Listener>,
        control: Option<Listener>,
        tx: Sender<Event>,
    ) -> Master {
        Master {
            reporter,
            settings,
            exe,
            socket_files: SocketFiles::record(&listeners),
            listeners,
            tx,
            draining: Vec::new(),
            last_generation: 0,
            backoff: MIN_BACKOFF,
            ever_ready: false,
            exit: None,
            failure: None,
            stopping: None,
            control: control.map(|socket| (socket, None)),
            upgrade_watchers: Watchers::default(),
            handovers: Vec::new(),
            tally: (0, 0, None),
        }
    }

    /// Runs until the service is stopped; returns an error if the last worker failed.
    pub(crate) fn run(mut self, rx: Receiver<Event>) -> Result<()> {
        let who = self.reporter.who;
        info!(
            "{who}: holding {} and starting the first worker",
            report::shown(&self.listeners)
        );
        // Orphaned descendants (a worker's children) are reparented to us and reaped below,
        // whether or not this process is PID 1.
        if let Err(e) = sys::become_child_subreaper() {
            warn!("{who}: cannot become a child subreaper: {e}");
        }
        self.answer_control();
        let mut phase = match self.start_worker(None) {
            Ok(starting) => Phase::FirstStart(starting),
            Err((worker, error)) => self.worker_failed(None, worker, error, None),
        };
        // Children that ended before the signal handler was installed.
        phase = self.reap(phase);
        while !self.finished(&phase) {
            let now = Instant::now();
            let restart = match &phase {
                Phase::Down { restart_at } => Some(restart_at.saturating_duration_since(now)),
                _ => None,
            };
            let progress = self.stopping.map(|(_, reported)| {
                (reported + decide::PROGRESS_EVERY).saturating_duration_since(now)
            });
            let wake = [restart, progress, self.reporter.watchdog_due_in()]
                .into_iter()
                .flatten()
                .min();
            let Ok(event) = event::next(&rx, wake) else {
                break;
            };
            if let Some(event) = event {
                phase = self.on_event(phase, event);
            }
            self.reporter.watchdog();
            self.report_progress(&phase);
            if let Phase::Down { restart_at } = phase {
                if Instant::now() >= restart_at {
                    phase = self.restart();
                }
            }
        }
        self.reporter.finish();
        if let Some(failure) = self.failure {
            return Err(failure);
        }
        match self.exit {
            None => Ok(()),
            Some((_, exit)) if exit.success() => Ok(()),
            Some((pid, exit)) => Err(Error::ChildExited {
                pid,
                status: exit.to_string(),
            }),
        }
    }

    /// During a stop, every few seconds: how many workers still drain.
    fn report_progress(&mut self, phase: &Phase) {
        let Some((since, reported)) = &mut self.stopping else {
            return;
        };
        if reported.elapsed() < decide::PROGRESS_EVERY {
            return;
        }
        *reported = Instant::now();
        let since = *since;
        let current = match phase {
            Phase::Stopping { current, .. } => *current,
            _ => None,
        };
        let workers: Vec<String> = self.draining.iter().chain(&current).map(describe).collect();
        self.reporter.progress(
            &format!("{} worker(s) ({})", workers.len(), workers.join(", ")),
            since.elapsed(),
            self.settings.hammer_time,
            true,
        );
    }

    fn finished(&self, phase: &Phase) -> bool {
        matches!(phase, Phase::Stopping { current: None, .. }) && self.draining.is_empty()
    }

    fn on_event(&mut self, phase: Phase, event: Event) -> Phase {
        match event {
            Event::Signal(signal) => {
                self.reporter.pre(signal);
                self.act(phase, signal.action(), Some(signal))
            }
            Event::Command(action) => self.act(phase, action, None),
            Event::Child { pid, news } => self.on_news(phase, pid, news),
            Event::ChildEnded => self.reap(phase),
            Event::Control(request) => self.on_request(phase, request),
            Event::Serving | Event::ServerStopped | Event::ParentGone => phase,
        }
    }

    fn act(&mut self, phase: Phase, action: Action, signal: Option<Signal>) -> Phase {
        let who = self.reporter.who;
        match action {
            Action::Upgrade => match phase {
                Phase::Running {
                    current,
                    next: None,
                } => {
                    self.socket_files.warn_changes(&who);
                    self.reporter.notify(&[
                        "RELOADING=1",
                        &notify::monotonic_usec(),
                        "STATUS=starting a new worker",
                    ]);
                    match self.start_worker(signal) {
                        Ok(next) => Phase::Running {
                            current,
                            next: Some(next),
                        },
                        Err((worker, error)) => {
                            self.worker_failed(Some(current), worker, error, signal)
                        }
                    }
                }
                Phase::Down { .. } => {
                    info!("{who}: upgrade requested while no worker serves: starting one now");
                    self.reporter.post(signal);
                    self.restart()
                }
                other => {
                    let why = match other {
                        Phase::Stopping { .. } => "stopping",
                        _ => "a new worker is starting",
                    };
                    info!("{who}: upgrade ignored: {why}");
                    self.reporter.post(signal);
                    self.upgrade_watchers
                        .failed(&format!("upgrade ignored: {why}"));
                    other
                }
            },
            Action::GracefulStop => {
                self.reporter.post_at_exit(signal);
                match phase {
                    Phase::Stopping { .. } => {
                        info!("{who}: second stop request: forcing the workers closed");
                        self.stop_forced(phase)
                    }
                    other => {
                        info!("{who}: graceful stop: draining the workers");
                        let now = Instant::now();
                        self.stopping = Some((now, now));
                        self.reporter
                            .notify(&["STOPPING=1", "STATUS=stopping: draining the workers"]);
                        let current = self.abandon_next(other);
                        if let Some(worker) = current {
                            worker.process.signal(OsSignal::SIGTERM);
                        }
                        Phase::Stopping { current }
                    }
                }
            }
            Action::ForceStop => {
                self.reporter.post_at_exit(signal);
                self.stop_forced(phase)
            }
            Action::HooksOnly => {
                let current = match &phase {
                    Phase::Running { current, .. } => Some(*current),
                    Phase::Stopping { current, .. } => *current,
                    _ => None,
                };
                if let (Some(signal), Some(worker)) = (signal, current) {
                    if let Ok(os) = OsSignal::try_from(signal.number()) {
                        worker.process.signal(os);
                    }
                }
                self.reporter.post(signal);
                phase
            }
        }
    }

    fn stop_forced(&mut self, phase: Phase) -> Phase {
        let now = Instant::now();
        self.stopping.get_or_insert((now, now));
        self.reporter
            .notify(&["STOPPING=1", "STATUS=stopping: closing every connection"]);
        let current = self.abandon_next(phase);
        for worker in current.iter().chain(&self.draining) {
            worker.process.signal(OsSignal::SIGUSR2);
        }
        Phase::Stopping { current }
    }

    /// Gives up on a worker that is starting, if any; returns the worker that serves.
    fn abandon_next(&mut self, phase: Phase) -> Option<Worker> {
        let (current, next) = match phase {
            Phase::FirstStart(next) | Phase::Replacing(next) => (None, Some(next)),
            Phase::Running { current, next } => (Some(current), next),
            Phase::Down { .. } => (None, None),
            Phase::Stopping { current, .. } => (current, None),
        };
        if let Some(next) = next {
            self.give_up(&next, "that was starting", Some(OsSignal::SIGTERM));
            self.reporter.post(next.signal);
            self.upgrade_watchers
                .failed("the service is stopping: the new worker was abandoned");
        }
        current
    }

    /// Starts the next worker.
    fn start_worker(
        &mut self,
        signal: Option<Signal>,
    ) -> Result<Starting, (Option<Worker>, Error)> {
        let who = self.reporter.who;
        let generation = self.last_generation + 1;
        let role = Role::Worker { master: who.pid };
        let spawned = child::spawn(
            &self.exe,
            &self.listeners.iter().collect::<Vec<_>>(),
            generation,
            role,
        )
        .map_err(|e| (None, e))?;
        self.last_generation = generation;
        let process = spawned.process;
        let timeout = self.settings.upgrade_timeout;
        info!("{who}: worker generation {generation} started as pid {}; waiting up to {timeout:?} for it to report ready", process.pid);
        let starting = Starting {
            worker: Worker {
                process,
                since: Instant::now(),
            },
            signal,
            exited: None,
        };
        let tx = self.tx.clone();
        let pid = process.pid;
        let watched = child::watch(spawned.ready, timeout, move |news| {
            let _ = tx.send(Event::Child { pid, news });
        });
        if let Err(e) = watched {
            self.give_up(&starting, "no thread to watch its readiness", None);
            return Err((
                Some(starting.worker),
                Error::io("starting the readiness watcher")(e),
            ));
        }
        Ok(starting)
    }

    /// Starts a worker while none serves.
    fn restart(&mut self) -> Phase {
        match self.start_worker(None) {
            Ok(starting) => Phase::Replacing(starting),
            Err((worker, error)) => self.worker_failed(None, worker, error, None),
        }
    }

    /// A new worker could not start; `current` (if any) serves on.
    fn worker_failed(
        &mut self,
        current: Option<Worker>,
        worker: Option<Worker>,
        error: Error,
        signal: Option<Signal>,
    ) -> Phase {
        let who = self.reporter.who;
        let what = worker.map_or_else(|| "a new worker".to_owned(), |w| describe(&w));
        let phase = match current {
            Some(current) => {
                error!(
                    "{who}: upgrade failed: {what}: {error}; {} keeps serving",
                    describe(&current)
                );
                Phase::Running {
                    current,
                    next: None,
                }
            }
            None if !self.ever_ready => {
                error!("{who}: the first worker failed: {what}: {error}; exiting");
                Phase::Stopping { current: None }
            }
            None => {
                let (delay, backoff) = decide::restart_delay(self.backoff, None);
                self.backoff = backoff;
                error!("{who}: {what} failed: {error}; retrying in {delay:?}");
                Phase::Down {
                    restart_at: Instant::now() + delay,
                }
            }
        };
        self.reporter
            .upgrade_failed(&error, &format!("worker start failed: {error}"));
        self.reporter.post(signal);
        self.tally.1 += 1;
        self.tally.2 = Some(error.to_string());
        self.upgrade_watchers.failed(&error.to_string());
        if current.is_none() && !self.ever_ready {
            self.failure = Some(error);
        }
        phase
    }

    fn on_news(&mut self, phase: Phase, pid: u32, news: News) -> Phase {
        let (current, starting) = match phase {
            Phase::FirstStart(next) | Phase::Replacing(next) if next.worker.process.pid == pid => {
                (None, next)
            }
            Phase::Running {
                current,
                next: Some(next),
            } if next.worker.process.pid == pid => (Some(current), next),
            // After `Ready` a worker's pipe only says that it drains or died, which the
            // master learns from the stop it asked for and from `SIGCHLD`.
            other => return other,
        };
        let error = match news {
            News::Ready => return self.promote(current, starting),
            other => other.failure(pid, self.settings.upgrade_timeout, |why, first| {
                self.give_up(&starting, why, first)
            }),
        };
        self.worker_failed(current, Some(starting.worker), error, starting.signal)
    }

    /// Gives up on a starting worker: kills its process group and reaps it (unless its exit
    /// was reaped already).
    fn give_up(&self, starting: &Starting, why: &str, first: Option<OsSignal>) -> String {
        let worker = &starting.worker;
        let status = match starting.exited {
            Some(exit) => {
                worker.process.kill_descendants();
                Some(exit)
            }
            None => worker.process.abandon(first, EXIT_GRACE),
        };
        let status = status.map_or_else(|| "not reaped".to_owned(), |e| e.to_string());
        warn!(
            "{}: abandoning {} ({why}): {status}",
            self.reporter.who,
            describe(worker)
        );
        status
    }

    /// A new worker is ready: it becomes the current one and the old one drains.
    fn promote(&mut self, current: Option<Worker>, starting: Starting) -> Phase {
        let who = self.reporter.who;
        let worker = starting.worker;
        info!(
            "{who}: {} is ready after {:?}",
            describe(&worker),
            worker.since.elapsed()
        );
        if !self.ever_ready {
            self.reporter.rewrite_pid_file();
            self.ever_ready = true;
        }
        let mut watchers = std::mem::take(&mut self.upgrade_watchers);
        watchers.event(
            "ready",
            json!({ "pid": worker.process.pid, "after_ms": worker.since.elapsed().as_millis() as u64 }),
        );
        if let Some(old) = current {
            info!("{who}: telling {} to drain", describe(&old));
            old.process.signal(OsSignal::SIGTERM);
            self.draining.push(old);
            self.reporter
                .upgrade_ready(worker.process.pid, worker.process.generation);
            watchers.event("draining", json!({ "worker_pid": old.process.pid }));
            self.handovers
                .push((old.process.pid, worker.process, watchers, Instant::now()));
        } else {
            watchers.ok(worker.process.pid, worker.process.generation);
        }
        self.reporter.serving(
            worker.process.generation,
            &self.listeners,
            &format!("{} serving", describe(&worker)),
        );
        self.reporter.post(starting.signal);
        Phase::Running {
            current: worker,
            next: None,
        }
    }

    /// Collects every child that has ended, workers and orphans alike.
    fn reap(&mut self, mut phase: Phase) -> Phase {
        while let Some((pid, exit)) = sys::reap_any() {
            phase = self.on_exit(phase, pid, exit);
        }
        phase
    }

    fn on_exit(&mut self, phase: Phase, pid: u32, exit: Exit) -> Phase {
        let who = self.reporter.who;
        if let Some(i) = self.draining.iter().position(|w| w.process.pid == pid) {
            let worker = self.draining.remove(i);
            info!("{who}: {} finished draining: {exit}", describe(&worker));
            self.handed_over(pid);
            return phase;
        }
        match phase {
            Phase::FirstStart(mut next) | Phase::Replacing(mut next)
                if next.worker.process.pid == pid =>
            {
                // The readiness watcher reports the failure (end of file on the pipe).
                info!("{who}: starting worker pid {pid} ended: {exit}");
                next.exited = Some(exit);
                if self.ever_ready {
                    Phase::Replacing(next)
                } else {
                    Phase::FirstStart(next)
                }
            }
            Phase::Running {
                current,
                next: Some(mut next),
            } if next.worker.process.pid == pid => {
                info!("{who}: starting worker pid {pid} ended: {exit}");
                next.exited = Some(exit);
                Phase::Running {
                    current,
                    next: Some(next),
                }
            }
            Phase::Stopping {
                current: Some(current),
            } if current.process.pid == pid => {
                info!("{who}: {} stopped: {exit}", describe(&current));
                self.exit = Some((pid, exit));
                Phase::Stopping { current: None }
            }
            Phase::Running { current, next } if current.process.pid == pid => {
                let served = current.since.elapsed();
                let (delay, backoff) = decide::restart_delay(self.backoff, Some(served));
                self.backoff = backoff;
                self.reporter
                    .notify(&[&format!("STATUS=worker died ({exit}); restarting")]);
                match next {
                    Some(next) => {
                        error!("{who}: {} died unexpectedly ({exit}); the worker that is starting replaces it", describe(&current));
                        Phase::Replacing(next)
                    }
                    None => {
                        error!(
                            "{who}: {} died unexpectedly ({exit}); starting another in {delay:?}",
                            describe(&current)
                        );
                        Phase::Down {
                            restart_at: Instant::now() + delay,
                        }
                    }
                }
            }
            other => {
                debug!("{who}: reaped orphan pid {pid}: {exit}");
                other
            }
        }
    }
}
