//! SIGQUIT is a graceful stop, as for nginx (`nginx -s quit`), in both process modes: the
//! server stops accepting, finishes the requests in flight and exits successfully; a second
//! SIGQUIT during the drain forces the close.
//!
//! Re-exec mode: the signal goes to the serving process. Stable-pid mode (`--master`): it goes
//! to the master, which has its worker drain and exits with the worker's status.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration::{
    examples, pid_alive, port_closed, send_signal, wait_until, HttpResponse, RawRequest, Server,
    TIMEOUT,
};
use nix::sys::signal::Signal;

/// How long the request in flight during a graceful stop takes.
const SHORT_SLEEP_MS: u64 = 1500;

/// How long the request cut short by a second SIGQUIT would take if it were let finish.
const LONG_SLEEP_MS: u64 = 20_000;

/// Longest a forced close may take after the second SIGQUIT: far below [`LONG_SLEEP_MS`].
const FORCED_WITHIN: Duration = Duration::from_secs(5);

/// Sends `GET /sleep/{ms}` to the server, waits until `pid` has accepted it and reads the
/// response in a thread.
fn request_in_flight(
    server: &Server,
    pid: i32,
    ms: u64,
) -> JoinHandle<Result<HttpResponse, String>> {
    let request = RawRequest::send(server.port(), &format!("/sleep/{ms}"));
    assert!(
        request.wait_accepted_by(pid, TIMEOUT),
        "pid {pid} did not accept GET /sleep/{ms}"
    );
    request.spawn_response()
}

/// The `hook: {stage} SIGQUIT pid={pid} ` log line prefix (the generation follows).
fn hook_line(stage: &str, pid: i32) -> String {
    format!("hook: {stage} SIGQUIT pid={pid} ")
}

/// Waits for the `pre` hook line of SIGQUIT for `pid`: the runtime acts right after its pre
/// hooks, so from then on the process is draining and a second SIGQUIT is a second request.
fn wait_until_handled(server: &Server, pid: i32) {
    let pre = hook_line("pre", pid);
    assert!(server.wait_for_log(&pre, 1, TIMEOUT), "no `{pre}` log line");
}

/// Asserts that both hook lines of SIGQUIT were logged once for `pid`, `pre` before `post`.
fn assert_hooks_ran_once(server: &Server, pid: i32) {
    let log = server.log();
    let (pre, post) = (hook_line("pre", pid), hook_line("post", pid));
    assert_eq!(
        log.matches(&pre).count(),
        1,
        "`{pre}` should be logged once"
    );
    assert_eq!(
        log.matches(&post).count(),
        1,
        "`{post}` should be logged once"
    );
    assert!(
        log.find(&pre) < log.find(&post),
        "`{post}` was logged before `{pre}`"
    );
}

/// Asserts that the request in flight was answered in full by `pid`.
fn assert_answered(response: JoinHandle<Result<HttpResponse, String>>, pid: i32) {
    let response = response
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("the request in flight failed: {e}"));
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept {SHORT_SLEEP_MS} ms in pid {pid}\n"))
    );
}

/// Asserts that a request cut short by the forced close did not get a successful answer.
fn assert_cut_short(response: JoinHandle<Result<HttpResponse, String>>) {
    let response = response.join().expect("reader thread panicked");
    assert!(
        !matches!(&response, Ok(r) if r.status == 200),
        "the {LONG_SLEEP_MS} ms request should have been cut short, got {response:?}"
    );
}

#[test]
fn sigquit_drains_then_exits() {
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();
    let response = request_in_flight(&server, pid, SHORT_SLEEP_MS);

    let signalled = Instant::now();
    send_signal(pid, Signal::SIGQUIT);
    assert_answered(response, pid);
    let status = server.wait_exit(TIMEOUT);
    let elapsed = signalled.elapsed();
    assert!(status.success(), "exited with {status} after SIGQUIT");
    assert!(
        elapsed < Duration::from_secs(10),
        "exited {elapsed:?} after SIGQUIT, for a {SHORT_SLEEP_MS} ms request"
    );

    assert_hooks_ran_once(&server, pid);
    assert!(
        server.log_contains(&format!(
            "pid {pid} generation 1: stopped accepting; draining 1 connection(s) with 1 request(s) in flight"
        )),
        "the drain did not start with the request in flight"
    );
    assert!(
        port_closed(server.port()),
        "port {} still open",
        server.port()
    );
    assert!(!server.pid_file().exists(), "the pid file was not removed");
}

#[test]
fn second_sigquit_forces_the_close() {
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();
    let response = request_in_flight(&server, pid, LONG_SLEEP_MS);

    send_signal(pid, Signal::SIGQUIT);
    wait_until_handled(&server, pid);
    assert_eq!(server.try_wait(), None, "exited before the drain was over");

    let signalled = Instant::now();
    send_signal(pid, Signal::SIGQUIT);
    let status = server.wait_exit(TIMEOUT);
    let elapsed = signalled.elapsed();
    assert!(
        elapsed < FORCED_WITHIN,
        "exited {elapsed:?} after the second SIGQUIT"
    );
    assert!(
        status.success(),
        "exited with {status} after the forced close"
    );
    assert_cut_short(response);
    assert!(
        server.log_contains(&hook_line("post", pid)),
        "no `{}` log line",
        hook_line("post", pid)
    );
    assert!(
        port_closed(server.port()),
        "port {} still open",
        server.port()
    );
}

#[test]
fn sigquit_to_the_master_drains_the_worker_then_exits() {
    let mut server = Server::start(&examples().hello, &["--master"]);
    let master = server.first_pid();
    let worker = server.get_pid().expect("a worker answers");
    assert_ne!(worker, master, "the master itself serves no request");
    let response = request_in_flight(&server, worker, SHORT_SLEEP_MS);

    let signalled = Instant::now();
    send_signal(master, Signal::SIGQUIT);
    assert_answered(response, worker);
    let status = server.wait_exit(TIMEOUT);
    let elapsed = signalled.elapsed();
    assert!(
        status.success(),
        "the master exited with {status} after SIGQUIT"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "the master exited {elapsed:?} after SIGQUIT, for a {SHORT_SLEEP_MS} ms request"
    );
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker)),
        "the worker {worker} survived the master"
    );

    assert_hooks_ran_once(&server, master);
    // The master has the worker drain (SIGTERM) and exits only once it has: the worker's
    // drain ends in the log before the master's own `post` hook, which runs at its exit.
    let log = server.log();
    let drained = log
        .find(&format!("pid {worker} generation 1: drained in"))
        .unwrap_or_else(|| panic!("the worker {worker} did not log the end of its drain"));
    let master_post = log.find(&hook_line("post", master)).expect("checked above");
    assert!(
        drained < master_post,
        "the master ran its post hook before the worker had drained"
    );
    assert!(
        log.contains(&format!("hook: pre SIGTERM pid={worker} ")),
        "the worker was not asked to drain with SIGTERM"
    );
    assert!(
        port_closed(server.port()),
        "port {} still open",
        server.port()
    );
}

#[test]
fn second_sigquit_to_the_master_forces_the_close() {
    let mut server = Server::start(&examples().hello, &["--master"]);
    let master = server.first_pid();
    let worker = server.get_pid().expect("a worker answers");
    let response = request_in_flight(&server, worker, LONG_SLEEP_MS);

    send_signal(master, Signal::SIGQUIT);
    wait_until_handled(&server, master);
    // The worker drains: its SIGTERM pre hook has run.
    let worker_pre = format!("hook: pre SIGTERM pid={worker} ");
    assert!(
        server.wait_for_log(&worker_pre, 1, TIMEOUT),
        "the worker was not asked to drain: no `{worker_pre}`"
    );
    assert_eq!(
        server.try_wait(),
        None,
        "the master exited before the drain was over"
    );

    let signalled = Instant::now();
    send_signal(master, Signal::SIGQUIT);
    let status = server.wait_exit(TIMEOUT);
    let elapsed = signalled.elapsed();
    assert!(
        elapsed < FORCED_WITHIN,
        "the master exited {elapsed:?} after the second SIGQUIT"
    );
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker)),
        "the worker {worker} survived"
    );
    eprintln!("master exit status after the forced close: {status}");
    assert_cut_short(response);
    assert!(
        port_closed(server.port()),
        "port {} still open",
        server.port()
    );
}
