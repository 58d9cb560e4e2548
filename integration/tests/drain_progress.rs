//! What a long drain tells systemd, read from a notification socket the test binds (each
//! datagram with its sender's pid from the kernel):
//!
//! - every `PROGRESS_EVERY` (5 s) during a stop's drain, the draining process logs
//!   `draining for ...: WHAT, Ns before hammer time` and sends
//!   `STATUS=stopping: draining WHAT, Ns before hammer time` with
//!   `EXTEND_TIMEOUT_USEC=<time left before hammer time + a margin>`, so that systemd's stop
//!   timeout (`TimeoutStopSec=`) follows the hammer time instead of killing a drain that is
//!   within its bounds. WHAT is `N connection(s), M request(s) in flight` for a server, and
//!   the workers still draining for a master;
//! - with `WATCHDOG_USEC` in the environment (`WatchdogSec=`), `WATCHDOG=1` at least every
//!   `WATCHDOG_USEC / 2`, for the whole life of the process, serving and draining.

mod deploy_support;

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use deploy_support::{Notification, NotifySocket, Proc};
use integration::{
    examples, pid_alive, send_signal, wait_until, HttpResponse, RawRequest, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;

/// The hammer time of the progress tests.
const HAMMER_TIME: Duration = Duration::from_secs(30);

/// How often the library reports a drain's progress (`decide::PROGRESS_EVERY`).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Most `EXTEND_TIMEOUT_USEC` may exceed the time left before hammer time, as the test sees
/// it: the library's margin (one progress period) plus the delay between the library's
/// clock and the test's.
const EXTEND_SLACK: Duration = Duration::from_secs(10);

/// The `WATCHDOG_USEC` of the watchdog tests, and the largest gap allowed between two
/// `WATCHDOG=1`: the library sends one every `WATCHDOG_USEC / 2`; twice that is the most a
/// loaded machine is allowed to stretch it (and still half of what systemd would tolerate
/// before killing the service).
const WATCHDOG_USEC: u64 = 400_000;
const WATCHDOG_MAX_GAP: Duration = Duration::from_micros(WATCHDOG_USEC * 2);

/// Starts `hello` with `extra` arguments, `NOTIFY_SOCKET` set for `socket` and `env` added.
/// `WATCHDOG_USEC` and `WATCHDOG_PID` of the test's own environment are removed.
fn start(dir: TempDir, socket: &NotifySocket, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut command = Proc::command(&examples().hello, &dir);
    command
        .args(["--bind", "127.0.0.1:0", "--pid-file"])
        .arg(dir.join("pid"))
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .args(extra)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", socket.env_value())
        .envs(env.iter().copied());
    Proc::spawn(command, dir)
}

fn bind_socket(dir: &TempDir) -> NotifySocket {
    NotifySocket::bind_path(&dir.join("notify.sock"))
}

/// The next datagram that is not `WATCHDOG=1`.
fn expect_skipping_watchdog(socket: &NotifySocket, what: &str) -> Notification {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = socket.expect(left, what);
        if n.keys() != ["WATCHDOG"] {
            return n;
        }
    }
}

/// Checks the `READY=1` a server sends at start and returns its pid and address.
fn expect_server_ready(socket: &NotifySocket) -> (i32, SocketAddr) {
    let ready = expect_skipping_watchdog(socket, "READY=1 at start");
    assert_eq!(ready.keys(), ["MAINPID", "READY", "STATUS"], "{ready:?}");
    let status = ready.get("STATUS").unwrap_or_default();
    let addr = status
        .strip_prefix("generation 1 serving on ")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("STATUS={status:?} is not `generation 1 serving on <addr>`"));
    (ready.pid, addr)
}

/// Checks the `READY=1` a master sends at start (from `master`) and returns its worker's pid.
fn expect_master_ready(socket: &NotifySocket, master: i32) -> i32 {
    let ready = expect_skipping_watchdog(socket, "READY=1 at start");
    assert_eq!(ready.pid, master, "READY=1 not from the master: {ready:?}");
    assert_eq!(ready.keys(), ["MAINPID", "READY", "STATUS"], "{ready:?}");
    let status = ready.get("STATUS").unwrap_or_default();
    status
        .strip_prefix("worker generation 1 (pid ")
        .and_then(|rest| rest.strip_suffix(") serving")?.parse().ok())
        .unwrap_or_else(|| panic!("STATUS={status:?} is not `worker generation 1 (pid N) serving`"))
}

/// Asserts that `n` is `STOPPING=1` with a `STATUS=`, from `pid`.
fn assert_stopping(n: &Notification, pid: i32) {
    assert_eq!(
        n.pid, pid,
        "STOPPING=1 from pid {} instead of {pid}: {n:?}",
        n.pid
    );
    assert_eq!(n.keys(), ["STOPPING", "STATUS"], "{n:?}");
    assert_eq!(n.get("STOPPING"), Some("1"));
}

/// A datagram and when the test received it.
struct Received {
    at: Instant,
    n: Notification,
}

/// Every datagram until the process the test started has exited and the queue is empty.
///
/// # Panics
///
/// If it has not exited within `limit`.
fn collect_until_exit(
    socket: &NotifySocket,
    server: &mut Proc,
    limit: Duration,
) -> (Vec<Received>, ExitStatus) {
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    loop {
        if let Some(n) = socket.recv(Duration::from_millis(50)) {
            received.push(Received {
                at: Instant::now(),
                n,
            });
            continue;
        }
        if let Some(status) = server.try_wait() {
            // Datagrams are queued when sent: whatever the process sent is here by now.
            while let Some(n) = socket.try_recv() {
                received.push(Received {
                    at: Instant::now(),
                    n,
                });
            }
            return (received, status);
        }
        assert!(
            Instant::now() < deadline,
            "pid {} did not exit within {limit:?}",
            server.pid()
        );
    }
}

/// Every datagram received during `window`, each with when it was received.
fn collect_for(socket: &NotifySocket, window: Duration) -> Vec<Received> {
    let end = Instant::now() + window;
    let mut received = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Some(n) = socket.recv(left) {
            received.push(Received {
                at: Instant::now(),
                n,
            });
        }
    }
    received
}

/// A progress report, parsed.
#[derive(Debug)]
struct Progress {
    /// When the test received it, since the stop signal was sent.
    after: Duration,
    /// What still drains (`1 connection(s), 1 request(s) in flight`).
    what: String,
    /// The whole seconds left before hammer time, from `STATUS=`.
    left_secs: u64,
    /// `EXTEND_TIMEOUT_USEC=`.
    extend_usec: u64,
}

/// Parses a progress report from `pid`: exactly a `STATUS=stopping: draining WHAT, Ns before
/// hammer time` and an `EXTEND_TIMEOUT_USEC=` line.
fn parse_progress(r: &Received, pid: i32, signalled: Instant) -> Progress {
    let n = &r.n;
    assert_eq!(
        n.pid, pid,
        "progress from pid {} instead of {pid}: {n:?}",
        n.pid
    );
    assert_eq!(
        n.keys(),
        ["STATUS", "EXTEND_TIMEOUT_USEC"],
        "not a progress report: {n:?}"
    );
    let status = n.get("STATUS").unwrap_or_default();
    let (what, left) = status
        .strip_prefix("stopping: draining ")
        .and_then(|rest| rest.strip_suffix("s before hammer time"))
        .and_then(|rest| rest.rsplit_once(", "))
        .unwrap_or_else(|| {
            panic!("STATUS={status:?} is not `stopping: draining WHAT, Ns before hammer time`")
        });
    let left_secs = left
        .parse()
        .unwrap_or_else(|_| panic!("`{left}` in STATUS={status:?} is not a number of seconds"));
    let extend_usec = n
        .get("EXTEND_TIMEOUT_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("EXTEND_TIMEOUT_USEC is not a number: {n:?}"));
    Progress {
        after: r.at.duration_since(signalled),
        what: what.to_owned(),
        left_secs,
        extend_usec,
    }
}

/// Checks the timing and the numbers of consecutive progress reports of a drain that began
/// when the stop signal was sent, with a [`HAMMER_TIME`] hammer time.
fn assert_progress_series(reports: &[Progress]) {
    for (i, p) in reports.iter().enumerate() {
        // The test's clock started before the process's: the time left it sees is at most
        // what the process saw.
        let left = HAMMER_TIME.saturating_sub(p.after);
        let extend = Duration::from_micros(p.extend_usec);
        assert!(
            extend >= left && extend <= left + EXTEND_SLACK,
            "report {i} ({p:?}): EXTEND_TIMEOUT_USEC={} is not between the {left:?} left before \
             hammer time and {:?}",
            p.extend_usec,
            left + EXTEND_SLACK
        );
        assert!(
            p.left_secs <= HAMMER_TIME.as_secs()
                && Duration::from_secs(p.left_secs) + Duration::from_secs(1) >= left
                && Duration::from_secs(p.left_secs) <= extend,
            "report {i} ({p:?}): STATUS says {}s before hammer time, the test sees {left:?}",
            p.left_secs
        );
        let expected_after = PROGRESS_EVERY * u32::try_from(i + 1).expect("a few reports");
        assert!(
            p.after + Duration::from_millis(500) >= expected_after
                && p.after <= expected_after + Duration::from_secs(4),
            "report {i} came {:?} after the signal; expected about {expected_after:?} \
             (one every {PROGRESS_EVERY:?})",
            p.after
        );
    }
    for pair in reports.windows(2) {
        assert!(
            pair[1].extend_usec < pair[0].extend_usec,
            "EXTEND_TIMEOUT_USEC did not decrease: {pair:?}"
        );
    }
}

/// Asserts that a request in flight during the drain was answered in full by `pid`.
fn assert_answered(
    response: std::thread::JoinHandle<Result<HttpResponse, String>>,
    ms: u64,
    pid: i32,
) {
    let response = response
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("the request in flight failed: {e}"));
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept {ms} ms in pid {pid}\n"))
    );
}

/// Asserts that every datagram of `received` comes from `pid`.
fn assert_all_from(received: &[Received], pid: i32) {
    for r in received {
        assert_eq!(
            r.n.pid, pid,
            "datagram from pid {} instead of {pid}: {:?}",
            r.n.pid, r.n
        );
    }
}

/// The largest gap between consecutive `WATCHDOG=1` from `pid` in `received`, counted from
/// `from`, and how many there are; panics if any datagram of `received` comes from another
/// pid.
///
/// The times are when the test received each datagram, which is when it was sent only while
/// the test was waiting in `recv`: `from` must be a moment from which the test has done
/// nothing but receive (a datagram queued while the test did something else would show a
/// gap that the process never left).
fn largest_watchdog_gap(received: &[Received], pid: i32, from: Instant) -> (Duration, usize) {
    let mut last = from;
    let mut largest = Duration::ZERO;
    let mut count = 0;
    assert_all_from(received, pid);
    for r in received {
        if r.n.keys() == ["WATCHDOG"] {
            assert_eq!(r.n.get("WATCHDOG"), Some("1"), "{:?}", r.n);
            largest = largest.max(r.at.duration_since(last));
            last = r.at;
            count += 1;
        }
    }
    (largest, count)
}

#[test]
fn a_long_stop_reports_its_progress_and_extends_the_stop_timeout() {
    const SLEEP_MS: u64 = 12_000;
    let dir = TempDir::new("drain-progress");
    let socket = bind_socket(&dir);
    let mut server = start(dir, &socket, &["--hammer-time", "30s"], &[]);
    let (pid, addr) = expect_server_ready(&socket);
    assert_eq!(pid, server.pid(), "READY=1 from another process");

    let request = RawRequest::send(addr.port(), &format!("/sleep/{SLEEP_MS}"));
    assert!(
        request.wait_accepted_by(pid, TIMEOUT),
        "the server did not accept the request"
    );
    let response = request.spawn_response();
    // No WATCHDOG_USEC: nothing but READY=1 so far.
    assert!(
        socket.try_recv().is_none(),
        "unexpected datagram while serving"
    );

    let signalled = Instant::now();
    send_signal(pid, Signal::SIGTERM);
    assert_stopping(&socket.expect(TIMEOUT, "STOPPING=1 after SIGTERM"), pid);
    let (received, status) = collect_until_exit(&socket, &mut server, TIMEOUT);
    let exited_after = signalled.elapsed();
    assert_answered(response, SLEEP_MS, pid);
    assert!(status.success(), "exited with {status}");

    let reports: Vec<Progress> = received
        .iter()
        .map(|r| parse_progress(r, pid, signalled))
        .collect();
    eprintln!("exited {exited_after:?} after SIGTERM; progress reports: {reports:#?}");
    // A 12 s drain: reports at about 5 s and 10 s.
    assert!(
        (2..=3).contains(&reports.len()),
        "{} progress reports during a {SLEEP_MS} ms drain, expected 2: {reports:#?}",
        reports.len()
    );
    for p in &reports {
        assert_eq!(p.what, "1 connection(s), 1 request(s) in flight", "{p:?}");
    }
    assert_progress_series(&reports);

    // The same reports in the log.
    let prefix = format!("pid {pid} generation 1: draining for ");
    let log = server.log();
    let logged: Vec<&str> = log.lines().filter(|line| line.contains(&prefix)).collect();
    assert_eq!(logged.len(), reports.len(), "log lines: {logged:#?}");
    for line in &logged {
        assert!(
            line.contains(": 1 connection(s), 1 request(s) in flight, ")
                && line.ends_with("s before hammer time"),
            "unexpected progress log line: {line}"
        );
    }
}

#[test]
fn watchdog_is_fed_while_serving_and_while_draining() {
    const SLEEP_MS: u64 = 2_500;
    let dir = TempDir::new("drain-progress-watchdog");
    let socket = bind_socket(&dir);
    let usec = WATCHDOG_USEC.to_string();
    let mut server = start(dir, &socket, &[], &[("WATCHDOG_USEC", &usec)]);
    let pid = server.pid();
    let (ready_pid, addr) = expect_server_ready(&socket);
    assert_eq!(ready_pid, pid);
    let ready_at = Instant::now();

    // Serving.
    let serving = collect_for(&socket, Duration::from_secs(3));
    let (gap, count) = largest_watchdog_gap(&serving, pid, ready_at);
    eprintln!("serving: {count} WATCHDOG=1 in 3 s, largest gap {gap:?}");
    assert!(
        serving.iter().all(|r| r.n.keys() == ["WATCHDOG"]),
        "only WATCHDOG=1 expected while serving"
    );
    assert!(
        gap < WATCHDOG_MAX_GAP,
        "largest gap between WATCHDOG=1 while serving: {gap:?} (WATCHDOG_USEC={WATCHDOG_USEC})"
    );
    assert!(count >= 3, "only {count} WATCHDOG=1 in 3 s");

    // Draining.
    let request = RawRequest::send(addr.port(), &format!("/sleep/{SLEEP_MS}"));
    assert!(
        request.wait_accepted_by(pid, TIMEOUT),
        "the server did not accept the request"
    );
    let response = request.spawn_response();
    let signalled = Instant::now();
    send_signal(pid, Signal::SIGTERM);
    let (draining, status) = collect_until_exit(&socket, &mut server, TIMEOUT);
    assert_answered(response, SLEEP_MS, pid);
    assert!(status.success(), "exited with {status}");
    let stopping: Vec<&Received> = draining
        .iter()
        .filter(|r| r.n.keys() != ["WATCHDOG"])
        .collect();
    assert_eq!(
        stopping.len(),
        1,
        "expected STOPPING=1 only besides WATCHDOG=1"
    );
    assert_stopping(&stopping[0].n, pid);
    let (gap, count) = largest_watchdog_gap(&draining, pid, signalled);
    eprintln!(
        "draining: {count} WATCHDOG=1 in {:?}, largest gap {gap:?}",
        signalled.elapsed()
    );
    assert!(
        gap < WATCHDOG_MAX_GAP,
        "largest gap between WATCHDOG=1 while draining: {gap:?} (WATCHDOG_USEC={WATCHDOG_USEC})"
    );
    assert!(
        count >= 3,
        "only {count} WATCHDOG=1 during a {SLEEP_MS} ms drain"
    );
}

#[test]
fn master_reports_the_workers_still_draining() {
    const SLEEP_MS: u64 = 7_000;
    let dir = TempDir::new("drain-progress-master");
    let socket = bind_socket(&dir);
    let mut server = start(dir, &socket, &["--master", "--hammer-time", "30s"], &[]);
    let master = server.pid();
    let worker = expect_master_ready(&socket, master);
    let port = server.wait_until_serving(master, TIMEOUT)[0].port();

    let request = RawRequest::send(port, &format!("/sleep/{SLEEP_MS}"));
    assert!(
        request.wait_accepted_by(worker, TIMEOUT),
        "the worker did not accept the request"
    );
    let response = request.spawn_response();
    let signalled = Instant::now();
    send_signal(master, Signal::SIGTERM);
    assert_stopping(&socket.expect(TIMEOUT, "STOPPING=1 after SIGTERM"), master);
    let (received, status) = collect_until_exit(&socket, &mut server, TIMEOUT);
    assert_answered(response, SLEEP_MS, worker);
    assert!(status.success(), "the master exited with {status}");
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker)),
        "the worker {worker} survived the master"
    );

    // From the master only (workers never notify), the workers still draining.
    let reports: Vec<Progress> = received
        .iter()
        .map(|r| parse_progress(r, master, signalled))
        .collect();
    eprintln!("progress reports: {reports:#?}");
    assert_eq!(
        reports.len(),
        1,
        "one progress report during a {SLEEP_MS} ms drain expected: {reports:#?}"
    );
    for p in &reports {
        assert!(
            p.what.starts_with("1 worker(s) ") && p.what.contains(&format!("pid {worker}")),
            "STATUS should name the one worker still draining, pid {worker}: {p:?}"
        );
    }
    assert_progress_series(&reports);
    let log_line = format!("master pid {master}: draining for ");
    assert!(
        server.log().lines().any(|line| line.contains(&log_line)
            && line.contains(&format!("pid {worker}"))
            && line.ends_with("s before hammer time")),
        "the master did not log its progress"
    );
}

#[test]
fn master_feeds_the_watchdog_and_its_workers_do_not() {
    let dir = TempDir::new("drain-progress-master-watchdog");
    let socket = bind_socket(&dir);
    let usec = WATCHDOG_USEC.to_string();
    let mut server = start(dir, &socket, &["--master"], &[("WATCHDOG_USEC", &usec)]);
    let master = server.pid();
    let worker = expect_master_ready(&socket, master);
    let ready_at = Instant::now();

    let serving = collect_for(&socket, Duration::from_secs(3));
    let (gap, count) = largest_watchdog_gap(&serving, master, ready_at);
    eprintln!("master: {count} WATCHDOG=1 in 3 s, largest gap {gap:?}");
    assert!(
        gap < WATCHDOG_MAX_GAP,
        "largest gap between the master's WATCHDOG=1: {gap:?} (WATCHDOG_USEC={WATCHDOG_USEC})"
    );
    assert!(count >= 3, "only {count} WATCHDOG=1 in 3 s");
    assert!(pid_alive(worker), "the worker {worker} died");

    send_signal(master, Signal::SIGTERM);
    let (received, status) = collect_until_exit(&socket, &mut server, TIMEOUT);
    assert!(status.success(), "the master exited with {status}");
    assert_all_from(&received, master);
}
