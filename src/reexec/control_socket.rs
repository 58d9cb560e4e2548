//! A serving process's side of the control socket: status, stop, upgrades whose outcome the
//! client waits for, and when this process answers at all.

use log::{info, warn};
use serde_json::json;

use super::{Control, State, Watchers};
use crate::control::{self, Request};
use crate::drain::TRACKER;
use crate::event::Event;
use crate::hooks::DrainReason;

impl Control {
    pub(super) fn on_request(&mut self, state: State, request: Request) -> State {
        match request {
            Request::Status(reply) => {
                let _ = reply.send(self.status(&state));
                state
            }
            Request::Stop(reply) => {
                let _ = reply.send(json!({ "result": "ok", "pid": self.reporter.who.pid }));
                info!(
                    "{}: graceful stop requested on the control socket",
                    self.reporter.who
                );
                self.graceful_stop(state)
            }
            Request::Upgrade(reply) => self.upgrade(state, None, Watchers::of(Some(reply))),
        }
    }

    /// The status object of the control socket.
    pub(super) fn status(&self, state: &State) -> serde_json::Value {
        let name = match state {
            State::Starting => "starting",
            State::Serving => "serving",
            State::Upgrading(_) => "upgrading",
            State::Draining(drain) if drain.cause == DrainReason::Upgrade => "draining",
            State::Draining(_) | State::Stopping => "stopping",
        };
        json!({
            "pid": self.reporter.who.pid,
            "generation": self.reporter.who.generation(),
            "state": name,
            "mode": if self.master.is_some() { "master-worker" } else { "reexec" },
            "connections": TRACKER.connections(),
            "in_flight": TRACKER.in_flight(),
            "upgrades_ok": self.tally.ok,
            "upgrades_failed": self.tally.failed,
            "last_failure": self.tally.last_failure,
        })
    }

    /// Answers on the control socket (again, after a rollback), if there is one.
    pub(crate) fn answer_control(&mut self) {
        let tx = self.tx.clone();
        if let Err(e) = control::start_answering(&mut self.control, move |request| {
            let _ = tx.send(Event::Control(request));
        }) {
            warn!(
                "{}: cannot answer on the control socket: {e}",
                self.reporter.who
            );
        }
    }

    /// Stops answering on the control socket (the socket stays open, to hand over).
    pub(super) fn stop_answering(&mut self) {
        if let Some((_, serving)) = &mut self.control {
            *serving = None;
        }
    }
}
