//! What the control loops hear about, on one channel: signals, handle commands, the server's
//! progress and news from child processes.

use crate::child::News;
use crate::signals::{Action, Signal};

/// One thing that happened, for the control loop of either process mode.
#[derive(Debug)]
pub(crate) enum Event {
    /// A signal arrived.
    Signal(Signal),
    /// A child process of ours ended (`SIGCHLD`); reap to learn which.
    ChildEnded,
    /// A [`crate::Handle`] asked for an action.
    Command(Action),
    /// The server's workers and acceptor run: this process serves.
    Serving,
    /// The readiness pipe of the child `pid` said something.
    Child { pid: u32, news: News },
    /// The process that started this one has exited.
    ParentGone,
    /// The server future has completed.
    ServerStopped,
}
