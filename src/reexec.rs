//! The control loop of a serving process: upgrades by re-execution, drains and stops.
//!
//! It runs on a thread of its own, hears every [`Event`] on one channel and drives the actix
//! server through its [`Levers`]. Where it is lives in [`State`]; each transition takes the
//! old state by value and returns the new one. When a drain may end is decided by
//! [`decide::drain`]; this loop only measures, logs and acts.

use std::os::fd::RawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use serde_json::json;

use crate::child::{self, Executable, News, ParentPipe, Process, Role};
use crate::config::Settings;
use crate::control::{ControlSlot, Watchers};
use crate::drain::TRACKER;
use crate::error::Error;
use crate::event::{self, Event};
use crate::hooks::DrainReason;
use crate::listeners::Listener;
use crate::notify;
use crate::report::{self, Reporter, SocketFiles};
use crate::server::Levers;
use crate::signals::{Action, Signal};
use crate::sys::{self, LocalAddr, OsSignal};

/// How often a drain checks whether it is done.
const DRAIN_POLL: Duration = Duration::from_millis(2);
/// How long the server has to confirm that it paused accepting.
const PAUSE_CONFIRM: Duration = Duration::from_secs(2);
/// How long a new process that is given up on has to end by itself before its process group
/// is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Where the control loop is.
enum State {
    /// The server is built but has not reported its first poll.
    Starting,
    /// Serving; ready for an upgrade.
    Serving,
    /// A new generation was started and has not reported ready yet.
    Upgrading(Upgrade),
    /// Not accepting any more; waiting for this process's connections to finish.
    Draining(Drain),
    /// The server has been told to stop; waiting for it to finish.
    Stopping,
}

/// An upgrade in progress.
struct Upgrade {
    child: Process,
    started: Instant,
    /// The signal that asked for it, whose post hooks run when it ends.
    signal: Option<Signal>,
    /// Control-socket clients waiting for its outcome.
    watchers: Watchers,
}

/// A drain in progress.
struct Drain {
    since: Instant,
    cause: DrainReason,
    /// Connections open, and ever opened, when it began.
    connections_at_start: usize,
    opened_at_start: usize,
    /// Keep-alive connections asked to close, and responses served, before it began.
    closes_at_start: usize,
    /// Responses served when the credit for closes was last updated, and the credit.
    served_seen: usize,
    close_credit: f64,
    /// Since when the accept queue has been crowded (see [`decide::close_allowance`]).
    crowded_since: Option<Instant>,
    /// When progress was last reported.
    reported: Instant,
    /// The new generation this process handed over to. While it is the newest serving
    /// generation, its death gives the sockets back to this process.
    successor: Option<Process>,
    /// Whether actix's acceptor has acted on the pause (no connection can arrive any more).
    acceptor_paused: bool,
    /// After a hand-over: control-socket clients waiting for its outcome, and the generation
    /// it handed over to.
    watchers: Watchers,
    handed_to: Option<Process>,
    /// Drained, and waiting for the commit window to end.
    quiet: bool,
}

/// What the control thread hands back when the server has stopped.
pub(crate) struct Outcome {
    pub(crate) reporter: Reporter,
    pub(crate) failure: Option<Error>,
}

mod control_socket;
mod drain_check;

/// Owns the lifecycle of a serving process: everything but the server itself.
pub(crate) struct Control {
    pub(crate) reporter: Reporter,
    pub(crate) settings: Settings,
    pub(crate) exe: Executable,
    pub(crate) tx: Sender<Event>,
    /// The stable-pid master this process is a worker of: upgrades are its job.
    pub(crate) master: Option<u32>,
    /// The pipe to the process that started this one, until this one reports ready.
    pub(crate) ready_pipe: Option<ParentPipe>,
    /// The same pipe once ready, until this process resigns as the newest generation.
    pub(crate) resign_pipe: Option<ParentPipe>,
    /// Our copies of the listening sockets: what an upgrade hands over.
    pub(crate) listeners: Vec<Listener>,
    /// Where they listen, to recognise connections accepted from them.
    pub(crate) listening: Vec<LocalAddr>,
    /// The descriptors of actix's own copies of the listening sockets.
    pub(crate) acceptor_fds: Vec<RawFd>,
    /// The epoll instances that watched them when serving began (the acceptor's), found while
    /// few descriptors are open.
    pub(crate) acceptor_epolls: Vec<RawFd>,
    pub(crate) levers: Levers,
    /// The Unix socket files as they were at start-up.
    pub(crate) socket_files: SocketFiles,
    /// The control socket (handed over with the listeners) and its accept loop, while this
    /// process is the one that answers on it.
    pub(crate) control: ControlSlot,
    /// Upgrades asked of this process that took, that failed, and the last failure.
    pub(crate) tally: Tally,
    pub(crate) failure: Option<Error>,
}

/// What this process's upgrades came to, for the status.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    ok: u64,
    failed: u64,
    last_failure: Option<String>,
}

impl Control {
    /// Runs until the server has stopped.
    pub(crate) fn run(mut self, rx: Receiver<Event>) -> Outcome {
        let mut state = State::Starting;
        loop {
            let watchdog = self.reporter.watchdog_due_in();
            let wake = match &state {
                State::Draining(_) => Some(watchdog.map_or(DRAIN_POLL, |w| w.min(DRAIN_POLL))),
                _ => watchdog,
            };
            let Ok(event) = event::next(&rx, wake) else {
                break;
            };
            self.reporter.watchdog();
            state = match event {
                Some(Event::ServerStopped) => break,
                Some(event) => self.on_event(state, event),
                None => state,
            };
            if let State::Draining(drain) = state {
                state = self.check_drain(drain);
            }
        }
        if let State::Upgrading(mut upgrade) = state {
            self.give_up(
                &upgrade.child,
                "the server stopped",
                Some(OsSignal::SIGTERM),
            );
            upgrade
                .watchers
                .failed("the server stopped during the upgrade");
        }
        Outcome {
            reporter: self.reporter,
            failure: self.failure,
        }
    }

    fn on_event(&mut self, state: State, event: Event) -> State {
        match event {
            Event::Signal(signal) => {
                self.reporter.pre(signal);
                self.act(state, signal.action(), Some(signal))
            }
            Event::Command(action) => {
                info!(
                    "{}: {action:?} requested through a handle",
                    self.reporter.who
                );
                self.act(state, action, None)
            }
            Event::Serving => self.on_serving(state),
            Event::Child { pid, news } => self.on_child(state, pid, news),
            Event::ParentGone => {
                // Nobody is left to tell that this process resigns.
                self.resign_pipe = None;
                state
            }
            Event::Control(request) => self.on_request(state, request),
            Event::ChildEnded | Event::ServerStopped => state,
        }
    }

    fn act(&mut self, state: State, action: Action, signal: Option<Signal>) -> State {
        match action {
            Action::Upgrade => self.upgrade(state, signal, Watchers::default()),
            Action::GracefulStop => {
                self.reporter.post_at_exit(signal);
                self.graceful_stop(state)
            }
            Action::ForceStop => {
                self.reporter.post_at_exit(signal);
                self.force_stop(state, "hammer time requested")
            }
            Action::HooksOnly => {
                self.reporter.post(signal);
                state
            }
        }
    }

    fn on_serving(&mut self, state: State) -> State {
        let who = self.reporter.who;
        if !matches!(state, State::Starting) {
            return state;
        }
        // Before any client of the previous generation is sent here.
        self.acceptor_epolls = sys::epolls_watching(&self.acceptor_fds).unwrap_or_default();
        // The pid file is written right before the ready byte: an upgrade that fails earlier
        // leaves it naming the old generation.
        if let Err(e) = self.reporter.write_pid_file(who.pid) {
            // Not ready, so the previous generation (if any) still serves: finish what was
            // accepted already and go. The readiness pipe stays open (unwritten) until this
            // process exits, so the parent does not kill it while it drains.
            error!("{who}: {e}; stopping gracefully without reporting ready");
            self.failure = Some(e);
            return self.start_drain(None, Watchers::default());
        }
        if let Some(pipe) = self.ready_pipe.take() {
            match pipe.report_ready() {
                Ok(()) => info!("{who}: reported ready to the parent process"),
                Err(e) => warn!(
                    "{who}: could not report ready ({e}); the parent process is gone, serving on"
                ),
            }
            let tx = self.tx.clone();
            if let Err(e) = pipe.on_parent_gone(move || {
                let _ = tx.send(Event::ParentGone);
            }) {
                warn!("{who}: cannot watch the parent process: {e}");
            }
            self.resign_pipe = Some(pipe);
        }
        self.answer_control();
        let shown = report::shown(&self.listeners);
        info!("{who}: serving on {shown}");
        let generation = who.generation();
        self.reporter.serving(
            generation,
            &self.listeners,
            &format!("generation {generation} serving on {shown}"),
        );
        State::Serving
    }

    fn upgrade(&mut self, state: State, signal: Option<Signal>, mut watchers: Watchers) -> State {
        let who = self.reporter.who;
        let busy = match &state {
            State::Serving => None,
            State::Starting => Some("not serving yet"),
            State::Upgrading(_) => Some("an upgrade is already in progress"),
            State::Draining(_) => Some("this process is draining"),
            State::Stopping => Some("this process is stopping"),
        };
        if let Some(why) = busy {
            info!("{who}: upgrade request ignored: {why}");
            watchers.failed(&format!("upgrade ignored: {why}"));
            self.reporter.post(signal);
            return state;
        }
        if let Some(master) = self.master {
            self.forward_to_master(master);
            watchers.failed("this process is a worker: the master upgrades");
            self.reporter.post(signal);
            return state;
        }
        self.socket_files.warn_changes(&who);
        let generation = who.generation() + 1;
        self.reporter.notify(&[
            "RELOADING=1",
            &notify::monotonic_usec(),
            &format!("STATUS=upgrading to generation {generation}"),
        ]);
        info!(
            "{who}: upgrading: starting generation {generation} from {}",
            self.exe.path.display()
        );
        let handover: Vec<&Listener> = self
            .listeners
            .iter()
            .chain(self.control.as_ref().map(|(control, _)| control))
            .collect();
        let spawned = match child::spawn(&self.exe, &handover, generation, Role::Generation) {
            Ok(spawned) => spawned,
            Err(e) => return self.upgrade_failed(e, signal, watchers),
        };
        let child = spawned.process;
        let timeout = self.settings.upgrade_timeout;
        info!(
            "{who}: generation {generation} started as pid {}; waiting up to {timeout:?} for it to report ready",
            child.pid
        );
        let tx = self.tx.clone();
        let pid = child.pid;
        let watched = child::watch(spawned.ready, timeout, move |news| {
            let _ = tx.send(Event::Child { pid, news });
        });
        if let Err(e) = watched {
            self.give_up(&child, "no thread to watch its readiness", None);
            return self.upgrade_failed(
                Error::io("starting the readiness watcher")(e),
                signal,
                watchers,
            );
        }
        watchers.event(
            "spawned",
            json!({ "pid": child.pid, "generation": child.generation }),
        );
        State::Upgrading(Upgrade {
            watchers,
            child,
            started: Instant::now(),
            signal,
        })
    }

    /// A worker asks its master to upgrade, if the master is still its parent.
    fn forward_to_master(&self, master: u32) {
        let who = self.reporter.who;
        let parent = sys::parent_pid();
        if parent != master {
            error!("{who}: upgrade request not forwarded: master pid {master} is gone (the parent is now pid {parent})");
            return;
        }
        info!("{who}: upgrade request forwarded to master pid {master}");
        if let Err(e) = sys::send_signal(master, OsSignal::SIGHUP) {
            error!("{who}: cannot forward the upgrade request to the master: {e}");
        }
    }

    fn upgrade_failed(
        &mut self,
        error: Error,
        signal: Option<Signal>,
        mut watchers: Watchers,
    ) -> State {
        let who = self.reporter.who;
        error!("{who}: upgrade failed: {error}; this process keeps serving");
        // The new generation may have written the pid file before it failed.
        self.reporter.rewrite_pid_file();
        self.reporter.upgrade_failed(
            &error,
            &format!(
                "upgrade failed: {error}; generation {} serving",
                who.generation()
            ),
        );
        self.reporter.post(signal);
        self.tally.failed += 1;
        self.tally.last_failure = Some(error.to_string());
        watchers.failed(&error.to_string());
        State::Serving
    }

    fn on_child(&mut self, state: State, pid: u32, news: News) -> State {
        match state {
            State::Upgrading(upgrade) if upgrade.child.pid == pid => {
                self.upgrade_news(upgrade, news)
            }
            State::Draining(mut drain) if drain.successor.is_some_and(|s| s.pid == pid) => {
                match news {
                    News::Died => return self.take_back(drain),
                    News::Resigned => info!(
                        "{}: generation {} (pid {pid}) is no longer the newest serving generation; the sockets stay with it",
                        self.reporter.who,
                        drain.successor.map_or(0, |s| s.generation)
                    ),
                    other => warn!("{}: pid {pid}: {other:?}", self.reporter.who),
                }
                drain.successor = None;
                State::Draining(drain)
            }
            other => other,
        }
    }

    fn upgrade_news(&mut self, upgrade: Upgrade, news: News) -> State {
        let who = self.reporter.who;
        let Upgrade {
            child,
            started,
            signal,
            watchers,
        } = upgrade;
        let pid = child.pid;
        let error = match news {
            News::Ready => {
                info!(
                    "{who}: generation {} (pid {pid}) is ready after {:?}; stopping accepting and draining",
                    child.generation,
                    started.elapsed()
                );
                self.reporter.upgrade_ready(pid, child.generation);
                self.reporter.post(signal);
                watchers.event(
                    "ready",
                    json!({ "pid": pid, "after_ms": started.elapsed().as_millis() as u64 }),
                );
                return self.start_drain(Some(child), watchers);
            }
            other => other.failure(pid, self.settings.upgrade_timeout, |why, first| {
                self.give_up(&child, why, first)
            }),
        };
        self.upgrade_failed(error, signal, watchers)
    }

    /// Gives up on a new process that will not serve, kills its process group and reaps it.
    /// Returns how it ended, for the log and the error.
    fn give_up(&self, child: &Process, why: &str, first: Option<OsSignal>) -> String {
        let status = match child.abandon(first, EXIT_GRACE) {
            Some(exit) => exit.to_string(),
            None => "could not be reaped".to_owned(),
        };
        warn!(
            "{}: new process {} abandoned ({why}): {status}",
            self.reporter.who, child.pid
        );
        status
    }

    /// This process is no longer the newest serving generation: tells the process that
    /// started it, so that it will not take the sockets back.
    fn resign(&mut self) {
        if let Some(pipe) = self.resign_pipe.take() {
            let _ = pipe.resign();
        }
    }

    fn graceful_stop(&mut self, state: State) -> State {
        let who = self.reporter.who;
        match state {
            State::Starting | State::Serving => {
                info!("{who}: graceful stop");
                self.start_drain(None, Watchers::default())
            }
            State::Upgrading(upgrade) => {
                info!("{who}: graceful stop; abandoning the upgrade in progress");
                self.give_up(
                    &upgrade.child,
                    "a stop was requested during the upgrade",
                    Some(OsSignal::SIGTERM),
                );
                self.reporter.post(upgrade.signal);
                let mut watchers = upgrade.watchers;
                watchers.failed("a stop was requested during the upgrade");
                self.start_drain(None, Watchers::default())
            }
            State::Draining(mut drain) if drain.successor.is_some() => {
                info!("{who}: graceful stop requested while draining after an upgrade; the drain goes on, and another stop request forces the close");
                drain.successor = None;
                State::Draining(drain)
            }
            State::Draining(drain) => self.force_stop(
                State::Draining(drain),
                "a second stop request arrived during the drain",
            ),
            State::Stopping => {
                info!("{who}: already stopping");
                State::Stopping
            }
        }
    }

    fn force_stop(&mut self, state: State, why: &str) -> State {
        match state {
            State::Stopping => return State::Stopping,
            State::Draining(drain) => self.end_drain(&drain, 0, TRACKER.connections()),
            State::Upgrading(mut upgrade) => {
                self.give_up(
                    &upgrade.child,
                    "the process is being stopped",
                    Some(OsSignal::SIGTERM),
                );
                self.reporter.post(upgrade.signal);
                upgrade
                    .watchers
                    .failed("the process was stopped during the upgrade");
            }
            _ => {}
        }
        warn!(
            "{}: {why}: closing {} connection(s) now",
            self.reporter.who,
            TRACKER.connections()
        );
        self.stop_server()
    }

    fn stop_server(&mut self) -> State {
        self.resign();
        crate::draining::set(true);
        self.levers.stop();
        State::Stopping
    }

    /// The successor died while it was the newest serving generation and this process was
    /// draining for it: serve again.
    fn take_back(&mut self, drain: Drain) -> State {
        let who = self.reporter.who;
        let Some(successor) = drain.successor else {
            return State::Draining(drain);
        };
        // Its own exit status, and nothing of its process group left behind.
        let status = successor
            .abandon(None, EXIT_GRACE)
            .map_or_else(|| "could not be reaped".to_owned(), |exit| exit.to_string());
        error!(
            "{who}: generation {} (pid {}) died while this process was draining ({status}); taking the listening sockets back and serving again",
            successor.generation, successor.pid
        );
        // Serve again first; only then tell whoever waits for the outcome.
        self.reporter.rewrite_pid_file();
        self.levers.resume();
        TRACKER.set_draining(false);
        crate::draining::set(false);
        self.answer_control();
        self.tally.failed += 1;
        self.tally.last_failure = Some(format!(
            "generation {} died during the drain",
            successor.generation
        ));
        let mut watchers = drain.watchers;
        watchers.failed(&format!(
            "rolled back: generation {} (pid {}) died ({status}) while generation {} drained; generation {} serves again",
            successor.generation,
            successor.pid,
            who.generation(),
            who.generation()
        ));
        self.reporter.notify(&[
            &format!("MAINPID={}", who.pid),
            "READY=1",
            &format!(
                "STATUS=generation {} serving again: generation {} died",
                who.generation(),
                successor.generation
            ),
        ]);
        State::Serving
    }
}
