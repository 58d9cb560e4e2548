//! What the control loops hear about, on one channel: signals, handle commands, the server's
//! progress and news from child processes.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::child::News;
use crate::control::Request;
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
    /// A client of the control socket asked for something.
    Control(Request),
    /// The process that started this one has exited.
    ParentGone,
    /// The server future has completed.
    ServerStopped,
}

/// The next event, waiting at most `wake` (forever when `None`): `Ok(None)` when `wake`
/// passed first, `Err(())` when every sender is gone.
pub(crate) fn next(rx: &Receiver<Event>, wake: Option<Duration>) -> Result<Option<Event>, ()> {
    match wake {
        Some(wake) => match rx.recv_timeout(wake) {
            Ok(event) => Ok(Some(event)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        },
        None => rx.recv().map(Some).map_err(drop),
    }
}
