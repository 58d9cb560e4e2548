//! The master's view of its workers: where it is ([`Phase`]) and what it knows of each one.

use std::time::Instant;

use crate::child::Process;
use crate::signals::Signal;
use crate::sys::Exit;

/// A worker process and when it started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Worker {
    pub(super) process: Process,
    pub(super) since: Instant,
}

/// A worker started but not ready yet.
#[derive(Debug)]
pub(super) struct Starting {
    pub(super) worker: Worker,
    /// The signal that asked for it, whose post hooks run when it is ready or failed.
    pub(super) signal: Option<Signal>,
    /// How it ended, if its exit was reaped before its readiness pipe told.
    pub(super) exited: Option<Exit>,
}

/// Where the master is.
#[derive(Debug)]
pub(super) enum Phase {
    /// The first worker is starting: if it fails, the service fails.
    FirstStart(Starting),
    /// A worker serves; a new one may be starting (an upgrade).
    Running {
        current: Worker,
        next: Option<Starting>,
    },
    /// No worker serves (the last one died); a new one starts at `restart_at`.
    Down { restart_at: Instant },
    /// No worker serves; a replacement is starting.
    Replacing(Starting),
    /// Stopping: waiting for the workers to exit.
    Stopping { current: Option<Worker> },
}

/// `worker generation 2 (pid 123)`, how log lines name a worker.
pub(super) fn describe(worker: &Worker) -> String {
    format!(
        "worker generation {} (pid {})",
        worker.process.generation, worker.process.pid
    )
}
