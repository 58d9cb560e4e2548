//! Which signals the runtime handles and what each one means, in one place.

use std::fmt;
use std::io;
use std::sync::mpsc::Sender;

use signal_hook::consts::signal::{
    SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTSTP, SIGUSR1, SIGUSR2,
};
use signal_hook::iterator::{Handle, Signals};

/// A signal the runtime handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `SIGHUP`: upgrade (re-exec the executable, hand over the sockets, drain).
    Hup,
    /// `SIGINT`: graceful stop; a second one during the drain forces the close.
    Int,
    /// `SIGTERM`: graceful stop; a second one during the drain forces the close.
    Term,
    /// `SIGQUIT`: graceful stop, as for nginx; a second one during the drain forces the close.
    Quit,
    /// `SIGUSR1`: user hooks only.
    Usr1,
    /// `SIGUSR2`: hammer time: close every connection now.
    Usr2,
    /// `SIGTSTP`: user hooks only (the process is not stopped).
    Tstp,
}

/// What the runtime does for a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Upgrade,
    GracefulStop,
    ForceStop,
    HooksOnly,
}

impl Signal {
    /// Every handled signal.
    pub const ALL: [Signal; 7] = [
        Signal::Hup,
        Signal::Int,
        Signal::Term,
        Signal::Quit,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Tstp,
    ];

    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => SIGHUP,
            Signal::Int => SIGINT,
            Signal::Term => SIGTERM,
            Signal::Quit => SIGQUIT,
            Signal::Usr1 => SIGUSR1,
            Signal::Usr2 => SIGUSR2,
            Signal::Tstp => SIGTSTP,
        }
    }

    fn from_number(n: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == n)
    }

    /// The conventional name, e.g. `SIGHUP`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Quit => "SIGQUIT",
            Signal::Usr1 => "SIGUSR1",
            Signal::Usr2 => "SIGUSR2",
            Signal::Tstp => "SIGTSTP",
        }
    }

    pub(crate) fn action(self) -> Action {
        match self {
            Signal::Hup => Action::Upgrade,
            Signal::Int | Signal::Term | Signal::Quit => Action::GracefulStop,
            Signal::Usr2 => Action::ForceStop,
            Signal::Usr1 | Signal::Tstp => Action::HooksOnly,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Installs the handlers for every [`Signal`] (and `SIGCHLD` when `child_ended` is given) and
/// forwards each delivery to `forward` from a dedicated thread. The returned handle stops the
/// thread and leaves the handlers installed (an unhandled `SIGTSTP` would stop the process
/// while it exits).
pub(crate) fn listen<E: Send + 'static>(
    forward: Sender<E>,
    wrap: fn(Signal) -> E,
    child_ended: Option<fn() -> E>,
) -> io::Result<Handle> {
    let numbers = Signal::ALL
        .map(Signal::number)
        .into_iter()
        .chain(child_ended.map(|_| SIGCHLD));
    let mut signals = Signals::new(numbers)?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("actix-endless-signals".into())
        .spawn(move || {
            for number in signals.forever() {
                let event = match (Signal::from_number(number), child_ended) {
                    (Some(signal), _) => wrap(signal),
                    (None, Some(child_ended)) if number == SIGCHLD => child_ended(),
                    _ => continue,
                };
                if forward.send(event).is_err() {
                    break;
                }
            }
        })?;
    Ok(handle)
}
