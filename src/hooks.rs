//! User hooks: before and after each handled signal, and at lifecycle events.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::error::Error;
use crate::signals::Signal;

/// When a signal hook runs relative to the runtime's own action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookStage {
    /// Before the runtime acts on the signal.
    Pre,
    /// After the runtime has acted: for `SIGHUP` once the upgrade succeeded or failed, for
    /// `SIGINT`/`SIGTERM`/`SIGUSR2` once the server has stopped, for `SIGUSR1`/`SIGTSTP` right
    /// after the pre hook.
    Post,
}

impl HookStage {
    /// The event a hook of this stage is given for `signal`.
    pub(crate) fn event(self, signal: Signal, pid: u32, generation: u64) -> SignalEvent {
        SignalEvent {
            signal,
            stage: self,
            pid,
            generation,
        }
    }
}

/// What a signal hook is told.
#[derive(Debug, Clone, Copy)]
pub struct SignalEvent {
    /// The signal.
    pub signal: Signal,
    /// Pre or post.
    pub stage: HookStage,
    /// This process's pid.
    pub pid: u32,
    /// This process's generation.
    pub generation: u64,
}

/// What the serving hook is told.
#[derive(Debug, Clone)]
pub struct ServingEvent {
    /// This process's pid.
    pub pid: u32,
    /// This process's generation.
    pub generation: u64,
    /// The TCP addresses served (Unix sockets are not listed).
    pub addrs: Vec<SocketAddr>,
}

/// What the upgrade-ready hook is told.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeEvent {
    /// This (old) process's pid.
    pub pid: u32,
    /// The new process's pid.
    pub new_pid: u32,
    /// The new process's generation.
    pub new_generation: u64,
}

/// Why a process drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// It handed over to a new generation that reported ready.
    Upgrade,
    /// It was asked to stop (a signal or a [`crate::Handle`]).
    Stop,
}

/// What the drain-start hook is told.
#[derive(Debug, Clone, Copy)]
pub struct DrainStart {
    /// This process's pid.
    pub pid: u32,
    /// This process's generation.
    pub generation: u64,
    /// Why it drains.
    pub reason: DrainReason,
    /// Connections open when the drain began.
    pub connections: usize,
    /// Requests in flight when the drain began.
    pub in_flight: usize,
}

/// What the drain-end hook is told: how the drain went, once the server is told to stop.
#[derive(Debug, Clone, Copy)]
pub struct DrainEnd {
    /// This process's pid.
    pub pid: u32,
    /// This process's generation.
    pub generation: u64,
    /// Why it drained.
    pub reason: DrainReason,
    /// How long the drain lasted.
    pub duration: std::time::Duration,
    /// Connections that ended on their own (the client closed after `Connection: close`).
    pub ended_on_their_own: usize,
    /// Idle keep-alive connections closed by the runtime.
    pub idle_closed: usize,
    /// Connections cut at hammer time or by a forced stop, requests in flight included.
    pub cut: usize,
}

/// A hook taking `&T`, callable from the control thread.
pub(crate) type Hook<T> = Box<dyn Fn(&T) + Send + Sync>;
type SignalHook = Hook<SignalEvent>;

/// The registered hooks.
#[derive(Default)]
pub(crate) struct Hooks {
    signal: HashMap<(Signal, HookStage), Vec<SignalHook>>,
    pub(crate) serving: Vec<Hook<ServingEvent>>,
    pub(crate) upgrade_ready: Vec<Hook<UpgradeEvent>>,
    pub(crate) upgrade_failed: Vec<Hook<Error>>,
    pub(crate) drain_start: Vec<Hook<DrainStart>>,
    pub(crate) drain_end: Vec<Hook<DrainEnd>>,
}

impl Hooks {
    pub(crate) fn add_signal(&mut self, signal: Signal, stage: HookStage, hook: SignalHook) {
        self.signal.entry((signal, stage)).or_default().push(hook);
    }

    pub(crate) fn run_signal(&self, event: SignalEvent) {
        for hook in self
            .signal
            .get(&(event.signal, event.stage))
            .into_iter()
            .flatten()
        {
            run_guarded("signal", || hook(&event));
        }
    }
}

/// Runs a hook; a panicking hook is logged and does not take the runtime down.
pub(crate) fn run_guarded(what: &str, hook: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
        log::error!("a {what} hook panicked; the runtime carries on");
    }
}
