//! The rows of the benchmark: start a server, put wrk on it, restart it while wrk runs, stop
//! it, and collect the figures.
//!
//! Every wait has a deadline and every loop is bounded by one; every process goes into a
//! [`Guard`] that kills it at the end of the row, also on error or panic.

use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{
    cli::{Config, ConnMode},
    procs::{self, poll_until, Guard, Proc},
    wrk::{self, WrkReport, WrkSpec},
};

/// How long a freshly started server has to publish its address.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a new hello generation has to rewrite the pid file after SIGHUP.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an old process may take to exit (after ready, or after SIGTERM).
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// Grace after wrk's duration before wrk is considered hung.
const WRK_GRACE: Duration = Duration::from_secs(30);
/// Poll period of the pid file and of process exits.
const POLL: Duration = Duration::from_millis(1);
/// Period of the RSS samples.
const RSS_PERIOD: Duration = Duration::from_millis(5);
/// Error of a row cut short by SIGINT/SIGTERM.
const INTERRUPTED: &str = "interrupted by a signal";

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `hello`, no restart.
    Control,
    /// `hello` with SIGHUP upgrades.
    Endless,
    /// `hello --master` with SIGHUP upgrades sent to the master.
    Master,
    /// `plain_hello` restarted by SIGTERM + start.
    Naive,
    /// `plain_hello`, no restart.
    Plain,
    /// `hello` with many keep-alive connections across upgrades.
    Scale,
}

impl Kind {
    /// Row label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Control => "control",
            Kind::Endless => "endless",
            Kind::Master => "master",
            Kind::Naive => "naive",
            Kind::Plain => "plain",
            Kind::Scale => "scale",
        }
    }
}

/// One row to run.
#[derive(Clone, Copy, Debug)]
pub struct RowSpec {
    /// What it measures.
    pub kind: Kind,
    /// Connection mode of wrk.
    pub mode: ConnMode,
    /// wrk `-c`.
    pub connections: u32,
    /// Restarts spread over the run.
    pub restarts: u32,
    /// Repetition number, from 1.
    pub run: u32,
    /// wrk `-d` (whole seconds).
    pub duration: Duration,
}

/// Restart figures of one row.
///
/// Endless rows: `to_ready` is SIGHUP until the pid file names a new pid, `to_exit` is from
/// then until the old pid is gone. Naive rows: `to_ready` is SIGTERM until the new process has
/// bound the port (the downtime), `to_exit` is SIGTERM until the old process exited.
#[derive(Clone, Debug, Default)]
pub struct Restarts {
    /// Restarts scheduled.
    pub requested: u32,
    /// Restarts that completed (new process ready).
    pub completed: u32,
    /// One entry per completed restart.
    pub to_ready: Vec<Duration>,
    /// One entry per old process seen exiting.
    pub to_exit: Vec<Duration>,
    /// What went wrong with restarts, if anything.
    pub problems: Vec<String>,
}

/// Figures of a row that ran.
#[derive(Clone, Debug)]
pub struct RowData {
    /// wrk's report.
    pub wrk: WrkReport,
    /// Peak of the summed VmRSS of all live server processes, KiB (not sampled for naive).
    pub peak_rss_kib: Option<u64>,
    /// Restart figures.
    pub restarts: Restarts,
    /// Other remarks (e.g. a server that did not stop in time).
    pub notes: Vec<String>,
    /// CPU seconds of server processes that someone else reaps (hello generations after the
    /// first, orphaned when their parent exits), last sampled value of each.
    pub orphan_cpu_secs: f64,
    /// Share of the machine's CPU capacity used during the row by processes the benchmark did
    /// not start: busy time from `/proc/stat` minus this process, its reaped children (both
    /// from `getrusage`), the orphaned generations and the `ksoftirqd` threads (our loopback
    /// traffic). A noise indicator.
    pub other_cpu_pct: Option<f64>,
}

/// A row and its outcome.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was run.
    pub spec: RowSpec,
    /// Figures, or why the row could not run.
    pub result: Result<RowData, String>,
}

/// Paths of the programs under test.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `examples/hello`.
    pub hello: PathBuf,
    /// `plain_hello`.
    pub plain: PathBuf,
    /// `wrk`.
    pub wrk: PathBuf,
}

/// Runs rows one after the other, each in its own directory under `work`.
pub struct Runner {
    cfg: Config,
    bins: Bins,
    work: PathBuf,
    seq: u32,
}

/// Restart times relative to the start of the load: the first at `min(1 s, duration / 5)`,
/// then evenly spaced so the last leaves as much time before the end (20 s and 10 restarts:
/// 1.0 s, 2.8 s, ..., 17.2 s).
pub fn restart_times(duration: Duration, n: u32) -> Vec<Duration> {
    if n == 0 {
        return Vec::new();
    }
    let start = Duration::from_secs(1).min(duration / 5);
    let spacing = duration.saturating_sub(start * 2) / n;
    (0..n).map(|i| start + spacing * i).collect()
}

/// The server processes of a row and how to find their current generation.
struct Server {
    /// The process we spawned.
    first: i32,
    /// Address it serves.
    addr: SocketAddr,
    /// Pid file (hello only).
    pid_file: Option<PathBuf>,
}

impl Runner {
    /// A runner writing its files under `work`.
    pub fn new(cfg: Config, bins: Bins, work: PathBuf) -> Self {
        Runner {
            cfg,
            bins,
            work,
            seq: 0,
        }
    }

    /// Runs one row; never panics on server or wrk failures, they become `Err` rows.
    pub fn run(&mut self, spec: RowSpec) -> Row {
        self.seq += 1;
        let dir = self.work.join(format!(
            "{:02}-{}-{}-{}",
            self.seq,
            spec.kind.name(),
            spec.mode.name(),
            spec.run
        ));
        let busy0 = procs::machine_busy_secs();
        let ours0 = procs::own_and_reaped_cpu_secs() + procs::ksoftirqd_cpu_secs();
        let t0 = Instant::now();
        let mut result = fs::create_dir_all(&dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))
            .and_then(|()| {
                // The guard lives exactly as long as the row: everything is killed and reaped
                // on return.
                let mut guard = Guard::default();
                match spec.kind {
                    Kind::Naive => self.naive(&mut guard, &dir, spec),
                    _ => self.monitored(&mut guard, &dir, spec),
                }
            });
        if let (Ok(d), Some(b0), Some(b1)) = (&mut result, busy0, procs::machine_busy_secs()) {
            let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let ours1 = procs::own_and_reaped_cpu_secs() + procs::ksoftirqd_cpu_secs();
            let ours = ours1 - ours0 + d.orphan_cpu_secs;
            let capacity = t0.elapsed().as_secs_f64() * cpus;
            d.other_cpu_pct = Some(((b1 - b0 - ours) / capacity * 100.0).max(0.0));
        }
        Row { spec, result }
    }

    /// wrk settings of a row.
    fn wrk_spec(&self, spec: RowSpec, addr: SocketAddr) -> WrkSpec {
        WrkSpec {
            addr,
            threads: self.cfg.threads,
            connections: spec.connections,
            duration: spec.duration,
            mode: spec.mode,
        }
    }

    /// Starts wrk with its output in `dir/wrk.out`. Returns its pid and start time.
    fn start_wrk(
        &self,
        guard: &mut Guard,
        dir: &Path,
        wspec: &WrkSpec,
    ) -> Result<(i32, Instant), String> {
        let out = fs::File::create(dir.join("wrk.out")).map_err(|e| format!("wrk.out: {e}"))?;
        fs::write(dir.join("wrk.cmd"), wspec.display(&self.bins.wrk) + "\n")
            .map_err(|e| format!("wrk.cmd: {e}"))?;
        let pid = guard
            .spawn(&mut wspec.command(&self.bins.wrk, out))
            .map_err(|e| format!("cannot start {}: {e}", self.bins.wrk.display()))?;
        Ok((pid, Instant::now()))
    }

    /// Waits for wrk to finish and parses its report.
    fn finish_wrk(
        &self,
        guard: &mut Guard,
        dir: &Path,
        wrk: (i32, Instant),
        duration: Duration,
    ) -> Result<WrkReport, String> {
        let (wrk_pid, t0) = wrk;
        let deadline = t0 + duration + WRK_GRACE;
        let status = guard
            .wait_child(wrk_pid, deadline)
            .ok_or(if procs::interrupted() {
                INTERRUPTED
            } else {
                "wrk did not finish within its duration + 30 s"
            })?;
        let text = fs::read_to_string(dir.join("wrk.out")).map_err(|e| format!("wrk.out: {e}"))?;
        if !status.success() {
            return Err(format!("wrk failed ({status}):\n{text}"));
        }
        wrk::parse(&text)
    }

    /// Starts a server (`hello` unless `kind` is naive/plain), waits until it serves and
    /// checks one request.
    fn start_server(
        &self,
        guard: &mut Guard,
        dir: &Path,
        kind: Kind,
        port: u16,
    ) -> Result<Server, String> {
        let addr_file = dir.join("addr");
        let _ = fs::remove_file(&addr_file);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .map_err(|e| format!("server.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("server.log: {e}"))?;
        let hello = !matches!(kind, Kind::Naive | Kind::Plain);
        let bin = if hello {
            &self.bins.hello
        } else {
            &self.bins.plain
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--workers")
            .arg(self.cfg.workers.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if kind == Kind::Master {
            cmd.arg("--master");
        }
        let pid_file = hello.then(|| dir.join("pid"));
        if let Some(p) = &pid_file {
            let _ = fs::remove_file(p);
            cmd.arg("--pid-file").arg(p);
        }
        let pid = guard
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;

        let deadline = Instant::now() + START_TIMEOUT;
        let mut exited = None;
        let addr = poll_until(deadline, POLL, || {
            if let Some(status) = guard.try_wait(pid) {
                exited = Some(status);
                return Some(None);
            }
            let addr = read_addr(&addr_file)?;
            match &pid_file {
                Some(p) if read_pid(p) != Some(pid) => None,
                _ => Some(Some(addr)),
            }
        });
        let addr = match (addr, exited) {
            (Some(Some(addr)), _) => addr,
            (_, Some(status)) => {
                return Err(format!(
                    "{} exited at start-up ({status}); log: {}",
                    bin.display(),
                    dir.join("server.log").display()
                ))
            }
            _ => {
                return Err(format!(
                    "{} did not write {} within {:?}",
                    bin.display(),
                    addr_file.display(),
                    START_TIMEOUT
                ))
            }
        };
        check_get(addr)?;
        Ok(Server {
            first: pid,
            addr,
            pid_file,
        })
    }

    /// Control, endless, plain and scale rows: one server, wrk, SIGHUP upgrades if any, RSS
    /// sampling; a single loop ticking every millisecond.
    fn monitored(&self, guard: &mut Guard, dir: &Path, spec: RowSpec) -> Result<RowData, String> {
        let server = self.start_server(guard, dir, spec.kind, 0)?;
        let wspec = self.wrk_spec(spec, server.addr);
        let schedule = restart_times(spec.duration, spec.restarts);
        let first = Proc::of(server.first).ok_or("server vanished after start-up")?;

        let mut tracked = vec![first];
        let mut restarts = Restarts {
            requested: spec.restarts,
            ..Restarts::default()
        };
        let mut next = 0usize;
        // Upgrade waiting for ready: (SIGHUP sent at, old process).
        let mut pending: Option<(Instant, Proc)> = None;
        // Old generations draining: (ready at, old process).
        let mut draining: Vec<(Instant, Proc)> = Vec::new();
        let mut peak_rss = 0u64;
        let mut orphan_cpu: HashMap<(i32, u64), f64> = HashMap::new();
        let mut last_sample: Option<Instant> = None;
        // Master rows: how many workers the master had promoted when the SIGHUP was sent.
        let mut readies_before = 0usize;

        let (wrk_pid, t0) = self.start_wrk(guard, dir, &wspec)?;
        let hard_deadline = t0 + spec.duration + WRK_GRACE + EXIT_TIMEOUT;
        let mut wrk_done = false;
        loop {
            let now = Instant::now();
            guard.reap();
            if !wrk_done && guard.try_wait(wrk_pid).is_some() {
                wrk_done = true;
            }

            if last_sample.is_none_or(|t| now - t >= RSS_PERIOD) {
                last_sample = Some(now);
                let rss = sample(guard, &mut tracked, first.pid, &mut orphan_cpu);
                peak_rss = peak_rss.max(rss);
            }

            if let (Some((sent, old)), true) = (pending, spec.kind == Kind::Master) {
                // The master keeps its pid (and the pid file); it logs each worker it promotes.
                if ready_count(dir) > readies_before {
                    let ready = Instant::now();
                    restarts.to_ready.push(ready - sent);
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
                        restarts.completed += 1;
                        if let Some(p) = Proc::of(pid) {
                            track(guard, &mut tracked, p, first.pid);
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

            if pending.is_none() && !wrk_done && next < schedule.len() && now - t0 >= schedule[next]
            {
                next += 1;
                let sent = if spec.kind == Kind::Master {
                    readies_before = ready_count(dir);
                    sighup_master(first, &tracked)
                } else {
                    self.sighup_current(&server, &tracked)
                };
                match sent {
                    Ok(old) => pending = Some((Instant::now(), old)),
                    Err(e) => restarts.problems.push(e),
                }
            }

            if wrk_done && pending.is_none() && draining.is_empty() {
                break;
            }
            if procs::interrupted() {
                return Err(INTERRUPTED.into());
            }
            if now >= hard_deadline {
                restarts
                    .problems
                    .push("monitor loop hit its deadline; remaining waits abandoned".into());
                break;
            }
            thread::sleep(POLL);
        }
        if next < schedule.len() {
            restarts.problems.push(format!(
                "{} of {} upgrades not sent before the load ended (earlier upgrades were slow)",
                schedule.len() - next,
                schedule.len()
            ));
        }

        let wrk = self.finish_wrk(guard, dir, (wrk_pid, t0), spec.duration)?;
        let notes = stop_all(guard, &tracked, &mut orphan_cpu, first.pid);
        Ok(RowData {
            wrk,
            peak_rss_kib: Some(peak_rss),
            restarts,
            notes,
            orphan_cpu_secs: orphan_cpu.values().sum(),
            other_cpu_pct: None,
        })
    }

    /// Reads the current pid from the pid file and sends it SIGHUP. Returns that process.
    fn sighup_current(&self, server: &Server, tracked: &[Proc]) -> Result<Proc, String> {
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

    /// Naive rows: plain_hello on a fixed port, restarted by SIGTERM, wait for exit, start.
    fn naive(&self, guard: &mut Guard, dir: &Path, spec: RowSpec) -> Result<RowData, String> {
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
            if !guard.signal_child(server.first, Signal::SIGTERM) {
                restarts.problems.push(format!(
                    "plain_hello {} was gone before SIGTERM",
                    server.first
                ));
            }
            match guard.wait_child(server.first, term + EXIT_TIMEOUT) {
                Some(_) => restarts.to_exit.push(term.elapsed()),
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

/// How many workers the master has reported ready so far (its log lines).
fn ready_count(dir: &Path) -> usize {
    fs::read_to_string(dir.join("server.log"))
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("master pid") && l.contains(") is ready after"))
                .count()
        })
        .unwrap_or(0)
}

/// Sends SIGHUP to the master and returns the worker it serves with now (its newest live
/// child), which the upgrade replaces.
fn sighup_master(master: Proc, tracked: &[Proc]) -> Result<Proc, String> {
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
fn track(guard: &mut Guard, tracked: &mut Vec<Proc>, p: Proc, direct: i32) {
    if !tracked.contains(&p) {
        tracked.push(p);
        if p.pid != direct {
            guard.adopt(p);
        }
    }
}

/// One sample: discovers children of the tracked processes (a new generation appears as a
/// child of the old one before it is ready), records the CPU time of the processes we do not
/// reap ourselves (all but `direct`), and returns the summed VmRSS of all live ones, in KiB.
fn sample(
    guard: &mut Guard,
    tracked: &mut Vec<Proc>,
    direct: i32,
    orphan_cpu: &mut HashMap<(i32, u64), f64>,
) -> u64 {
    let live: Vec<Proc> = tracked.iter().copied().filter(|p| !p.is_gone()).collect();
    for parent in &live {
        for pid in procs::children(parent.pid) {
            if let Some(child) = Proc::of(pid) {
                track(guard, tracked, child, direct);
            }
        }
    }
    record_cpu(tracked, direct, orphan_cpu);
    tracked
        .iter()
        .filter(|p| !p.is_gone())
        .filter_map(|p| procs::rss_kib(p.pid))
        .sum()
}

/// Updates the last seen CPU time of every live tracked process except `direct`.
fn record_cpu(tracked: &[Proc], direct: i32, orphan_cpu: &mut HashMap<(i32, u64), f64>) {
    for p in tracked.iter().filter(|p| p.pid != direct) {
        if let Some(cpu) = procs::cpu_secs(p) {
            orphan_cpu.insert((p.pid, p.start_time), cpu);
        }
    }
}

/// Stops every tracked process still running with SIGTERM and waits for all of them; what
/// does not exit within [`EXIT_TIMEOUT`] is left to the guard's SIGKILL. Keeps recording the
/// CPU time of the processes we do not reap (see [`record_cpu`]). Returns notes.
fn stop_all(
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
fn read_addr(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The pid in a pid file, if readable.
fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One `GET /` that must answer 200, so a broken server fails its row with a clear message
/// instead of a table full of non-2xx.
fn check_get(addr: SocketAddr) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_issue() {
        let t = restart_times(Duration::from_secs(20), 10);
        assert_eq!(t.len(), 10);
        assert_eq!(t[0], Duration::from_secs(1));
        assert_eq!(t[1], Duration::from_millis(2800));
        assert_eq!(t[9], Duration::from_millis(17200));
        let q = restart_times(Duration::from_secs(5), 3);
        assert_eq!(
            q,
            [1, 2, 3].map(Duration::from_secs).to_vec(),
            "quick: one restart per second"
        );
        assert!(restart_times(Duration::from_secs(5), 0).is_empty());
    }
}
