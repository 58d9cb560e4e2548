//! Process bookkeeping: spawning, liveness, memory, and a guard that kills everything the
//! benchmark started.
//!
//! A pid alone is not an identity: once a process is gone its number can be reused. Every
//! process we did not spawn ourselves (later hello generations, which are re-exec'd children
//! of an earlier generation) is therefore remembered as a [`Proc`]: pid plus the kernel start
//! time from `/proc/<pid>/stat`. A process whose start time differs is a stranger and is never
//! signalled.

use std::{
    fs, io,
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal},
    unistd::Pid,
};

/// Set by SIGINT/SIGTERM: every wait gives up, the rows end, the guards kill what we started.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The SIGINT/SIGTERM handler: one atomic store, which is async-signal-safe.
extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the benchmark, so that the guards
/// still kill every process it started. Children get default dispositions back at exec.
pub fn catch_interrupts() -> io::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe, cannot panic).
        unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM was received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A process identity: pid plus start time (clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
}

impl Proc {
    /// The process currently holding `pid`, if any.
    pub fn of(pid: i32) -> Option<Proc> {
        let (_, start_time) = stat(pid)?;
        Some(Proc { pid, start_time })
    }

    /// True when this process no longer runs: no such pid (`kill(pid, 0)` would fail with
    /// ESRCH), a zombie or dead state (it exited; its parent, which may be an init that
    /// reaps late, has not reaped it yet), or the pid now belongs to another process.
    pub fn is_gone(&self) -> bool {
        match stat(self.pid) {
            None => true,
            Some((state, start)) => state == 'Z' || state == 'X' || start != self.start_time,
        }
    }

    /// Sends `sig` unless the process is gone. Returns whether it was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        if self.is_gone() {
            return false;
        }
        // The identity was checked just above; the window for pid reuse in between is
        // microseconds, and only our own short-lived children can be involved.
        kill(Pid::from_raw(self.pid), sig).is_ok()
    }
}

/// State letter and start time from `/proc/<pid>/stat`; `None` if there is no such process.
fn stat(pid: i32) -> Option<(char, u64)> {
    let f = stat_fields(pid)?;
    Some((f.first()?.chars().next()?, f.get(19)?.parse().ok()?))
}

/// The fields of `/proc/<pid>/stat` from field 3 (state) on: index `i` is field `i + 3`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses, so split after the
    // last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second of `/proc` times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// CPU time (user + system, all threads) `p` has used so far, in seconds; `None` if gone.
pub fn cpu_secs(p: &Proc) -> Option<f64> {
    let f = stat_fields(p.pid)?;
    if f.get(19)?.parse::<u64>().ok()? != p.start_time {
        return None;
    }
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// CPU time of the whole machine that was not idle (user, nice, system, irq, softirq,
/// steal), in seconds summed over all CPUs, from the first line of `/proc/stat`.
pub fn machine_busy_secs() -> Option<f64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(busy as f64 / clock_ticks())
}

/// CPU time used so far by the `ksoftirqd/N` kernel threads, in seconds. Under loopback load
/// they mostly process our own traffic, so the noise indicator counts them as ours.
pub fn ksoftirqd_cpu_secs() -> f64 {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if !text.contains("(ksoftirqd/") {
            continue;
        }
        if let Some(f) = stat_fields(pid) {
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ticks += field(11) + field(12);
        }
    }
    ticks as f64 / clock_ticks()
}

/// CPU time used by this process plus its reaped descendants (`getrusage` SELF +
/// CHILDREN), in seconds.
pub fn own_and_reaped_cpu_secs() -> f64 {
    let secs = |who| {
        // SAFETY: all-zero is a valid rusage; getrusage fills it through a valid pointer.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrusage(who, &mut ru) } != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    secs(libc::RUSAGE_SELF) + secs(libc::RUSAGE_CHILDREN)
}

/// Resident set size (`VmRSS` of `/proc/<pid>/status`) in KiB; `None` if unavailable.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Children of `pid`, from `/proc/<pid>/task/*/children` (every thread's list, since any
/// thread may have forked). Empty if unavailable.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|w| w.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Polls `f` every `every` until it returns `Some`, `deadline` passes or the benchmark is
/// interrupted.
pub fn poll_until<T>(
    deadline: Instant,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline || interrupted() {
            return None;
        }
        thread::sleep(every);
    }
}

/// Everything the benchmark started, killed by pid when dropped (also on panic).
///
/// Direct children are kept as [`Child`]: an unreaped child's pid cannot be reused, so
/// signalling it is always safe, and [`Guard::reap`] reaps them with `waitpid(WNOHANG)`.
/// Processes started by our children (later hello generations) are kept as [`Proc`].
#[derive(Default)]
pub struct Guard {
    children: Vec<(Child, Option<ExitStatus>)>,
    adopted: Vec<Proc>,
}

impl Guard {
    /// Spawns `cmd` and keeps the child. Returns its pid.
    pub fn spawn(&mut self, cmd: &mut Command) -> io::Result<i32> {
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        self.children.push((child, None));
        Ok(pid)
    }

    /// Remembers a process we did not spawn, to be killed at the end if still running.
    pub fn adopt(&mut self, p: Proc) {
        if !self.adopted.contains(&p) {
            self.adopted.push(p);
        }
    }

    /// Reaps direct children that exited (`waitpid(WNOHANG)`).
    pub fn reap(&mut self) {
        for (child, status) in &mut self.children {
            if status.is_none() {
                if let Ok(Some(s)) = child.try_wait() {
                    *status = Some(s);
                }
            }
        }
    }

    /// Exit status of direct child `pid` if it exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self, pid: i32) -> Option<ExitStatus> {
        self.reap();
        self.children
            .iter()
            .find(|(c, _)| c.id() as i32 == pid)
            .and_then(|(_, s)| *s)
    }

    /// Waits for direct child `pid` to exit, until `deadline`. `None` on timeout.
    pub fn wait_child(&mut self, pid: i32, deadline: Instant) -> Option<ExitStatus> {
        poll_until(deadline, Duration::from_millis(1), || self.try_wait(pid))
    }

    /// Sends `sig` to direct child `pid` if it has not been reaped.
    pub fn signal_child(&mut self, pid: i32, sig: Signal) -> bool {
        self.reap();
        let running = self
            .children
            .iter()
            .any(|(c, s)| c.id() as i32 == pid && s.is_none());
        // An unreaped child keeps its pid, so this cannot hit a stranger.
        running && kill(Pid::from_raw(pid), sig).is_ok()
    }

    /// Sends SIGKILL to everything still running and reaps the direct children.
    pub fn kill_all(&mut self) {
        self.reap();
        for (child, status) in &mut self.children {
            if status.is_none() {
                let _ = child.kill();
                // SIGKILL cannot be caught; bound the wait anyway. Not `poll_until`: this must
                // also run after an interrupt.
                let deadline = Instant::now() + Duration::from_secs(5);
                while status.is_none() && Instant::now() < deadline {
                    *status = child.try_wait().ok().flatten();
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
        for p in &self.adopted {
            p.signal(Signal::SIGKILL);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Raises the soft `RLIMIT_NOFILE` of this process to at least `want` (up to the hard limit,
/// and the hard limit too if we are allowed to). Children inherit the limit. Returns the new
/// soft limit.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let mut new = lim;
    if lim.rlim_max < want {
        // Needs CAP_SYS_RESOURCE; fall back to the hard limit below if refused.
        new.rlim_max = want;
    }
    new.rlim_cur = want;
    // SAFETY: setrlimit reads one rlimit struct through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
        return Ok(want);
    }
    new = lim;
    new.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_has_rss() {
        let me = Proc::of(std::process::id() as i32).unwrap();
        assert!(!me.is_gone());
        assert!(rss_kib(me.pid).unwrap() > 0);
        let stranger = Proc {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(stranger.is_gone());
    }

    #[test]
    fn guard_kills_and_reaps() {
        let mut g = Guard::default();
        let pid = g.spawn(Command::new("sleep").arg("600")).unwrap();
        assert!(children(std::process::id() as i32).contains(&pid));
        let p = Proc::of(pid).unwrap();
        drop(g);
        assert!(p.is_gone());
    }
}
