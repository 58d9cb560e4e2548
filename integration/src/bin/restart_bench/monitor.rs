//! The monitor loop: one wrk run against a running server, with its upgrades sent on schedule
//! and each one followed until the new generation is ready and the old one has exited.
//!
//! A row runs it once against a fresh server; an interleaved comparison (`warm.rs`) runs it
//! once per slice against a server that lives for the whole comparison, so the processes a
//! server has had ([`Tracked`]) outlive one run.

use super::*;
use crate::timeline::Recorder;

/// The processes of one server across its generations, and what sampling them found.
pub(super) struct Tracked {
    /// The server's first process (hello's, or nginx's master).
    first: Proc,
    /// The process we spawned and reap ourselves; the others are adopted by the guard.
    direct: i32,
    /// The live processes seen: the first, its successors, the master's workers.
    procs: Vec<Proc>,
    /// Last CPU seconds seen of the processes we do not reap (see [`record_cpu`]).
    orphan_cpu: HashMap<(i32, u64), f64>,
    /// Peak of the summed VmRSS of the live processes, KiB.
    peak_rss_kib: u64,
    /// When the processes were last sampled.
    last_sample: Option<Instant>,
}

impl Tracked {
    /// The processes of `server`, which has just started.
    pub(super) fn of(server: &Server) -> Result<Tracked, String> {
        let first = Proc::of(server.first).ok_or("server vanished after start-up")?;
        Ok(Tracked::new(first, server.first))
    }

    /// The processes of a server whose first process is `first`, started through our child
    /// `direct` (the same process unless the server daemonizes).
    pub(in crate::scenario) fn new(first: Proc, direct: i32) -> Tracked {
        Tracked {
            first,
            direct,
            procs: vec![first],
            orphan_cpu: HashMap::new(),
            peak_rss_kib: 0,
            last_sample: None,
        }
    }

    /// Samples RSS, CPU and new children at most every [`RSS_PERIOD`].
    pub(in crate::scenario) fn sample(&mut self, guard: &mut Guard, now: Instant) {
        if self.last_sample.is_none_or(|t| now - t >= RSS_PERIOD) {
            self.last_sample = Some(now);
            let rss = sample(guard, &mut self.procs, self.direct, &mut self.orphan_cpu);
            self.peak_rss_kib = self.peak_rss_kib.max(rss);
        }
    }

    /// Adds a process found another way than as a child (a new generation named by a pid
    /// file).
    pub(in crate::scenario) fn add(&mut self, guard: &mut Guard, p: Proc) {
        track(guard, &mut self.procs, p, self.direct);
    }

    /// The live processes seen so far (as of the last sample).
    pub(in crate::scenario) fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// Peak of the summed VmRSS so far, KiB.
    pub(in crate::scenario) fn peak_rss_kib(&self) -> u64 {
        self.peak_rss_kib
    }

    /// CPU seconds of the processes someone else reaps.
    pub(in crate::scenario) fn orphan_cpu_secs(&self) -> f64 {
        self.orphan_cpu.values().sum()
    }

    /// The server's current process: the live one the pid file names, else the first.
    pub(super) fn current(&self, server: &Server) -> Option<Proc> {
        let pid = server.pid_file.as_deref().and_then(read_pid);
        self.procs
            .iter()
            .copied()
            .find(|p| Some(p.pid) == pid && !p.is_gone())
            .or_else(|| (!self.first.is_gone()).then_some(self.first))
    }

    /// Stops every process with SIGTERM (see [`stop_all`]); returns notes.
    pub(in crate::scenario) fn stop(&mut self, guard: &mut Guard) -> Vec<String> {
        stop_all(guard, &self.procs, &mut self.orphan_cpu, self.direct)
    }
}

/// What one monitored wrk run measured.
pub(super) struct Load {
    /// wrk's report.
    pub wrk: WrkReport,
    /// The upgrades of the run.
    pub restarts: Restarts,
    /// Upgrade instants, and the per-100 ms counts of a timed run.
    pub timeline: Timeline,
    /// Remarks of the timeline.
    pub notes: Vec<String>,
}

/// The upgrade times of a run, and how many have been sent.
pub(in crate::scenario) struct Schedule {
    times: Vec<Duration>,
    next: usize,
}

impl Schedule {
    /// `n` upgrades over `duration` (see [`restart_times`]).
    fn new(duration: Duration, n: u32) -> Schedule {
        Schedule {
            times: restart_times(duration, n),
            next: 0,
        }
    }

    /// True (once per upgrade) when the next upgrade is due at `now`, wrk having started at
    /// `t0`.
    pub(in crate::scenario) fn due(&mut self, t0: Instant, now: Instant) -> bool {
        let due = self.times.get(self.next).is_some_and(|&at| now - t0 >= at);
        self.next += usize::from(due);
        due
    }

    /// Notes the upgrades that were never sent: the load ended first.
    fn note_unsent(&self, problems: &mut Vec<String>) {
        if self.next < self.times.len() {
            problems.push(format!(
                "{} of {} upgrades not sent before the load ended (earlier upgrades were slow)",
                self.times.len() - self.next,
                self.times.len()
            ));
        }
    }
}

/// What the step of a monitor loop gets on each tick.
pub(in crate::scenario) struct Tick<'a> {
    /// The row's processes.
    pub guard: &'a mut Guard,
    /// This tick.
    pub now: Instant,
    /// wrk's start.
    pub t0: Instant,
    /// wrk has finished: send no more upgrades.
    pub wrk_done: bool,
    /// The row's timeline (upgrade instants).
    pub rec: &'a mut Recorder,
    /// The row's upgrade figures.
    pub restarts: &'a mut Restarts,
}

impl Runner {
    /// The loop every row and slice runs: puts wrk on `addr` for `spec.duration`, then calls
    /// `step` every [`POLL`] (it sends the `spec.restarts` upgrades when the [`Schedule`] it
    /// is given says so, and follows them)
    /// until wrk has finished and `step` reports nothing in progress, the benchmark is
    /// interrupted, or a deadline passes. `what` names the loop in its deadline problem.
    pub(in crate::scenario) fn drive(
        &self,
        guard: &mut Guard,
        dir: &Path,
        spec: RowSpec,
        addr: SocketAddr,
        what: &str,
        mut step: impl FnMut(Tick<'_>, &mut Schedule) -> bool,
    ) -> Result<Load, String> {
        let mut schedule = Schedule::new(spec.duration, spec.restarts);
        let mut restarts = Restarts {
            requested: spec.restarts,
            ..Restarts::default()
        };
        let (wrk_pid, t0) = self.start_wrk(guard, dir, &self.wrk_spec(spec, addr))?;
        let mut rec = Recorder::start(self.timed, addr, t0, spec.duration);
        let hard_deadline = t0 + spec.duration + WRK_GRACE + EXIT_TIMEOUT;
        let mut wrk_done = false;
        loop {
            let now = Instant::now();
            guard.reap();
            if !wrk_done && guard.try_wait(wrk_pid).is_some() {
                wrk_done = true;
            }
            let tick = Tick {
                guard: &mut *guard,
                now,
                t0,
                wrk_done,
                rec: &mut rec,
                restarts: &mut restarts,
            };
            let busy = step(tick, &mut schedule);
            if wrk_done && !busy {
                break;
            }
            if procs::interrupted() {
                return Err(INTERRUPTED.into());
            }
            if now >= hard_deadline {
                restarts.problems.push(format!(
                    "{what} loop hit its deadline; remaining waits abandoned"
                ));
                break;
            }
            thread::sleep(POLL);
        }
        schedule.note_unsent(&mut restarts.problems);

        let wrk = self.finish_wrk(guard, dir, (wrk_pid, t0), spec.duration)?;
        let (timeline, note) = rec.finish(dir, wrk.requests);
        Ok(Load {
            wrk,
            restarts,
            timeline,
            notes: note.into_iter().collect(),
        })
    }

    /// Puts wrk on `server` for `spec.duration`, sends `spec.restarts` upgrades on the
    /// schedule of [`restart_times`] and follows each one (ready, old exit), then waits for
    /// wrk and for the last old generation. Leaves the server running.
    pub(super) fn load(
        &self,
        guard: &mut Guard,
        dir: &Path,
        spec: RowSpec,
        server: &Server,
        tracked: &mut Tracked,
    ) -> Result<Load, String> {
        // Upgrade waiting for ready: (SIGHUP sent at, old process).
        let mut pending: Option<(Instant, Proc)> = None;
        // Old generations draining: (ready at, old process).
        let mut draining: Vec<(Instant, Proc)> = Vec::new();
        // Master rows: how many workers the master had promoted when the SIGHUP was sent.
        let mut readies_before = 0usize;
        self.drive(guard, dir, spec, server.addr, "monitor", |tick, schedule| {
            let Tick {
                guard,
                now,
                t0,
                wrk_done,
                rec,
                restarts,
            } = tick;
            tracked.sample(guard, now);

            if let (Some((sent, old)), true) = (pending, spec.kind == Kind::Master) {
                // The master keeps its pid (and the pid file); it logs each worker it promotes.
                if ready_count(&server.log) > readies_before {
                    let ready = Instant::now();
                    restarts.to_ready.push(ready - sent);
                    rec.ready(ready);
                    restarts.completed += 1;
                    draining.push((ready, old));
                    pending = None;
                } else if now - sent > READY_TIMEOUT {
                    restarts.problems.push(format!(
                        "master upgrade sent at {:.3} s: no new worker ready within {:?}",
                        (sent - t0).as_secs_f64(),
                        READY_TIMEOUT
                    ));
                    pending = None;
                }
            } else if let (Some((sent, old)), Some(pid_file)) = (pending, &server.pid_file) {
                match read_pid(pid_file) {
                    Some(pid) if pid != old.pid => {
                        let ready = Instant::now();
                        restarts.to_ready.push(ready - sent);
                        rec.ready(ready);
                        restarts.completed += 1;
                        if let Some(p) = Proc::of(pid) {
                            tracked.add(guard, p);
                        }
                        draining.push((ready, old));
                        pending = None;
                    }
                    _ if now - sent > READY_TIMEOUT => {
                        restarts.problems.push(format!(
                            "upgrade of pid {} sent at {:.3} s: no new pid in the pid file within {:?}",
                            old.pid,
                            (sent - t0).as_secs_f64(),
                            READY_TIMEOUT
                        ));
                        pending = None;
                    }
                    _ if old.is_gone() => {
                        restarts.problems.push(format!(
                            "pid {} exited before a new generation was ready",
                            old.pid
                        ));
                        pending = None;
                    }
                    _ => {}
                }
            }

            draining.retain(|(ready, old)| {
                let since = Instant::now().saturating_duration_since(*ready);
                if old.is_gone() {
                    restarts.to_exit.push(since);
                    rec.old_exit(*ready + since);
                    false
                } else if since > EXIT_TIMEOUT {
                    restarts.problems.push(format!(
                        "old pid {} still running {:?} after its successor was ready",
                        old.pid, EXIT_TIMEOUT
                    ));
                    false
                } else {
                    true
                }
            });

            if pending.is_none() && !wrk_done && schedule.due(t0, now) {
                let sent = if spec.kind == Kind::Master {
                    readies_before = ready_count(&server.log);
                    sighup_master(tracked.first, &tracked.procs)
                } else {
                    sighup_current(server, &tracked.procs)
                };
                match sent {
                    Ok(old) => {
                        let sent = Instant::now();
                        rec.signal(sent);
                        pending = Some((sent, old));
                    }
                    Err(e) => restarts.problems.push(e),
                }
            }
            pending.is_some() || !draining.is_empty()
        })
    }
}

/// Reads the current pid from the pid file and sends it SIGHUP. Returns that process.
fn sighup_current(server: &Server, tracked: &[Proc]) -> Result<Proc, String> {
    let pid_file = server.pid_file.as_ref().ok_or("restarts need a pid file")?;
    let pid = read_pid(pid_file)
        .ok_or_else(|| format!("cannot read a pid from {}", pid_file.display()))?;
    // Only signal a process we know as a hello generation.
    let p = tracked
        .iter()
        .copied()
        .find(|p| p.pid == pid && !p.is_gone())
        .ok_or_else(|| format!("pid file names {pid}, which is not a live hello process"))?;
    if p.signal(Signal::SIGHUP) {
        Ok(p)
    } else {
        Err(format!("could not send SIGHUP to {pid}"))
    }
}
