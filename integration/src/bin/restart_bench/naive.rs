//! The naive rows: plain actix-web restarted the usual way (SIGTERM, wait, start again).

use super::*;

impl Runner {
    /// Naive rows: plain_hello on a fixed port, restarted by SIGTERM, wait for exit, start.
    pub(super) fn naive(
        &self,
        guard: &mut Guard,
        dir: &Path,
        spec: RowSpec,
    ) -> Result<RowData, String> {
        // The new process must bind the same port, so pick a free one first (bind to port 0,
        // read it, close). The race with other programs is accepted for this one case.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        let mut server = self.start_server(guard, dir, Kind::Naive, port)?;
        let wspec = self.wrk_spec(spec, server.addr);
        let schedule = restart_times(spec.duration, spec.restarts);
        let mut restarts = Restarts {
            requested: spec.restarts,
            ..Restarts::default()
        };
        let mut notes = Vec::new();

        let (wrk_pid, t0) = self.start_wrk(guard, dir, &wspec)?;
        let mut rec = timeline::Recorder::start(self.timed, server.addr, t0, spec.duration);
        for (i, at) in schedule.iter().enumerate() {
            let due = t0 + *at;
            // Wait for the slot; bounded by `due`, interrupted if wrk ends.
            let wrk_ended = poll_until(due, POLL, || guard.try_wait(wrk_pid).map(|_| ()));
            if procs::interrupted() {
                return Err(INTERRUPTED.into());
            }
            if wrk_ended.is_some() {
                restarts.problems.push(format!(
                    "{} of {} restarts not done before the load ended",
                    schedule.len() - i,
                    schedule.len()
                ));
                break;
            }
            let term = Instant::now();
            rec.signal(term);
            if !guard.signal_child(server.first, Signal::SIGTERM) {
                restarts.problems.push(format!(
                    "plain_hello {} was gone before SIGTERM",
                    server.first
                ));
            }
            match guard.wait_child(server.first, term + EXIT_TIMEOUT) {
                Some(_) => {
                    restarts.to_exit.push(term.elapsed());
                    rec.old_exit(Instant::now());
                }
                None => {
                    restarts.problems.push(format!(
                        "plain_hello {} did not exit within {:?} of SIGTERM; killed",
                        server.first, EXIT_TIMEOUT
                    ));
                    guard.signal_child(server.first, Signal::SIGKILL);
                    guard.wait_child(server.first, Instant::now() + Duration::from_secs(5));
                }
            }
            match self.restart_plain(guard, dir, port) {
                Ok((s, tries)) => {
                    restarts.to_ready.push(term.elapsed());
                    rec.ready(Instant::now());
                    restarts.completed += 1;
                    if tries > 1 {
                        notes.push(format!("restart {} needed {tries} attempts", i + 1));
                    }
                    server = s;
                }
                Err(e) => {
                    restarts.problems.push(e);
                    break;
                }
            }
        }

        let wrk = self.finish_wrk(guard, dir, (wrk_pid, t0), spec.duration)?;
        let (timeline, note) = rec.finish(dir, wrk.requests);
        notes.extend(note);
        if let Some(p) = Proc::of(server.first) {
            // Every plain_hello is our direct child: its CPU time is in getrusage(CHILDREN).
            notes.extend(stop_all(guard, &[p], &mut HashMap::new(), p.pid));
        }
        Ok(RowData {
            wrk,
            peak_rss_kib: None,
            restarts,
            notes,
            orphan_cpu_secs: 0.0,
            other_cpu_pct: None,
            timeline,
        })
    }

    /// Starts plain_hello on `port` again, retrying briefly if the port is not yet free.
    /// Returns the server and the number of attempts.
    fn restart_plain(
        &self,
        guard: &mut Guard,
        dir: &Path,
        port: u16,
    ) -> Result<(Server, u32), String> {
        const ATTEMPTS: u32 = 20;
        let mut last_err = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.start_server(guard, dir, Kind::Naive, port) {
                Ok(s) => return Ok((s, attempt)),
                Err(e) => last_err = e,
            }
            if procs::interrupted() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "plain_hello could not be restarted on port {port} ({ATTEMPTS} attempts): {last_err}"
        ))
    }
}
