//! The runtime's decisions as pure functions of counts and instants: when a drain may end, when
//! the acceptor can be trusted to have paused, how long a master waits before replacing a
//! worker. The loops around them only observe, log and act, and these rules are tested here
//! in tables at millisecond resolution.

use std::time::Duration;

use crate::config::HammerTime;

/// Where `/proc` cannot tell whether actix's acceptor has acted on the pause, or which
/// connections are still queued for a worker, a drain waits this long after the pause instead.
pub(crate) const ACCEPT_SETTLE: Duration = Duration::from_millis(50);
/// How long the acceptor may take to act on a pause before the drain goes on regardless.
pub(crate) const PAUSE_WAIT: Duration = Duration::from_secs(1);
/// The first restart delay after a worker died; it doubles up to [`MAX_BACKOFF`].
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest restart delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that served this long before dying resets the back-off.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Whether actix's acceptor has stopped watching the listening sockets since the pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acceptor {
    /// It has: no connection can be accepted any more.
    Paused,
    /// Not yet.
    Waiting,
    /// It still watches them after [`PAUSE_WAIT`]: go on regardless (and say so).
    GaveUp,
}

/// `watching`: whether an epoll instance still watches the acceptor's sockets (`None` when
/// `/proc` cannot tell); `elapsed`: time since the pause.
pub(crate) fn acceptor(watching: Option<bool>, elapsed: Duration) -> Acceptor {
    match watching {
        Some(false) => Acceptor::Paused,
        Some(true) if elapsed < PAUSE_WAIT => Acceptor::Waiting,
        Some(true) => Acceptor::GaveUp,
        None if elapsed >= ACCEPT_SETTLE => Acceptor::Paused,
        None => Acceptor::Waiting,
    }
}

/// What a draining process sees at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainView {
    /// Time since the drain began.
    pub(crate) elapsed: Duration,
    /// Whether the acceptor has acted on the pause (see [`acceptor`]).
    pub(crate) acceptor_paused: bool,
    /// Open connections counted by the runtime (taken by a worker).
    pub(crate) connections: usize,
    /// Requests whose response has not been completely sent.
    pub(crate) in_flight: usize,
    /// How long no request has been in flight.
    pub(crate) idle_for: Duration,
}

/// What to do with a drain now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainVerdict {
    /// Keep waiting.
    Wait,
    /// Every connection is gone.
    Drained,
    /// Only idle keep-alive connections are left: close them.
    CloseIdle { connections: usize },
    /// Hammer time: close everything, requests in flight included.
    Hammer {
        connections: usize,
        in_flight: usize,
    },
}

/// The drain rule, the crate's core promise: a connection is closed only when nothing can be
/// lost (it is gone, or idle with nothing queued behind the count), or at hammer time.
///
/// A connection accepted just before the pause is counted by the runtime only once a worker
/// takes it from its queue; the kernel knows it at once. Until then it is not idle, and closing
/// "everything" would reset it unanswered. `kernel_open` is the probe for that: the connections
/// the kernel shows this process holding, including those still queued for a worker (`None`
/// when `/proc` cannot tell). It is costly with many connections, so it is asked only when its
/// answer decides.
pub(crate) fn drain(
    view: &DrainView,
    idle_close_after: Duration,
    hammer: HammerTime,
    kernel_open: impl FnOnce() -> Option<usize>,
) -> DrainVerdict {
    let mut kernel_open = Some(kernel_open);
    let mut probed = None;
    let mut none_queued = |counted: usize| match probed
        .get_or_insert_with(|| kernel_open.take().and_then(|probe| probe()))
    {
        Some(open) => *open <= counted,
        None => view.elapsed >= ACCEPT_SETTLE,
    };
    if view.acceptor_paused && view.connections == 0 && none_queued(0) {
        DrainVerdict::Drained
    } else if view.acceptor_paused
        && view.in_flight == 0
        && view.idle_for >= idle_close_after
        && none_queued(view.connections)
    {
        DrainVerdict::CloseIdle {
            connections: view.connections,
        }
    } else if matches!(hammer, HammerTime::After(limit) if view.elapsed >= limit) {
        DrainVerdict::Hammer {
            connections: view.connections,
            in_flight: view.in_flight,
        }
    } else {
        DrainVerdict::Wait
    }
}

/// Pacing of `Connection: close` during a drain: one close for this many responses served by
/// both generations together (reconnecting costs about as much as a request or two, so moving
/// the connections costs well under a tenth of the capacity while it lasts)...
pub(crate) const CLOSE_EVERY: usize = 16;
/// ... but never fewer closes per second than this, so that lightly used connections move too.
pub(crate) const MIN_CLOSES_PER_SEC: usize = 1000;
/// Closes allowed at once when a drain begins.
pub(crate) const CLOSE_BURST: usize = 64;
/// Without an accept-queue count (a Unix socket): how many keep-alive connections asked to
/// close may be still open at a time.
pub(crate) const CLOSE_WINDOW: usize = 512;
/// How long the accept queue may stay at least half full before pacing gives up: nobody is
/// taking connections from it, so holding clients back gains nothing.
pub(crate) const QUEUE_STALL: Duration = Duration::from_millis(250);

/// The accept queue of the listening sockets a draining process shares with its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AcceptQueue {
    /// Connections the kernel completed that no process has accepted yet.
    pub(crate) queued: usize,
    /// The most it holds (the backlog, capped by `net.core.somaxconn`); more are dropped.
    pub(crate) limit: usize,
}

impl AcceptQueue {
    /// At least half full: the successor is not keeping up.
    pub(crate) fn crowded(&self) -> bool {
        self.queued * 2 >= self.limit
    }
}

/// What a draining process knows when it paces its `Connection: close` answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CloseView {
    /// Time since the drain began.
    pub(crate) elapsed: Duration,
    /// Closes earned by the traffic so far ([`traffic_credit`]).
    pub(crate) credit: usize,
    /// Keep-alive connections asked to close since the drain began.
    pub(crate) asked: usize,
    /// Of those, the ones still open (their client has not reconnected yet).
    pub(crate) pending: usize,
    /// The shared accept queue, where the kernel gives a count (TCP).
    pub(crate) queue: Option<AcceptQueue>,
    /// How long the queue has been [`AcceptQueue::crowded`] without a break.
    pub(crate) crowded_for: Duration,
}

/// How many more keep-alive connections a draining process may ask to close now: the pacing
/// that keeps a drain from turning into a reconnect storm. Every client asked reconnects at
/// once, to the new generation; ten thousand of them asked together make it spend half a
/// second of the whole machine on connection set-up, and every request waits meanwhile.
///
/// So closes follow the traffic: one for every [`CLOSE_EVERY`] responses of both generations,
/// at least [`MIN_CLOSES_PER_SEC`], after a first [`CLOSE_BURST`]. And the closes not yet reconnected
/// plus the connections waiting in the accept queue stay within half of it, so that it never
/// overflows (a dropped connection attempt is retried only after a second); without a count,
/// [`CLOSE_WINDOW`] pending closes at a time. A queue crowded for [`QUEUE_STALL`] means nobody
/// takes connections from it (a stop, not a hand-over): then everything is asked at once.
pub(crate) fn close_allowance(view: &CloseView) -> usize {
    if view.queue.is_some() && view.crowded_for >= QUEUE_STALL {
        return usize::MAX;
    }
    let per_sec = view.elapsed.as_millis() as usize * MIN_CLOSES_PER_SEC / 1000;
    let paced = CLOSE_BURST + view.credit.max(per_sec);
    let by_queue = match view.queue {
        None => CLOSE_WINDOW.saturating_sub(view.pending),
        Some(q) => (q.limit / 2).saturating_sub(q.queued + view.pending),
    };
    paced.saturating_sub(view.asked).min(by_queue)
}

/// The closes earned by `served` responses of the draining process while it held
/// `connections` of the `at_start` connections it had when the drain began: the new
/// generation serves the others, and the clients are alike, so both together served about
/// `served * at_start / connections`; one close per [`CLOSE_EVERY`] of those.
pub(crate) fn traffic_credit(served: usize, at_start: usize, connections: usize) -> f64 {
    served as f64 * at_start.max(1) as f64 / connections.max(1) as f64 / CLOSE_EVERY as f64
}

/// A master's restart delay for a worker that died after serving for `served_for`, given the
/// current back-off: returns the delay to use now and the back-off after it.
pub(crate) fn restart_delay(
    backoff: Duration,
    served_for: Option<Duration>,
) -> (Duration, Duration) {
    let delay = match served_for {
        Some(served) if served >= STABLE_AFTER => MIN_BACKOFF,
        _ => backoff,
    };
    (delay, (delay * 2).min(MAX_BACKOFF))
}

/// How often a long drain reports its progress (log, `STATUS=`, `EXTEND_TIMEOUT_USEC=`).
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a drain that has lasted `elapsed` asks systemd for: the time left before hammer time
/// (`None`: never), and how much longer systemd should wait for this process from now
/// (`EXTEND_TIMEOUT_USEC`): the time left plus one progress period, so the next report
/// always arrives before the extension runs out.
pub(crate) fn time_left(hammer: HammerTime, elapsed: Duration) -> (Option<Duration>, Duration) {
    match hammer {
        HammerTime::After(limit) => {
            let left = limit.saturating_sub(elapsed);
            (Some(left), left + PROGRESS_EVERY)
        }
        HammerTime::Never => (None, PROGRESS_EVERY * 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn acceptor_table() {
        let table = [
            (Some(false), 0, Acceptor::Paused),
            (Some(true), 0, Acceptor::Waiting),
            (Some(true), 999, Acceptor::Waiting),
            (Some(true), 1000, Acceptor::GaveUp),
            (None, 49, Acceptor::Waiting),
            (None, 50, Acceptor::Paused),
        ];
        for (watching, elapsed, expected) in table {
            assert_eq!(
                acceptor(watching, ms(elapsed)),
                expected,
                "watching {watching:?} after {elapsed} ms"
            );
        }
    }

    /// (elapsed, paused, connections, in_flight, idle_for, kernel_open, hammer ms) -> verdict
    #[test]
    fn drain_table() {
        use DrainVerdict::*;
        const NEVER: Option<u64> = None;
        type Row = (
            u64,
            bool,
            usize,
            usize,
            u64,
            Option<usize>,
            Option<u64>,
            DrainVerdict,
        );
        #[rustfmt::skip]
        let table: &[Row] = &[
            // Nothing left and the acceptor paused: done at once.
            (0, true, 0, 0, 0, Some(0), Some(60_000), Drained),
            // The acceptor has not acted on the pause: a connection may still arrive.
            (0, false, 0, 0, 10_000, Some(0), Some(60_000), Wait),
            // Accepted by the kernel, not yet counted by a worker: not drained, not idle.
            (5, true, 0, 0, 10_000, Some(1), Some(60_000), Wait),
            (5, true, 2, 0, 10_000, Some(3), Some(60_000), Wait),
            // Without /proc: trust the counts only once accepts had time to settle.
            (49, true, 0, 0, 0, None, Some(60_000), Wait),
            (50, true, 0, 0, 0, None, Some(60_000), Drained),
            // A request in flight keeps every connection open.
            (100, true, 3, 1, 0, Some(3), Some(60_000), Wait),
            // Idle keep-alive connections: closed once idle_close_after (here 250 ms) passed.
            (100, true, 3, 0, 249, Some(3), Some(60_000), Wait),
            (100, true, 3, 0, 250, Some(3), Some(60_000), CloseIdle { connections: 3 }),
            (100, true, 3, 0, 250, None, Some(60_000), CloseIdle { connections: 3 }),
            // Idle but the acceptor is still watching: wait.
            (100, false, 3, 0, 10_000, Some(3), Some(60_000), Wait),
            // Hammer time: at the millisecond, not before.
            (59_999, true, 3, 2, 0, Some(3), Some(60_000), Wait),
            (60_000, true, 3, 2, 0, Some(3), Some(60_000), Hammer { connections: 3, in_flight: 2 }),
            (60_000, false, 3, 2, 0, Some(5), Some(60_000), Hammer { connections: 3, in_flight: 2 }),
            // Drained wins over hammer time at the same instant.
            (60_000, true, 0, 0, 0, Some(0), Some(60_000), Drained),
            // Never: no hammer, however long.
            (86_400_000, true, 3, 2, 0, Some(3), NEVER, Wait),
        ];
        for &(elapsed, paused, connections, in_flight, idle, kernel, hammer, expected) in table {
            let view = DrainView {
                elapsed: ms(elapsed),
                acceptor_paused: paused,
                connections,
                in_flight,
                idle_for: ms(idle),
            };
            let hammer = hammer.map_or(HammerTime::Never, |h| HammerTime::After(ms(h)));
            let verdict = drain(&view, ms(250), hammer, || kernel);
            assert_eq!(verdict, expected, "{view:?} kernel {kernel:?} {hammer:?}");
        }
    }

    #[test]
    fn the_kernel_is_asked_only_when_its_answer_decides() {
        let busy = DrainView {
            elapsed: ms(10),
            acceptor_paused: true,
            connections: 5,
            in_flight: 2,
            idle_for: ms(0),
        };
        let probe = || -> Option<usize> { panic!("probed while requests are in flight") };
        assert_eq!(
            drain(&busy, ms(250), HammerTime::Never, probe),
            DrainVerdict::Wait
        );
        let mut asked = 0;
        let idle = DrainView {
            in_flight: 0,
            idle_for: ms(300),
            ..busy
        };
        let verdict = drain(&idle, ms(250), HammerTime::Never, || {
            asked += 1;
            Some(5)
        });
        assert_eq!(verdict, DrainVerdict::CloseIdle { connections: 5 });
        assert_eq!(asked, 1);
    }

    /// (elapsed ms, credit, asked, pending, queued, limit or none, crowded for ms) -> allowance
    #[test]
    fn close_allowance_table() {
        const ALL: usize = usize::MAX;
        type Row = (u64, usize, usize, usize, usize, Option<usize>, u64, usize);
        #[rustfmt::skip]
        let table: &[Row] = &[
            // The first burst, before anything was served.
            (0, 0, 0, 0, 0, Some(4096), 0, 64),
            // Busy: the traffic's credit (here 100), plus the burst ...
            (10, 100, 0, 0, 0, Some(4096), 0, 164),
            (10, 100, 150, 20, 0, Some(4096), 0, 14),
            (10, 100, 164, 0, 0, Some(4096), 0, 0),
            // ... quiet: at least 1,000 a second (500 ms: 500, plus the burst).
            (500, 10, 0, 0, 0, Some(4096), 0, 564),
            (500, 10, 600, 0, 0, Some(4096), 0, 0),
            // The accept queue: pending closes plus queued connections within half of it.
            (10_000, 100_000, 0, 2000, 0, Some(4096), 0, 48),
            (10_000, 100_000, 0, 1000, 1000, Some(4096), 0, 48),
            (10_000, 100_000, 0, 0, 2048, Some(4096), 0, 0),
            (10_000, 100_000, 0, 0, 0, Some(128), 0, 64),
            (10_000, 100_000, 0, 10, 0, Some(128), 0, 54),
            // Crowded for the stall time: nobody accepts; pacing gives up.
            (10, 0, 64, 0, 2048, Some(4096), 249, 0),
            (10, 0, 64, 0, 2048, Some(4096), 250, ALL),
            // No count (a Unix socket): a window of pending closes; no stall rule.
            (10_000, 100_000, 0, 0, 0, None, 0, 512),
            (10_000, 100_000, 0, 500, 0, None, 0, 12),
            (10_000, 100_000, 0, 600, 0, None, 10_000, 0),
        ];
        for &(elapsed, credit, asked, pending, queued, limit, crowded, expected) in table {
            let view = CloseView {
                elapsed: ms(elapsed),
                credit,
                asked,
                pending,
                queue: limit.map(|limit| AcceptQueue { queued, limit }),
                crowded_for: ms(crowded),
            };
            assert_eq!(close_allowance(&view), expected, "{view:?}");
        }
        // (served, connections at start, now) -> credit: the old generation's share of the
        // traffic shrinks with its share of the connections.
        for (served, at_start, now, credit) in [
            (1_600, 10_000, 10_000, 100.0),
            (1_600, 10_000, 5_000, 200.0),
            (1_600, 10_000, 0, 1_000_000.0),
            (16, 0, 0, 1.0),
        ] {
            assert_eq!(
                traffic_credit(served, at_start, now),
                credit,
                "{served} {at_start} {now}"
            );
        }
        assert!(AcceptQueue {
            queued: 2048,
            limit: 4096
        }
        .crowded());
        assert!(!AcceptQueue {
            queued: 2047,
            limit: 4096
        }
        .crowded());
    }

    #[test]
    fn time_left_table() {
        let table = [
            (Some(60_000), 0, Some(60_000), 65_000),
            (Some(60_000), 12_345, Some(47_655), 52_655),
            (Some(60_000), 60_000, Some(0), 5_000),
            (Some(60_000), 70_000, Some(0), 5_000),
            (None, 1_000_000, None, 10_000),
        ];
        for (hammer, elapsed, left, extend) in table {
            let hammer = hammer.map_or(HammerTime::Never, |h| HammerTime::After(ms(h)));
            assert_eq!(
                time_left(hammer, ms(elapsed)),
                (left.map(ms), ms(extend)),
                "{hammer:?} after {elapsed} ms"
            );
        }
    }

    #[test]
    fn restart_delay_table() {
        let table = [
            (100, None, 100, 200),
            (100, Some(50), 100, 200),
            (800, Some(9_999), 800, 1_600),
            (800, Some(10_000), 100, 200),
            (8_000, None, 8_000, 10_000),
            (10_000, None, 10_000, 10_000),
        ];
        for (backoff, served, delay, next) in table {
            assert_eq!(
                restart_delay(ms(backoff), served.map(ms)),
                (ms(delay), ms(next)),
                "backoff {backoff} ms, served {served:?}"
            );
        }
    }
}
