//! Stopping: SIGTERM drains in-flight requests, bounded by the hammer time; SIGUSR2 and a
//! second SIGINT end the drain at once.

use std::time::{Duration, Instant};

use integration::{examples, port_closed, send_signal, HttpResponse, RawRequest, Server, TIMEOUT};
use nix::sys::signal::Signal;

/// Starts a request that the server would answer only after 20 s, and waits until `pid`
/// has accepted it.
fn long_request(
    server: &Server,
    pid: i32,
) -> std::thread::JoinHandle<Result<HttpResponse, String>> {
    let request = RawRequest::send(server.port(), "/sleep/20000");
    assert!(
        request.wait_accepted_by(pid, TIMEOUT),
        "the server did not accept the request"
    );
    request.spawn_response()
}

/// Waits until the server has begun handling `signal`: its `pre` hook line is logged, and
/// the runtime acts right after that hook, before it looks at the next signal. Pending
/// signals are not delivered in the order they were sent, so a test that sends a second
/// signal waits for this first.
fn wait_until_handled(server: &Server, signal: &str, pid: i32) {
    let pre = format!("hook: pre {signal} pid={pid} generation=1");
    assert!(server.wait_for_log(&pre, 1, TIMEOUT), "no `{pre}` log line");
}

/// Asserts that a request cut short by a forced close did not get a successful answer.
fn assert_cut_short(response: std::thread::JoinHandle<Result<HttpResponse, String>>) {
    let response = response.join().expect("reader thread panicked");
    assert!(
        !matches!(&response, Ok(r) if r.status == 200),
        "the 20 s request should have been cut short, got {response:?}"
    );
}

#[test]
fn sigterm_finishes_in_flight_request_then_exits() {
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();

    let request = RawRequest::send(server.port(), "/sleep/2000");
    assert!(
        request.wait_accepted_by(pid, TIMEOUT),
        "the server did not accept the request"
    );
    let response = request.spawn_response();
    send_signal(pid, Signal::SIGTERM);

    let response = response
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("the in-flight request failed: {e}"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, format!("slept 2000 ms in pid {pid}\n"));

    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "exited with {status}");
    assert!(
        port_closed(server.port()),
        "port {} still open",
        server.port()
    );
    assert!(!server.pid_file().exists(), "the pid file was not removed");
}

#[test]
fn hammer_time_bounds_the_drain() {
    let mut server = Server::start(&examples().hello, &["--hammer-time", "1000"]);
    let pid = server.first_pid();
    let response = long_request(&server, pid);

    let signalled = Instant::now();
    send_signal(pid, Signal::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    let elapsed = signalled.elapsed();

    assert!(
        elapsed < Duration::from_secs(6),
        "exited {elapsed:?} after SIGTERM with a 1000 ms hammer time"
    );
    // The drain lasts the whole hammer time, since the request would need 20 s.
    assert!(
        elapsed >= Duration::from_millis(950),
        "exited {elapsed:?} after SIGTERM, before the 1000 ms hammer time"
    );
    assert!(status.success(), "exited with {status}");
    assert_cut_short(response);
    assert!(!server.pid_file().exists(), "the pid file was not removed");
}

#[test]
fn sigusr2_ends_the_drain() {
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();
    let response = long_request(&server, pid);

    send_signal(pid, Signal::SIGTERM);
    wait_until_handled(&server, "SIGTERM", pid);

    assert_eq!(server.try_wait(), None, "exited before the drain was over");
    let signalled = Instant::now();
    send_signal(pid, Signal::SIGUSR2);
    server.wait_exit(TIMEOUT);
    let elapsed = signalled.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "exited {elapsed:?} after SIGUSR2"
    );
    assert_cut_short(response);
}

#[test]
fn second_sigint_ends_the_drain() {
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();
    let response = long_request(&server, pid);

    send_signal(pid, Signal::SIGINT);
    wait_until_handled(&server, "SIGINT", pid);

    assert_eq!(server.try_wait(), None, "exited before the drain was over");
    let signalled = Instant::now();
    send_signal(pid, Signal::SIGINT);
    server.wait_exit(TIMEOUT);
    let elapsed = signalled.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "exited {elapsed:?} after the second SIGINT"
    );
    assert_cut_short(response);
}
