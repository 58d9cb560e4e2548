//! The per-100 ms timeline of a row (issue 15): what happened when, on one clock, the time
//! since wrk was started (the `t0` of the row).
//!
//! Series and where they come from:
//! * **completed per 100 ms** (drawn as req/s): every response wrk parses, counted by
//!   [`SCRIPT`], a wrk Lua script whose `response()` reads `CLOCK_MONOTONIC` through LuaJIT's
//!   `ffi` and counts into 100 ms buckets of that clock. Each wrk thread has its own Lua state;
//!   `done()` (main state, after the threads are joined) collects every thread's tables with
//!   `thread:get` and prints them after wrk's report as a `timeline-begin` ... `timeline-end`
//!   block ([`parse_block`]). The bench maps the buckets onto its own clock: `Instant` is
//!   `CLOCK_MONOTONIC` on Linux. The counts add up to wrk's "N requests".
//! * **wrk HTTP errors per 100 ms**: the responses of that script with status > 399, which is
//!   what wrk counts as "Non-2xx or 3xx responses".
//! * wrk's **socket errors** (connect, read, write, timeout) are invisible to Lua: wrk only
//!   prints their totals. Per 100 ms failures therefore come from a **probe** as well
//!   ([`Probe`], `probe.rs`): 2 keep-alive and 2 `Connection: close` clients in the bench
//!   process, each making one sequential `GET /` at most every 2 ms (about 2,000 req/s in
//!   all, a few % of wrk's rate), with 2 s timeouts (wrk's default), recording the start,
//!   latency and outcome of every request. A probe failure is a refused/failed connect, a write error, a reset or
//!   EOF before the response is complete (on a reused keep-alive connection too: wrk retries
//!   that case silently, a real client may not), a timeout, or a status > 399. Failures are
//!   counted in the 100 ms bucket in which the client saw them (start + latency).
//! * **probe p99 per second**: nearest-rank 99th percentile of the latency of the probe's
//!   successful requests started in that second (connect included for the close clients), per
//!   client kind. wrk's own latencies are not per request in Lua (no connection identity in
//!   the callbacks), so the probe is the only per-second latency source.
//! * **upgrade instants** ([`Marks`]): signal sent, new generation ready, old generation
//!   exited, as measured by the row (see the methods in `restart_bench.rs`).
//!
//! Cost, measured on the 2-CPU development machine (hello, wrk -t2 -c50, 3 s runs): with a
//! `response()` function wrk also collects every response's headers and body and builds a
//! Lua table per response; wrk's user-space instructions per request go from 2,639 to
//! 5,570 (keep-alive) and from 4,082 to 8,570 (close) (cachegrind), i.e. +0.3 to +0.8 us of
//! CPU on about 9 us per request (mostly kernel time), and about +2 us on 55 us with close.
//! The throughput change was below the machine's noise: the median ratio of 21 interleaved
//! with/without pairs was 0.98 in both modes (single pairs 0.15 to 2.5 under other load). Only rows run the script and the probe (`Runner::run_timed`); the
//! interleaved slices that the throughput targets use run neither. `--no-timeline` turns
//! both off.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

#[path = "probe.rs"]
mod probe;
pub use probe::Probe;

/// Width of a bucket of the timeline.
pub const BUCKET: Duration = Duration::from_millis(100);
/// File name of the Lua script in the work directory.
pub const SCRIPT_NAME: &str = "timeline.lua";

/// The wrk script: counts completions and status > 399 per 100 ms of `CLOCK_MONOTONIC`.
pub const SCRIPT: &str = r#"-- restart_bench timeline: responses per 100 ms of CLOCK_MONOTONIC (see timeline.rs).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } rb_timespec;
int clock_gettime(int clk, rb_timespec *tp);
]]
local C = ffi.C
local ts = ffi.new("rb_timespec")
local floor = math.floor
-- Per-thread globals, read by done() through thread:get.
rb_done = {}
rb_bad = {}
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function response(status, headers, body)
  C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  local k = tonumber(ts.tv_sec) * 10 + floor(tonumber(ts.tv_nsec) / 100000000)
  rb_done[k] = (rb_done[k] or 0) + 1
  if status > 399 then
    rb_bad[k] = (rb_bad[k] or 0) + 1
  end
end

function done(summary, latency, requests)
  local d, b, keys = {}, {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("rb_done") or {}) do
      if d[k] == nil then keys[#keys + 1] = k end
      d[k] = (d[k] or 0) + v
    end
    for k, v in pairs(t:get("rb_bad") or {}) do
      if d[k] == nil then keys[#keys + 1] = k; d[k] = 0 end
      b[k] = (b[k] or 0) + v
    end
  end
  table.sort(keys)
  io.write("timeline-begin v1 bucket_ms=100 clock=monotonic\n")
  for _, k in ipairs(keys) do
    io.write(string.format("tl %d %d %d\n", k, d[k], b[k] or 0))
  end
  io.write("timeline-end\n")
end
"#;

/// Upgrade instants of a row, each relative to wrk's start. Peer rows fill the same.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Marks {
    /// Upgrade signal sent (SIGHUP; SIGTERM for naive rows).
    pub signal: Vec<Duration>,
    /// New generation ready (naive: the new process serves).
    pub ready: Vec<Duration>,
    /// Old generation gone.
    pub old_exit: Vec<Duration>,
}

/// The counts of the wrk script, as printed (bucket `k` covers
/// `[k * 100 ms, (k + 1) * 100 ms)` of `CLOCK_MONOTONIC`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawBuckets {
    /// Index of the first bucket.
    pub first: u64,
    /// Completed responses per bucket, from `first` on, gaps filled with 0.
    pub completed: Vec<u64>,
    /// Responses with status > 399 per bucket.
    pub http_errors: Vec<u64>,
}

/// wrk's buckets placed on the row's clock.
#[derive(Clone, Debug, Default)]
pub struct WrkBuckets {
    /// Start of the first bucket, seconds since wrk's start (a little negative at most).
    pub origin: f64,
    /// Completed responses per 100 ms.
    pub completed: Vec<u64>,
    /// Status > 399 per 100 ms.
    pub http_errors: Vec<u64>,
}

/// How a probe client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// One connection reused while it works.
    KeepAlive,
    /// A new connection and `Connection: close` per request.
    Close,
}

/// Why a probe request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// connect() failed (refused, reset).
    Connect,
    /// Writing the request failed.
    Write,
    /// Reset or EOF before the response was complete.
    Read,
    /// No complete response within the timeout.
    Timeout,
    /// A status > 399, or not HTTP.
    Status,
}

/// One probe request.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSample {
    /// Client kind.
    pub kind: ProbeKind,
    /// Start, since wrk's start.
    pub at: Duration,
    /// Until the response was complete, or until the failure.
    pub latency: Duration,
    /// `None` if it answered < 400.
    pub failure: Option<Failure>,
}

/// Everything the picture of a row needs.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// Upgrade instants.
    pub marks: Marks,
    /// wrk script counts, if the script ran.
    pub wrk: Option<WrkBuckets>,
    /// Probe requests (empty if no probe ran).
    pub probe: Vec<ProbeSample>,
}

impl Timeline {
    /// wrk's completions as (bucket start s, req/s).
    pub fn req_per_sec(&self) -> Vec<(f64, f64)> {
        self.wrk_series(|w| &w.completed, 1.0 / BUCKET.as_secs_f64())
    }

    /// wrk's status > 399 as (bucket start s, count per 100 ms).
    pub fn http_errors(&self) -> Vec<(f64, f64)> {
        self.wrk_series(|w| &w.http_errors, 1.0)
    }

    fn wrk_series(&self, f: impl Fn(&WrkBuckets) -> &Vec<u64>, scale: f64) -> Vec<(f64, f64)> {
        let Some(w) = &self.wrk else {
            return Vec::new();
        };
        let step = BUCKET.as_secs_f64();
        f(w).iter()
            .enumerate()
            .map(|(i, &n)| (w.origin + i as f64 * step, n as f64 * scale))
            .collect()
    }

    /// Probe failures per 100 ms since wrk's start, by the time the client saw them (start
    /// + latency), as (bucket start s, count); only the buckets with failures.
    pub fn probe_failures(&self) -> Vec<(f64, f64)> {
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for s in self.probe.iter().filter(|s| s.failure.is_some()) {
            let k = ((s.at + s.latency).as_nanos() / BUCKET.as_nanos()) as u64;
            *counts.entry(k).or_default() += 1;
        }
        let step = BUCKET.as_secs_f64();
        counts
            .into_iter()
            .map(|(k, n)| (k as f64 * step, n as f64))
            .collect()
    }

    /// Probe p99 per second of `kind`'s successful requests, as (second start s, ms).
    pub fn probe_p99(&self, kind: ProbeKind) -> Vec<(f64, f64)> {
        let mut per_sec: Vec<Vec<Duration>> = Vec::new();
        for s in &self.probe {
            if s.kind != kind || s.failure.is_some() {
                continue;
            }
            let i = s.at.as_secs() as usize;
            if per_sec.len() <= i {
                per_sec.resize(i + 1, Vec::new());
            }
            per_sec[i].push(s.latency);
        }
        per_sec
            .into_iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i as f64, p99(l)?.as_secs_f64() * 1e3)))
            .collect()
    }

    /// Probe requests and failures, for the caption.
    pub fn probe_totals(&self) -> (usize, usize) {
        let failed = self.probe.iter().filter(|s| s.failure.is_some()).count();
        (self.probe.len(), failed)
    }
}

/// Nearest-rank 99th percentile.
fn p99(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = (v.len() * 99).div_ceil(100).max(1);
    Some(v[rank - 1])
}

/// Parses the block the script prints after wrk's report. `Ok(None)` if there is none.
pub fn parse_block(text: &str) -> Result<Option<RawBuckets>, String> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("timeline-begin"));
    let Some(head) = lines.next() else {
        return Ok(None);
    };
    if !head.split_whitespace().any(|w| w == "bucket_ms=100") {
        return Err(format!("unexpected timeline header: {head}"));
    }
    let mut raw = RawBuckets::default();
    for line in lines {
        if line == "timeline-end" {
            return Ok(Some(raw));
        }
        let num = |w: &str| {
            w.parse::<u64>()
                .map_err(|_| format!("bad timeline line: {line}"))
        };
        let [k, done, bad] = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["tl", k, d, b] => [num(k)?, num(d)?, num(b)?],
            _ => return Err(format!("bad timeline line: {line}")),
        };
        if raw.completed.is_empty() {
            raw.first = k;
        }
        let Some(i) = k.checked_sub(raw.first).map(|i| i as usize) else {
            return Err(format!("timeline buckets out of order at: {line}"));
        };
        if i < raw.completed.len() {
            return Err(format!("timeline buckets out of order at: {line}"));
        }
        if i > 100_000 {
            return Err(format!("timeline spans more than 10,000 s at: {line}"));
        }
        raw.completed.resize(i + 1, 0);
        raw.http_errors.resize(i + 1, 0);
        raw.completed[i] = done;
        raw.http_errors[i] = bad;
    }
    Err("timeline block without timeline-end (wrk cut short?)".into())
}

/// `CLOCK_MONOTONIC` now (what `Instant` reads on Linux).
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The `CLOCK_MONOTONIC` reading of an earlier `Instant`.
fn monotonic_of(t: Instant) -> Duration {
    let (now, mono) = (Instant::now(), monotonic_now());
    mono.saturating_sub(now.saturating_duration_since(t))
}

/// Places the script's buckets on the row's clock (`t0`: wrk's start).
pub fn place(raw: RawBuckets, t0: Instant) -> WrkBuckets {
    let origin = raw.first as f64 * BUCKET.as_secs_f64() - monotonic_of(t0).as_secs_f64();
    WrkBuckets {
        origin,
        completed: raw.completed,
        http_errors: raw.http_errors,
    }
}

/// Records a row's timeline: the upgrade instants as they happen, the probe if the row is
/// timed; [`Recorder::finish`] adds the wrk script's counts.
pub struct Recorder {
    /// wrk's start.
    t0: Instant,
    /// The wrk script ran and the probe runs.
    timed: bool,
    probe: Option<Probe>,
    /// Instants so far.
    pub marks: Marks,
}

impl Recorder {
    /// Starts recording at `t0`, wrk's start; if `timed`, starts the probe against `addr`
    /// for `duration`.
    pub fn start(timed: bool, addr: SocketAddr, t0: Instant, duration: Duration) -> Recorder {
        Recorder {
            t0,
            timed,
            probe: timed.then(|| Probe::start(addr, t0, duration)),
            marks: Marks::default(),
        }
    }

    /// An upgrade signal was sent at `at`.
    pub fn signal(&mut self, at: Instant) {
        self.marks
            .signal
            .push(at.saturating_duration_since(self.t0));
    }

    /// A new generation was seen ready at `at`.
    pub fn ready(&mut self, at: Instant) {
        self.marks.ready.push(at.saturating_duration_since(self.t0));
    }

    /// An old generation was seen gone at `at`.
    pub fn old_exit(&mut self, at: Instant) {
        self.marks
            .old_exit
            .push(at.saturating_duration_since(self.t0));
    }

    /// Stops the probe and reads the script block of `dir/wrk.out`. Returns a note if the
    /// block is missing, malformed, or does not add up to wrk's request count.
    pub fn finish(self, dir: &Path, wrk_requests: u64) -> (Timeline, Option<String>) {
        let probe = self.probe.map(Probe::finish).unwrap_or_default();
        let mut tl = Timeline {
            marks: self.marks,
            wrk: None,
            probe,
        };
        if !self.timed {
            return (tl, None);
        }
        let text = std::fs::read_to_string(dir.join("wrk.out")).unwrap_or_default();
        let note = match parse_block(&text) {
            Ok(Some(raw)) => {
                let sum: u64 = raw.completed.iter().sum();
                tl.wrk = Some(place(raw, self.t0));
                (sum != wrk_requests).then(|| {
                    format!("timeline: the wrk script counted {sum} responses, wrk {wrk_requests}")
                })
            }
            Ok(None) => Some("timeline: no block in wrk.out".into()),
            Err(e) => Some(format!("timeline: {e}")),
        };
        (tl, note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
  180033 requests in 3.01s, 20.95MB read
Requests/sec:  59848.85
Transfer/sec:      6.96MB
";

    #[test]
    fn parses_blocks() {
        let raw = |first, completed: &[u64], http_errors: &[u64]| {
            Ok(Some(RawBuckets {
                first,
                completed: completed.to_vec(),
                http_errors: http_errors.to_vec(),
            }))
        };
        let head = "timeline-begin v1 bucket_ms=100 clock=monotonic\n";
        let cases: Vec<(String, Result<Option<RawBuckets>, ()>)> = vec![
            // No block at all: wrk without the script.
            (REPORT.into(), Ok(None)),
            (
                format!("{REPORT}{head}timeline-end\n"),
                Ok(Some(RawBuckets::default())),
            ),
            (
                format!("{REPORT}{head}tl 152841 3228 0\ntl 152842 5990 2\ntimeline-end\n"),
                raw(152841, &[3228, 5990], &[0, 2]),
            ),
            // A gap (no response for 200 ms) is filled with zeros.
            (
                format!("{head}tl 10 5 0\ntl 13 7 1\ntimeline-end\n"),
                raw(10, &[5, 0, 0, 7], &[0, 0, 0, 1]),
            ),
            // Cut short, out of order, malformed, wrong bucket width.
            (format!("{head}tl 10 5 0\n"), Err(())),
            (
                format!("{head}tl 10 5 0\ntl 9 1 0\ntimeline-end\n"),
                Err(()),
            ),
            (
                format!("{head}tl 10 5 0\ntl 10 1 0\ntimeline-end\n"),
                Err(()),
            ),
            (format!("{head}tl 10 x 0\ntimeline-end\n"), Err(())),
            (format!("{head}tl 10 5\ntimeline-end\n"), Err(())),
            (
                format!("{head}tl 10 5 0\ntl 999999 1 0\ntimeline-end\n"),
                Err(()),
            ),
            (
                "timeline-begin v1 bucket_ms=250\ntimeline-end\n".into(),
                Err(()),
            ),
        ];
        for (text, want) in cases {
            let got = parse_block(&text);
            match want {
                Ok(w) => assert_eq!(got, Ok(w), "{text}"),
                Err(()) => assert!(got.is_err(), "{text} parsed as {got:?}"),
            }
        }
    }

    #[test]
    fn wrk_report_parse_ignores_the_block() {
        let sample = "\
Running 3s test @ http://127.0.0.1:1/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.13ms    1.92ms  27.75ms   93.11%
    Req/Sec    30.13k     6.42k   53.24k    71.67%
  Latency Distribution
     50%  676.00us
     75%    0.96ms
     90%    2.18ms
     99%   11.04ms
";
        let text = format!(
            "{sample}{REPORT}timeline-begin v1 bucket_ms=100 clock=monotonic\ntl 1 2 0\ntimeline-end\n"
        );
        let r = crate::wrk::parse(&text).unwrap();
        assert_eq!(r.requests, 180_033);
        assert_eq!(r.p99, Duration::from_micros(11_040));
    }

    #[test]
    fn series() {
        let ms = Duration::from_millis;
        let sample = |kind, at, lat, failure| ProbeSample {
            kind,
            at: ms(at),
            latency: ms(lat),
            failure,
        };
        let mut probe: Vec<ProbeSample> = (1..=100)
            .map(|i| sample(ProbeKind::KeepAlive, 10 * i, i, None))
            .collect();
        probe.push(sample(ProbeKind::Close, 1050, 3, Some(Failure::Connect)));
        probe.push(sample(ProbeKind::Close, 1070, 3, Some(Failure::Read)));
        // Seen at 2.1 s, after a 2 s timeout.
        probe.push(sample(
            ProbeKind::KeepAlive,
            100,
            2000,
            Some(Failure::Timeout),
        ));
        probe.push(sample(ProbeKind::Close, 1250, 3, None));
        let tl = Timeline {
            marks: Marks::default(),
            wrk: Some(WrkBuckets {
                origin: -0.05,
                completed: vec![10, 20],
                http_errors: vec![0, 1],
            }),
            probe,
        };
        assert_eq!(tl.req_per_sec(), vec![(-0.05, 100.0), (0.05, 200.0)]);
        assert_eq!(tl.http_errors(), vec![(-0.05, 0.0), (0.05, 1.0)]);
        let failures = tl.probe_failures();
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0], (1.0, 2.0));
        assert!((failures[1].0 - 2.1).abs() < 1e-9 && failures[1].1 == 1.0);
        // Second 0: latencies 1..=99 ms (the 100th sample starts at 1.0 s); rank ceil(0.99 * 99).
        assert_eq!(
            tl.probe_p99(ProbeKind::KeepAlive),
            vec![(0.0, 99.0), (1.0, 100.0)]
        );
        assert_eq!(tl.probe_p99(ProbeKind::Close), vec![(1.0, 3.0)]);
        assert_eq!(tl.probe_totals(), (104, 3));
    }
}
