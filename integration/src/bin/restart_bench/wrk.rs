//! Running wrk and parsing its report.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::cli::ConnMode;

/// One wrk load run.
#[derive(Clone, Debug)]
pub struct WrkSpec {
    /// Server address (always 127.0.0.1).
    pub addr: SocketAddr,
    /// `-t`.
    pub threads: u32,
    /// `-c`.
    pub connections: u32,
    /// `-d`.
    pub duration: Duration,
    /// Keep-alive or `Connection: close`.
    pub mode: ConnMode,
    /// `-s`: the timeline script (`timeline.rs`), if the row records a timeline.
    pub script: Option<PathBuf>,
}

impl WrkSpec {
    /// The wrk command line (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        // wrk's -d takes whole seconds (or minutes, hours): round up.
        let secs = self.duration.as_secs_f64().ceil().max(1.0) as u64;
        let mut args: Vec<OsString> = vec![
            "--latency".into(),
            "-t".into(),
            self.threads.to_string().into(),
            "-c".into(),
            self.connections.to_string().into(),
            "-d".into(),
            format!("{secs}s").into(),
            // A slow answer is measured (latency, the max target), not counted as a timeout
            // at wrk's default 2 s.
            "--timeout".into(),
            "10s".into(),
        ];
        if self.mode == ConnMode::Close {
            args.push("-H".into());
            args.push("Connection: close".into());
        }
        if let Some(script) = &self.script {
            args.push("-s".into());
            args.push(script.into());
        }
        args.push(format!("http://{}/", self.addr).into());
        args
    }

    /// A `Command` for this run; stdout goes to `out`, stderr is kept.
    pub fn command(&self, wrk: &Path, out: std::fs::File) -> Command {
        let mut cmd = Command::new(wrk);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit());
        cmd
    }

    /// The command line as text, for the report.
    pub fn display(&self, wrk: &Path) -> String {
        let mut s = wrk.display().to_string();
        for a in self.args() {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                s.push_str(&format!(" '{a}'"));
            } else {
                s.push(' ');
                s.push_str(&a);
            }
        }
        s
    }
}

/// The figures of one wrk report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkReport {
    /// "N requests in".
    pub requests: u64,
    /// "Requests/sec:".
    pub req_per_sec: f64,
    /// "Non-2xx or 3xx responses:" (0 when the line is absent).
    pub non_2xx: u64,
    /// "Socket errors: connect A" (0 when the line is absent).
    pub connect_errors: u64,
    /// "read B".
    pub read_errors: u64,
    /// "write C".
    pub write_errors: u64,
    /// "timeout D".
    pub timeout_errors: u64,
    /// Latency distribution, 50%.
    pub p50: Duration,
    /// Latency distribution, 99%.
    pub p99: Duration,
    /// Max column of the "Latency" thread-stats line.
    pub max: Duration,
}

impl WrkReport {
    /// Non-2xx responses plus socket errors of every kind.
    pub fn failed(&self) -> u64 {
        self.non_2xx
            + self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeout_errors
    }
}

/// Parses wrk's text report (wrk 4.x with `--latency`).
pub fn parse(text: &str) -> Result<WrkReport, String> {
    let mut r = WrkReport::default();
    let (mut got_requests, mut got_rate, mut got_max, mut got_p50, mut got_p99) =
        (false, false, false, false, false);
    let mut in_distribution = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", "Distribution", ..] => in_distribution = true,
            // Thread stats: Latency  avg  stdev  max  +/-stdev
            ["Latency", _avg, _stdev, max, ..] => {
                r.max = parse_time(max)?;
                got_max = true;
            }
            ["50%", v] if in_distribution => {
                r.p50 = parse_time(v)?;
                got_p50 = true;
            }
            ["99%", v] if in_distribution => {
                r.p99 = parse_time(v)?;
                got_p99 = true;
            }
            [n, "requests", "in", ..] => {
                r.requests = parse_u64(n)?;
                got_requests = true;
                in_distribution = false;
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.join(" ").split(',') {
                    let kv: Vec<&str> = pair.split_whitespace().collect();
                    if let [k, v] = kv.as_slice() {
                        let v = parse_u64(v)?;
                        match *k {
                            "connect" => r.connect_errors = v,
                            "read" => r.read_errors = v,
                            "write" => r.write_errors = v,
                            "timeout" => r.timeout_errors = v,
                            _ => return Err(format!("unknown socket error kind in: {line}")),
                        }
                    }
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = parse_u64(n)?,
            ["Requests/sec:", v] => {
                r.req_per_sec = v.parse().map_err(|_| format!("bad Requests/sec: {line}"))?;
                got_rate = true;
            }
            _ => {}
        }
    }
    let missing: Vec<&str> = [
        (got_requests, "requests"),
        (got_rate, "Requests/sec"),
        (got_max, "Latency max"),
        (got_p50, "50%"),
        (got_p99, "99%"),
    ]
    .iter()
    .filter(|(got, _)| !got)
    .map(|(_, name)| *name)
    .collect();
    if missing.is_empty() {
        Ok(r)
    } else {
        Err(format!("wrk output lacks {}:\n{text}", missing.join(", ")))
    }
}

/// Parses an integer count.
fn parse_u64(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("not a count: {s}"))
}

/// Parses one of wrk's time figures: `512.00us`, `1.23ms`, `2.00s`, `1.50m`, `1.00h`.
pub fn parse_time(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("time without unit: {s}"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad time: {s}"))?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("unknown time unit in {s}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Running 10s test @ http://127.0.0.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   535.49us  412.31us  14.54ms   91.13%
    Req/Sec    46.53k     3.06k   52.45k    71.00%
  Latency Distribution
     50%  443.00us
     75%  619.00us
     90%    0.86ms
     99%    2.10ms
  925897 requests in 10.00s, 102.05MB read
  Socket errors: connect 3, read 4, write 5, timeout 6
  Non-2xx or 3xx responses: 12
Requests/sec:  92572.93
Transfer/sec:     10.20MB
";

    #[test]
    fn parses_full_report() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 925_897);
        assert!((r.req_per_sec - 92_572.93).abs() < 1e-6);
        assert_eq!(r.non_2xx, 12);
        assert_eq!(
            (
                r.connect_errors,
                r.read_errors,
                r.write_errors,
                r.timeout_errors
            ),
            (3, 4, 5, 6)
        );
        assert_eq!(r.failed(), 30);
        assert_eq!(r.p50, Duration::from_micros(443));
        assert_eq!(r.p99, Duration::from_micros(2100));
        assert_eq!(r.max, Duration::from_micros(14540));
    }

    #[test]
    fn clean_report_has_no_errors() {
        let text: String = SAMPLE
            .lines()
            .filter(|l| !l.contains("Socket errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse(&text).unwrap();
        assert_eq!(r.failed(), 0);
    }

    #[test]
    fn units() {
        assert_eq!(parse_time("2.00s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_time("1.50m").unwrap(), Duration::from_secs(90));
        assert!(parse_time("12").is_err());
        assert!(parse_time("1.0xs").is_err());
    }

    #[test]
    fn truncated_report_is_an_error() {
        assert!(parse("Running 10s test @ http://127.0.0.1:1/\n").is_err());
    }

    #[test]
    fn close_mode_adds_header() {
        let spec = WrkSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            threads: 2,
            connections: 50,
            duration: Duration::from_millis(4500),
            mode: ConnMode::Close,
            script: None,
        };
        let args: Vec<String> = spec
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(args.windows(2).any(|w| w == ["-H", "Connection: close"]));
        assert!(args.windows(2).any(|w| w == ["-d", "5s"]));
    }
}
