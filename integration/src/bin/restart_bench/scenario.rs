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
    timeline::{self, Timeline},
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

#[path = "monitor.rs"]
mod monitor;
/// The peer rows (nginx, ecdysis): a child module, to drive rows with the runner's helpers.
#[path = "naive.rs"]
mod naive;
#[path = "peers.rs"]
pub mod peers;
#[path = "sampling.rs"]
mod sampling;
#[path = "warm.rs"]
mod warm;
use monitor::{Tick, Tracked};
use sampling::*;

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
    /// Another upgrade mechanism, or its server without upgrades (`peers.rs`).
    Peer(peers::Peer),
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
            Kind::Peer(p) => p.name(),
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
    /// Upgrade instants since wrk's start; per-100 ms counts and probe only for timed rows.
    pub timeline: Timeline,
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
    /// The current row records a timeline (wrk script and probe, see `timeline.rs`).
    timed: bool,
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
    /// Its stdout and stderr.
    log: PathBuf,
}

impl Runner {
    /// A runner writing its files under `work`.
    pub fn new(cfg: Config, bins: Bins, work: PathBuf) -> Self {
        Runner {
            cfg,
            bins,
            work,
            seq: 0,
            timed: false,
        }
    }

    /// [`Runner::run`] with the wrk timeline script and the probe (unless `--no-timeline`).
    pub fn run_timed(&mut self, spec: RowSpec) -> Row {
        let script = self.work.join(timeline::SCRIPT_NAME);
        self.timed = self.cfg.timeline && fs::write(script, timeline::SCRIPT).is_ok();
        let row = self.run(spec);
        self.timed = false;
        row
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
                    Kind::Peer(p) => self.peer(&mut guard, &dir, spec, p),
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
            script: self.timed.then(|| self.work.join(timeline::SCRIPT_NAME)),
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
        let log_path = dir.join("server.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
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
                    log_path.display()
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
            log: log_path,
        })
    }

    /// Control, endless, plain and scale rows: one server, wrk, SIGHUP upgrades if any, RSS
    /// sampling; a single loop ticking every millisecond.
    fn monitored(&self, guard: &mut Guard, dir: &Path, spec: RowSpec) -> Result<RowData, String> {
        let server = self.start_server(guard, dir, spec.kind, 0)?;
        let mut tracked = Tracked::of(&server)?;
        let load = self.load(guard, dir, spec, &server, &mut tracked)?;
        let mut notes = tracked.stop(guard);
        notes.extend(load.notes);
        Ok(RowData {
            wrk: load.wrk,
            peak_rss_kib: Some(tracked.peak_rss_kib()),
            restarts: load.restarts,
            notes,
            orphan_cpu_secs: tracked.orphan_cpu_secs(),
            other_cpu_pct: None,
            timeline: load.timeline,
        })
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
