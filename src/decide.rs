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

/// Without an accept-queue count (a Unix socket): how many keep-alive connections asked to
/// close may be still open at a time.
pub(crate) const CLOSE_WINDOW: usize = 512;
/// How long the accept queue may stay at least half full before pacing gives up: nobody is
/// taking connections from it (a stop, not a hand-over), so holding clients back gains nothing.
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

/// How many more keep-alive connections a draining process may ask to close now, the pacing
/// that keeps a drain from turning into a reconnect storm: every client asked reconnects at
/// once, to the shared accept queue, and a queue that overflows drops connections that the
/// client's kernel retries only after a second. So the closes asked and not yet done
/// (`pending`), plus the connections already waiting in the queue, stay within half the
/// queue; the other half is for clients arriving anyway. `queue` is `None` where the kernel
/// gives no count (then [`CLOSE_WINDOW`] pending closes at a time); `crowded_for` is how long
/// the queue has been [`AcceptQueue::crowded`] without a break.
pub(crate) fn close_allowance(
    queue: Option<AcceptQueue>,
    pending: usize,
    crowded_for: Duration,
) -> usize {
    match queue {
        None => CLOSE_WINDOW.saturating_sub(pending),
        Some(_) if crowded_for >= QUEUE_STALL => usize::MAX,
        Some(q) => (q.limit / 2).saturating_sub(q.queued + pending),
    }
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

    /// (queued, limit or none, pending, crowded for ms) -> allowance
    #[test]
    fn close_allowance_table() {
        const ALL: usize = usize::MAX;
        #[rustfmt::skip]
        let table: &[(usize, Option<usize>, usize, u64, usize)] = &[
            // An empty queue of 4096: half of it for clients asked to reconnect.
            (0, Some(4096), 0, 0, 2048),
            // Asked and not yet reconnected, or waiting in the queue: counted against it.
            (0, Some(4096), 2000, 0, 48),
            (1000, Some(4096), 1000, 0, 48),
            (2048, Some(4096), 0, 0, 0),
            (4096, Some(4096), 0, 0, 0),
            (3000, Some(4096), 5000, 0, 0),
            // A small backlog paces as tightly.
            (0, Some(128), 10, 0, 54),
            // Crowded for the stall time: nobody accepts; pacing gives up.
            (2048, Some(4096), 0, 249, 0),
            (2048, Some(4096), 0, 250, ALL),
            (4096, Some(4096), 9999, 10_000, ALL),
            // No count (a Unix socket): a window of pending closes.
            (0, None, 0, 0, 512),
            (0, None, 500, 0, 12),
            (0, None, 600, 0, 0),
            (0, None, 600, 10_000, 0),
        ];
        for &(queued, limit, pending, crowded, expected) in table {
            let queue = limit.map(|limit| AcceptQueue { queued, limit });
            assert_eq!(
                close_allowance(queue, pending, ms(crowded)),
                expected,
                "{queue:?}, {pending} pending, crowded for {crowded} ms"
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
