//! Command-line configuration of the benchmark.

use std::{path::PathBuf, time::Duration};

/// Usage text printed for `--help` and on bad arguments.
pub const USAGE: &str = "\
usage: restart_bench [options]

Restart-under-load benchmark of actix-endless against a plain actix-web server.
Needs `wrk` on PATH, `examples/hello` (cargo build --release --examples -p actix-endless)
and `plain_hello` (cargo build --release -p integration --bins).

options:
  --duration SECS          wrk duration of every row, whole seconds (default 20)
  --restarts N             restarts per upgrade row (default 10)
  --threads N              wrk threads, -t (default 2)
  --connections N          wrk connections, -c (default 50)
  --workers N              --workers of hello and plain_hello (default 2)
  --runs N                 repeat the upgrade rows (endless, naive, scale) N times (default 1)
  --scale-connections N    wrk connections of the scale rows (default 10000)
  --scale-restarts N       upgrades during the scale row (default 3)
  --pairs N                interleaved comparisons, one server per arm, base and test slices
                           alternating in ABBA order (default 8; 0: none): the upgrade
                           comparisons make 8 x N pairs of --slice slices, the steady-state
                           comparison 20 x N pairs of 1 s slices
  --slice SECS             wrk duration of one upgrade comparison slice; each endless slice
                           upgrades once per 2 s, as the 20 s rows do (default 2)
  --only LIST              comma-separated subset of: control,endless,master,naive,steady,scale,
                           nginx,ecdysis (default: all; the ratios need control and steady;
                           nginx and ecdysis are the peers, each with its own no-upgrade row)
  --modes LIST             comma-separated subset of: keepalive,close (default: both)
  --quick                  smoke configuration: 5 s, 3 restarts, 3 pairs, scale 300 connections
  --hello PATH             hello example binary (default: <exe dir>/examples/hello)
  --plain PATH             plain_hello binary (default: <exe dir>/plain_hello)
  --wrk PATH               wrk binary (default: wrk on PATH)
  --no-timeline            no per-100 ms timeline (wrk Lua script, probe clients) and no SVGs
  -h, --help               this text";

/// Connection handling of the load generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnMode {
    /// HTTP/1.1 keep-alive (wrk's default).
    KeepAlive,
    /// Every request carries `Connection: close`: one TCP connection per request.
    Close,
}

impl ConnMode {
    /// Short name used in the table.
    pub fn name(self) -> &'static str {
        match self {
            ConnMode::KeepAlive => "keep-alive",
            ConnMode::Close => "close",
        }
    }
}

/// Which rows to run.
#[derive(Clone, Copy, Debug)]
pub struct Selection {
    /// `hello`, no restart.
    pub control: bool,
    /// `hello` with SIGHUP upgrades.
    pub endless: bool,
    /// `hello --master` with SIGHUP upgrades to the stable-pid master.
    pub master: bool,
    /// `plain_hello` restarted with SIGTERM + start.
    pub naive: bool,
    /// `plain_hello`, no restart (steady-state comparison).
    pub steady: bool,
    /// `hello` with many keep-alive connections across upgrades.
    pub scale: bool,
    /// nginx binary upgrades, and nginx without upgrades (peers.rs).
    pub nginx: bool,
    /// `ecdysis_hello` upgrades, and it without upgrades (peers.rs).
    pub ecdysis: bool,
}

/// Everything the benchmark needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// wrk `-d` of every row.
    pub duration: Duration,
    /// Restarts per endless and naive row.
    pub restarts: u32,
    /// wrk `-t`.
    pub threads: u32,
    /// wrk `-c`.
    pub connections: u32,
    /// `--workers` of both servers.
    pub workers: u32,
    /// Repetitions of the upgrade rows.
    pub runs: u32,
    /// wrk `-c` of the scale row.
    pub scale_connections: u32,
    /// Upgrades during the scale row.
    pub scale_restarts: u32,
    /// Pairs of slices per interleaved comparison (0: no comparisons).
    pub pairs: u32,
    /// wrk `-d` of one interleaved slice.
    pub slice: Duration,
    /// Rows to run.
    pub only: Selection,
    /// Connection modes to run.
    pub modes: Vec<ConnMode>,
    /// `--quick` was given.
    pub quick: bool,
    /// Explicit hello binary.
    pub hello: Option<PathBuf>,
    /// Explicit plain_hello binary.
    pub plain: Option<PathBuf>,
    /// wrk binary.
    pub wrk: PathBuf,
    /// Rows record a timeline and get an SVG (`--no-timeline`: off).
    pub timeline: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            duration: Duration::from_secs(20),
            restarts: 10,
            threads: 2,
            connections: 50,
            workers: 2,
            runs: 1,
            scale_connections: 10_000,
            scale_restarts: 3,
            pairs: 8,
            slice: Duration::from_secs(2),
            only: Selection {
                control: true,
                endless: true,
                master: true,
                naive: true,
                steady: true,
                scale: true,
                nginx: true,
                ecdysis: true,
            },
            modes: vec![ConnMode::KeepAlive, ConnMode::Close],
            quick: false,
            hello: None,
            plain: None,
            wrk: PathBuf::from("wrk"),
            timeline: true,
        }
    }
}

/// Outcome of parsing: run with a configuration, or print the usage and stop.
pub enum Parsed {
    /// Run the benchmark.
    Run(Config),
    /// `--help`.
    Help,
}

/// Parses `args` (without the program name). `Err` holds a message for the user.
///
/// `--quick` sets its defaults first, so explicit options override it wherever they appear.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut cfg = Config::default();
    if args.iter().any(|a| a == "--quick") {
        cfg.quick = true;
        cfg.duration = Duration::from_secs(5);
        cfg.restarts = 3;
        cfg.pairs = 3;
        cfg.scale_connections = 300;
    }
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--duration" => {
                let v = value()?;
                // Whole seconds: that is what wrk's -d takes, and the restart schedule must
                // match the load exactly.
                cfg.duration = Duration::from_secs(count(flag, v, 1, 3600)?.into());
            }
            "--restarts" => cfg.restarts = count(flag, value()?, 0, 1000)?,
            "--threads" => cfg.threads = count(flag, value()?, 1, 64)?,
            "--connections" => cfg.connections = count(flag, value()?, 1, 100_000)?,
            "--workers" => cfg.workers = count(flag, value()?, 1, 256)?,
            "--runs" => cfg.runs = count(flag, value()?, 1, 100)?,
            "--scale-connections" => cfg.scale_connections = count(flag, value()?, 1, 100_000)?,
            "--scale-restarts" => cfg.scale_restarts = count(flag, value()?, 0, 1000)?,
            "--pairs" => cfg.pairs = count(flag, value()?, 0, 1000)?,
            "--slice" => cfg.slice = Duration::from_secs(count(flag, value()?, 1, 3600)?.into()),
            "--only" => cfg.only = parse_only(value()?)?,
            "--modes" => cfg.modes = parse_modes(value()?)?,
            "--quick" => {}
            "--hello" => cfg.hello = Some(PathBuf::from(value()?)),
            "--plain" => cfg.plain = Some(PathBuf::from(value()?)),
            "--wrk" => cfg.wrk = PathBuf::from(value()?),
            "--no-timeline" => cfg.timeline = false,
            "-h" | "--help" => return Ok(Parsed::Help),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    if cfg.threads > cfg.connections || cfg.threads > cfg.scale_connections {
        return Err("wrk needs at least as many connections as threads".into());
    }
    Ok(Parsed::Run(cfg))
}

/// Parses an integer option within `min..=max`.
fn count(flag: &str, v: &str, min: u32, max: u32) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{flag}: expected an integer in {min}..={max}, got {v}"))
}

/// Parses `--only`.
fn parse_only(v: &str) -> Result<Selection, String> {
    let mut sel = Selection {
        control: false,
        endless: false,
        master: false,
        naive: false,
        steady: false,
        scale: false,
        nginx: false,
        ecdysis: false,
    };
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "control" => sel.control = true,
            "endless" => sel.endless = true,
            "master" => sel.master = true,
            "naive" => sel.naive = true,
            "steady" => sel.steady = true,
            "scale" => sel.scale = true,
            "nginx" => sel.nginx = true,
            "ecdysis" => sel.ecdysis = true,
            other => return Err(format!("--only: unknown row kind {other}")),
        }
    }
    Ok(sel)
}

/// Parses `--modes`.
fn parse_modes(v: &str) -> Result<Vec<ConnMode>, String> {
    let mut modes = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mode = match name {
            "keepalive" | "keep-alive" => ConnMode::KeepAlive,
            "close" => ConnMode::Close,
            other => return Err(format!("--modes: unknown mode {other}")),
        };
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        return Err("--modes: empty".into());
    }
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_match_the_issue() {
        let Ok(Parsed::Run(cfg)) = parse(&[]) else {
            panic!("defaults must parse")
        };
        assert_eq!(cfg.duration, Duration::from_secs(20));
        assert_eq!((cfg.restarts, cfg.threads, cfg.connections), (10, 2, 50));
        assert_eq!(
            (cfg.workers, cfg.runs, cfg.scale_connections),
            (2, 1, 10_000)
        );
        // Interleaved: upgrade slices of 2 s with one upgrade each, the 20 s rows' density of
        // 10 upgrades over 20 s, against servers that stay up (the control's is warm, so only
        // the endless arm pays for its new generations' warm-up).
        assert_eq!((cfg.pairs, cfg.slice), (8, Duration::from_secs(2)));
    }

    #[test]
    fn quick_is_overridable() {
        let Ok(Parsed::Run(cfg)) = parse(&strings(&["--restarts", "4", "--quick"])) else {
            panic!("must parse")
        };
        assert_eq!(cfg.duration, Duration::from_secs(5));
        assert_eq!(cfg.restarts, 4);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(&strings(&["--restarts", "x"])).is_err());
        assert!(parse(&strings(&["--only", "bogus"])).is_err());
        assert!(parse(&strings(&["--duration"])).is_err());
    }
}
