//! The drain of a serving process: starting it, and the check that measures, asks
//! [`decide::drain`] and [`decide::close_allowance`], reports and acts.

use std::time::{Duration, Instant};

use log::{info, warn};
use serde_json::json;

use super::{Control, Drain, State, PAUSE_CONFIRM};
use crate::child::Process;
use crate::control::Watchers;
use crate::decide::{self, Acceptor, DrainVerdict, DrainView};
use crate::drain::TRACKER;
use crate::hooks::{DrainEnd, DrainReason, DrainStart};
use crate::sys;

impl Control {
    pub(super) fn check_drain(&mut self, mut drain: Drain) -> State {
        let who = self.reporter.who;
        let elapsed = drain.since.elapsed();
        if !drain.acceptor_paused {
            let watching = sys::epoll_watches_any(&self.acceptor_fds, &self.acceptor_epolls).ok();
            drain.acceptor_paused = match decide::acceptor(watching, elapsed) {
                Acceptor::Paused => true,
                Acceptor::Waiting => false,
                Acceptor::GaveUp => {
                    warn!("{who}: the acceptor still watches its sockets {elapsed:?} after the pause; draining regardless");
                    true
                }
            };
            if drain.acceptor_paused {
                // Only now, when nothing new can arrive here, are long-lived responses told
                // (their clients reconnect, and must reach the new generation).
                crate::draining::set(true);
            }
        }
        let (connections, in_flight) = (TRACKER.connections(), TRACKER.in_flight());
        self.pace_closes(&mut drain, connections);
        let view = DrainView {
            elapsed,
            acceptor_paused: drain.acceptor_paused,
            connections,
            in_flight,
            idle_for: TRACKER.idle_for(in_flight),
        };
        let verdict = decide::drain(
            &view,
            self.settings.idle_close(),
            self.settings.hammer_time,
            || sys::count_accepted(&self.listening).ok(),
        );
        let (idle, cut) = match verdict {
            DrainVerdict::CloseIdle { connections } => (connections, 0),
            DrainVerdict::Hammer { connections, .. } => (0, connections),
            _ => (0, 0),
        };
        // Within the commit window the old generation stays, paused, with the sockets, so
        // that it can take over again if the new one dies.
        let committing = drain.successor.is_some()
            && self
                .settings
                .commit_after
                .is_some_and(|window| elapsed < window);
        if committing
            && matches!(
                verdict,
                DrainVerdict::Drained | DrainVerdict::CloseIdle { .. }
            )
        {
            if !drain.quiet {
                drain.quiet = true;
                info!(
                    "{who}: drained in {elapsed:?}; keeping the sockets until the commit window ends ({:?} after the hand-over)",
                    self.settings.commit_after.unwrap_or_default()
                );
                drain.watchers.event(
                    "drained",
                    serde_json::json!({ "after_ms": elapsed.as_millis() as u64 }),
                );
            }
            return State::Draining(drain);
        }
        if drain.quiet {
            info!("{who}: commit window passed: the new generation keeps serving");
        }
        match verdict {
            DrainVerdict::Wait => {
                if drain.reported.elapsed() >= decide::PROGRESS_EVERY {
                    drain.reported = Instant::now();
                    self.reporter.progress(
                        &format!(
                            "{} connection(s), {} request(s) in flight",
                            view.connections, view.in_flight
                        ),
                        elapsed,
                        self.settings.hammer_time,
                        drain.cause == DrainReason::Stop,
                    );
                }
                return State::Draining(drain);
            }
            DrainVerdict::Drained => info!("{who}: drained in {elapsed:?}"),
            DrainVerdict::CloseIdle { connections } => info!(
                "{who}: drained in {elapsed:?}; closing {connections} idle keep-alive connection(s)"
            ),
            DrainVerdict::Hammer {
                connections,
                in_flight,
            } => warn!("{who}: hammer time after {elapsed:?}: forcing {connections} connection(s) with {in_flight} request(s) in flight closed"),
        }
        self.end_drain(&drain, idle, cut);
        if let Some(new) = drain.handed_to {
            if !drain.quiet {
                drain.watchers.event(
                    "drained",
                    serde_json::json!({ "after_ms": elapsed.as_millis() as u64 }),
                );
            }
            drain.watchers.ok(new.pid, new.generation);
            self.tally.ok += 1;
        }
        self.stop_server()
    }

    /// Stops accepting and starts draining: after a hand-over to `successor`, or for a stop.
    pub(super) fn start_drain(&mut self, successor: Option<Process>, watchers: Watchers) -> State {
        let who = self.reporter.who;
        self.resign();
        if successor.is_some() {
            // The new generation answers on the control socket from now on.
            self.stop_answering();
        }
        if successor.is_none() {
            self.reporter
                .notify(&["STOPPING=1", "STATUS=stopping: draining connections"]);
        }
        TRACKER.set_draining(true);
        TRACKER.touch();
        if !self.levers.pause(PAUSE_CONFIRM) {
            warn!("{who}: the server did not confirm the pause within {PAUSE_CONFIRM:?}");
        }
        let (connections, in_flight) = (TRACKER.connections(), TRACKER.in_flight());
        info!(
            "{who}: stopped accepting; draining {connections} connection(s) with {in_flight} request(s) in flight (hammer time {})",
            self.settings.hammer_time
        );
        let cause = if successor.is_some() {
            DrainReason::Upgrade
        } else {
            DrainReason::Stop
        };
        self.reporter.drain_start(DrainStart {
            pid: who.pid,
            generation: who.generation(),
            reason: cause,
            connections,
            in_flight,
        });
        watchers.event(
            "draining",
            json!({ "connections": connections, "in_flight": in_flight }),
        );
        let now = Instant::now();
        State::Draining(Drain {
            since: now,
            watchers,
            handed_to: successor,
            quiet: false,
            cause,
            connections_at_start: connections,
            opened_at_start: TRACKER.opened(),
            closes_at_start: TRACKER.closes_asked(),
            served_seen: TRACKER.served(),
            close_credit: 0.0,
            crowded_since: None,
            reported: now,
            successor,
            acceptor_paused: false,
        })
    }

    /// Sets how many more keep-alive connections may be asked to close now
    /// ([`decide::close_allowance`]). A stop with no other process to take the clients asks
    /// them all at once: pacing would only make it longer.
    fn pace_closes(&self, drain: &mut Drain, connections: usize) {
        if drain.cause == DrainReason::Stop && self.master.is_none() {
            TRACKER.set_close_budget(usize::MAX);
            return;
        }
        let queue = sys::accept_queue(&self.acceptor_fds)
            .map(|(queued, limit)| decide::AcceptQueue { queued, limit });
        let crowded_for = match queue {
            Some(q) if q.crowded() => drain
                .crowded_since
                .get_or_insert_with(Instant::now)
                .elapsed(),
            _ => {
                drain.crowded_since = None;
                Duration::ZERO
            }
        };
        let served = TRACKER.served();
        drain.close_credit += decide::traffic_credit(
            served.saturating_sub(drain.served_seen),
            drain.connections_at_start,
            connections,
        );
        drain.served_seen = served;
        // Asked to close and still open: every connection that ended since the drain began
        // counts as one that was asked (an over-count that only lets pacing go faster).
        let asked = TRACKER.closes_asked().saturating_sub(drain.closes_at_start);
        let ended = (drain.connections_at_start + TRACKER.opened())
            .saturating_sub(drain.opened_at_start + connections);
        TRACKER.set_close_budget(decide::close_allowance(&decide::CloseView {
            elapsed: drain.since.elapsed(),
            credit: drain.close_credit as usize,
            asked,
            pending: asked.saturating_sub(ended),
            queue,
            crowded_for,
        }));
    }

    /// Reports how a drain ended: `idle` connections closed idle, `cut` closed by force.
    pub(super) fn end_drain(&self, drain: &Drain, idle: usize, cut: usize) {
        let who = self.reporter.who;
        let seen =
            drain.connections_at_start + TRACKER.opened().saturating_sub(drain.opened_at_start);
        self.reporter.drain_end(DrainEnd {
            pid: who.pid,
            generation: who.generation(),
            reason: drain.cause,
            duration: drain.since.elapsed(),
            ended_on_their_own: seen.saturating_sub(idle + cut),
            idle_closed: idle,
            cut,
        });
    }
}
