//! The master's side of the control socket: status, stop, and upgrades whose outcome the
//! client waits for.

use serde_json::json;

use super::{Master, Phase};
use crate::child::Process;
use crate::control::{self, Request, Watchers};
use crate::event::Event;
use crate::signals::Action;

impl Master {
    pub(super) fn on_request(&mut self, phase: Phase, request: Request) -> Phase {
        match request {
            Request::Status(reply) => {
                let _ = reply.send(self.status(&phase));
                phase
            }
            Request::Stop(reply) => {
                let _ = reply.send(json!({ "result": "ok", "pid": self.reporter.who.pid }));
                self.act(phase, Action::GracefulStop, None)
            }
            Request::Upgrade(reply) => {
                self.upgrade_watchers = Watchers::of(Some(reply));
                let phase = self.act(phase, Action::Upgrade, None);
                if let Phase::Running {
                    next: Some(next), ..
                } = &phase
                {
                    let process: Process = next.worker.process;
                    self.upgrade_watchers.event(
                        "spawned",
                        json!({ "pid": process.pid, "generation": process.generation }),
                    );
                }
                phase
            }
        }
    }

    fn status(&self, phase: &Phase) -> serde_json::Value {
        let (state, current) = match phase {
            Phase::FirstStart(_) => ("starting", None),
            Phase::Running { current, next } => (
                if next.is_some() {
                    "upgrading"
                } else if self.draining.is_empty() {
                    "serving"
                } else {
                    "draining"
                },
                Some(current),
            ),
            Phase::Down { .. } | Phase::Replacing(_) => ("restarting", None),
            Phase::Stopping { current, .. } => ("stopping", current.as_ref()),
        };
        json!({
            "pid": self.reporter.who.pid,
            "generation": current.map(|w| w.process.generation),
            "worker_pid": current.map(|w| w.process.pid),
            "draining_workers": self.draining.iter().map(|w| w.process.pid).collect::<Vec<_>>(),
            "state": state,
            "mode": "master",
            // Connections are counted by each worker, not by the master.
            "connections": null,
            "in_flight": null,
            "upgrades_ok": self.tally.0,
            "upgrades_failed": self.tally.1,
            "last_failure": self.tally.2,
        })
    }

    /// The old worker `pid` has drained: the upgrade that replaced it took.
    pub(super) fn handed_over(&mut self, pid: u32) {
        if let Some(i) = self.handovers.iter().position(|(old, ..)| *old == pid) {
            let (_, new, mut watchers, since) = self.handovers.remove(i);
            watchers.event(
                "drained",
                json!({ "after_ms": since.elapsed().as_millis() as u64 }),
            );
            watchers.ok(new.pid, new.generation);
            self.tally.0 += 1;
        }
    }

    /// Answers on the control socket, if there is one.
    pub(super) fn answer_control(&mut self) {
        let tx = self.tx.clone();
        if let Err(e) = control::start_answering(&mut self.control, move |request| {
            let _ = tx.send(Event::Control(request));
        }) {
            log::warn!(
                "{}: cannot answer on the control socket: {e}",
                self.reporter.who
            );
        }
    }
}
