//! Process sampling and small helpers of the row drivers: readiness, RSS and CPU samples,
//! stopping every tracked process, reading the files a server writes.

use super::*;

/// How many workers the master has reported ready so far (its lines in `log`).
pub(super) fn ready_count(log: &Path) -> usize {
    fs::read_to_string(log)
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("master pid") && l.contains(") is ready after"))
                .count()
        })
        .unwrap_or(0)
}

/// Sends SIGHUP to the master and returns the worker it serves with now (its newest live
/// child), which the upgrade replaces.
pub(super) fn sighup_master(master: Proc, tracked: &[Proc]) -> Result<Proc, String> {
    let worker = procs::children(master.pid)
        .into_iter()
        .filter_map(Proc::of)
        .filter(|p| tracked.contains(p) || !p.is_gone())
        .max_by_key(|p| p.start_time)
        .ok_or("the master has no worker")?;
    if master.signal(Signal::SIGHUP) {
        Ok(worker)
    } else {
        Err(format!(
            "could not send SIGHUP to the master {}",
            master.pid
        ))
    }
}

/// Adds `p` to the tracked processes (and to the guard unless it is our direct child).
pub(super) fn track(guard: &mut Guard, tracked: &mut Vec<Proc>, p: Proc, direct: i32) {
    if !tracked.contains(&p) {
        tracked.push(p);
        if p.pid != direct {
            guard.adopt(p);
        }
    }
}

/// One sample: forgets the processes that exited (reading `/proc` for every generation ever
/// seen would cost the machine more with every upgrade), discovers children of the others (a
/// new generation appears as a child of the old one before it is ready), records the CPU time
/// of the processes we do not reap ourselves (all but `direct`), and returns the summed VmRSS
/// of the live ones, in KiB.
pub(super) fn sample(
    guard: &mut Guard,
    tracked: &mut Vec<Proc>,
    direct: i32,
    orphan_cpu: &mut HashMap<(i32, u64), f64>,
) -> u64 {
    tracked.retain(|p| !p.is_gone());
    for parent in tracked.clone() {
        for pid in procs::children(parent.pid) {
            if let Some(child) = Proc::of(pid) {
                track(guard, tracked, child, direct);
            }
        }
    }
    record_cpu(tracked, direct, orphan_cpu);
    tracked.iter().filter_map(|p| procs::rss_kib(p.pid)).sum()
}

/// Updates the last seen CPU time of every live tracked process except `direct`.
pub(super) fn record_cpu(tracked: &[Proc], direct: i32, orphan_cpu: &mut HashMap<(i32, u64), f64>) {
    for p in tracked.iter().filter(|p| p.pid != direct) {
        if let Some(cpu) = procs::cpu_secs(p) {
            orphan_cpu.insert((p.pid, p.start_time), cpu);
        }
    }
}

/// Stops every tracked process still running with SIGTERM and waits for all of them; what
/// does not exit within [`EXIT_TIMEOUT`] is left to the guard's SIGKILL. Keeps recording the
/// CPU time of the processes we do not reap (see [`record_cpu`]). Returns notes.
pub(super) fn stop_all(
    guard: &mut Guard,
    tracked: &[Proc],
    orphan_cpu: &mut HashMap<(i32, u64), f64>,
    direct: i32,
) -> Vec<String> {
    record_cpu(tracked, direct, orphan_cpu);
    for p in tracked {
        p.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let done = poll_until(deadline, Duration::from_millis(2), || {
        guard.reap();
        record_cpu(tracked, direct, orphan_cpu);
        tracked.iter().all(Proc::is_gone).then_some(())
    });
    if done.is_some() {
        Vec::new()
    } else {
        let stuck: Vec<String> = tracked
            .iter()
            .filter(|p| !p.is_gone())
            .map(|p| p.pid.to_string())
            .collect();
        guard.kill_all();
        vec![format!(
            "server pid(s) {} did not stop within {EXIT_TIMEOUT:?} of SIGTERM; killed",
            stuck.join(", ")
        )]
    }
}

/// First address in an addr file, if it is complete.
pub(super) fn read_addr(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The pid in a pid file, if readable.
pub(super) fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One `GET /` that must answer 200, so a broken server fails its row with a clear message
/// instead of a table full of non-2xx.
pub(super) fn check_get(addr: SocketAddr) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let err = |e: std::io::Error| format!("GET http://{addr}/: {e}");
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(err)?;
    s.set_read_timeout(Some(timeout)).map_err(err)?;
    s.set_write_timeout(Some(timeout)).map_err(err)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(err)?;
    let mut buf = Vec::new();
    s.take(64 * 1024).read_to_end(&mut buf).map_err(err)?;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "GET http://{addr}/ did not answer 200: {:?}",
            text.lines().next().unwrap_or("")
        ))
    }
}
