//! Fault injection around an upgrade (issue 4, cases 1, 2, 3, 6 and 7).
//!
//! The new binary cannot be started, dies at start, or never reports ready: the old process
//! logs why, kills and reaps the new one and serves every request on. One process of a
//! hand-over dies while the other drains: the survivor serves on and the pid file names it.
//!
//! Every test keeps two strict load clients (keep-alive and one connection per request)
//! running through the fault, and counts their failures.

mod fault_support;

use std::fs;
use std::time::{Duration, Instant};

use fault_support::{
    let_clients_progress, link_binary, load_clients, no_stray_fds, pid_exists,
    processes_mentioning, started_pid, started_pids, UPGRADE_FAILED,
};
use integration::{
    children_of, examples, pid_alive, replace_file, replace_with_script, send_signal, wait_for,
    wait_until, LoadClient, LoadStats, Mode, RawRequest, Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;

/// How long a failure the old process can see at once (a spawn error, a child that exits) may
/// take to be logged. Well below the upgrade timeout the tests configure, so that a failure
/// noticed only when the timeout expires cannot pass for an immediate one.
const PROMPT: Duration = Duration::from_secs(10);

/// The upgrade timeout for the tests whose new binary fails at once.
const LONG_UPGRADE_TIMEOUT: &str = "25000";

/// How long the request that keeps an old process draining sleeps. Long enough for a debug
/// build of the new generation to start and report ready on a loaded machine.
const DRAIN_HOLD_MS: u64 = 10_000;

/// A server running from its own copy of `hello` (a hard link in its temporary directory),
/// so that the test can replace the binary an upgrade executes.
fn server_with_replaceable_binary(label: &str, args: &[&str]) -> (Server, std::path::PathBuf) {
    no_stray_fds();
    let dir = TempDir::new(label);
    let binary = dir.join("hello");
    link_binary(&binary, &examples().hello);
    let server = Server::start_in(dir, &binary, args);
    (server, binary)
}

/// SIGHUPs `old` and waits, at most [`PROMPT`], for the `count`-th `upgrade failed` line;
/// then checks that `old` has no child left, not even a zombie. Returns that log line.
fn fail_upgrade_promptly(server: &Server, old: i32, count: usize) -> String {
    let started = Instant::now();
    send_signal(old, Signal::SIGHUP);
    assert!(
        server.wait_for_log(UPGRADE_FAILED, count, PROMPT),
        "`{UPGRADE_FAILED}` was not logged {count} time(s) within {PROMPT:?}"
    );
    let elapsed = started.elapsed();
    let line = server
        .log()
        .lines()
        .filter(|line| line.contains(UPGRADE_FAILED))
        .nth(count - 1)
        .expect("counted above")
        .to_owned();
    assert!(
        line.contains(&format!("pid {old} generation 1: ")),
        "the failure was not logged by the old process: {line}"
    );
    assert!(
        !line.contains("did not report ready"),
        "the failure was only noticed at the upgrade timeout ({elapsed:?}): {line}"
    );
    let mut children = Vec::new();
    assert!(
        wait_until(PROMPT, || {
            children = children_of(old);
            children.is_empty()
        }),
        "the failed upgrade left children (pid, state) of {old}: {children:?}"
    );
    line
}

/// Puts the real binary back and checks that an upgrade now succeeds: the old process is
/// still fully functional after the faults.
/// The end of every failed-upgrade case: the load clients saw no failure and only the old
/// process `old`, which still names itself in the pid file, and once the real binary is back
/// an upgrade succeeds.
fn old_served_throughout_then_upgrades(
    server: &mut Server,
    binary: &std::path::Path,
    old: i32,
    clients: [(&'static str, LoadClient); 2],
) {
    let_clients_progress(&clients, 10);
    for (name, client) in clients {
        client.stop().assert_all_served_by(name, old);
    }
    assert_eq!(server.read_pid_file(), Some(old));
    upgrade_succeeds_after_restore(server, binary, old);
}

fn upgrade_succeeds_after_restore(server: &mut Server, binary: &std::path::Path, old: i32) {
    link_binary(binary, &examples().hello);
    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    assert_eq!(server.read_pid_file(), Some(new));
}

/// Case 1: the new binary is missing or not executable. The old process logs the spawn error
/// (`upgrade failed: cannot start ...`) at once and serves every request.
#[test]
fn missing_or_unexecutable_new_binary_keeps_the_old_process_serving() {
    let (mut server, binary) = server_with_replaceable_binary(
        "faults-unstartable",
        &["--upgrade-timeout", LONG_UPGRADE_TIMEOUT],
    );
    let old = server.first_pid();
    let clients = load_clients(&server);
    let program = binary.display().to_string();

    // Missing.
    fs::remove_file(&binary).expect("removing the binary");
    let line = fail_upgrade_promptly(&server, old, 1);
    assert!(
        line.contains(&format!(
            "cannot start {program}: No such file or directory"
        )),
        "unexpected failure for a missing binary: {line}"
    );

    // Not executable (mode 0644).
    replace_file(&binary, b"#!/bin/sh\nexit 0\n", 0o644);
    let line = fail_upgrade_promptly(&server, old, 2);
    assert!(
        line.contains(&format!("cannot start {program}: Permission denied")),
        "unexpected failure for a binary without the executable bit: {line}"
    );

    assert_eq!(server.try_wait(), None, "the old process exited");
    old_served_throughout_then_upgrades(&mut server, &binary, old, clients);
}

/// Case 1: the new binary is not a program: a text file without a `#!` line, or a truncated
/// ELF header. Starting it is a spawn error (`Exec format error`), logged at once; the file
/// is not run some other way (as a shell script, say: the text file holds a shell command
/// that would leave a trace). The old process serves every request.
#[test]
fn non_program_new_binary_is_a_spawn_error_and_is_not_run() {
    let (mut server, binary) = server_with_replaceable_binary(
        "faults-not-a-program",
        &["--upgrade-timeout", LONG_UPGRADE_TIMEOUT],
    );
    let old = server.first_pid();
    let clients = load_clients(&server);
    let program = binary.display().to_string();
    let trace = server.dir().join("run-as-a-script");

    let text = format!("touch '{}'\n", trace.display());
    let mut truncated_elf = b"\x7fELF\x02\x01\x01".to_vec();
    truncated_elf.resize(64, 0);
    for (count, (what, content)) in [("text", text.into_bytes()), ("ELF", truncated_elf)]
        .into_iter()
        .enumerate()
    {
        replace_file(&binary, &content, 0o755);
        let line = fail_upgrade_promptly(&server, old, count + 1);
        assert!(
            !trace.exists(),
            "the {what} file was run as a shell script ({line})"
        );
        assert!(
            line.contains(&format!("cannot start {program}")),
            "starting a {what} file is not reported as a spawn error: {line}"
        );
    }

    old_served_throughout_then_upgrades(&mut server, &binary, old, clients);
}

/// Case 2: the new binary exits at start, before it reports ready: with status 1, killed by a
/// signal (SIGABRT, as a Rust abort would), or the real binary refusing its command line.
/// The old process notices at once, reaps it (no zombie) and serves every request.
#[test]
fn new_binary_exiting_at_start_is_reaped_and_the_old_process_serves_on() {
    let (mut server, binary) = server_with_replaceable_binary(
        "faults-exit-at-start",
        &["--upgrade-timeout", LONG_UPGRADE_TIMEOUT],
    );
    let old = server.first_pid();
    let clients = load_clients(&server);
    let hello = examples().hello.display().to_string();

    let cases = [
        ("exit 1".to_owned(), "exit status: 1"),
        // No core file: the server's working directory is the test's.
        ("ulimit -c 0; kill -ABRT $$".to_owned(), "SIGABRT"),
        (
            format!("exec '{hello}' --no-such-flag x \"$@\""),
            "exit status: 2",
        ),
    ];
    for (count, (body, how)) in cases.iter().enumerate() {
        replace_with_script(&binary, body);
        let line = fail_upgrade_promptly(&server, old, count + 1);
        assert!(
            line.contains(how) && line.contains("before it reported ready"),
            "the failure of `{body}` does not say how it ended ({how}): {line}"
        );
    }

    old_served_throughout_then_upgrades(&mut server, &binary, old, clients);
}

/// Case 2, a harder variant: the new generation is the real server, which adopts the sockets,
/// starts its workers (and so may accept connections from the shared listening socket) and
/// then fails before it reports ready, because its pid file cannot be written. No request
/// may fail: the connections it accepted must be answered or never taken from the queue.
/// The old process serves on.
///
/// The window in which the new process accepts is a few milliseconds long, so the test
/// repeats the failure 30 times under three one-connection-per-request clients (and the
/// keep-alive one) to make a lost request likely to show.
#[test]
fn new_generation_failing_after_it_started_its_server_loses_no_request() {
    let (mut server, binary) = server_with_replaceable_binary(
        "faults-fail-late",
        &["--upgrade-timeout", LONG_UPGRADE_TIMEOUT],
    );
    let old = server.first_pid();
    let mut clients = Vec::from(load_clients(&server));
    for name in ["close 2", "close 3"] {
        clients.push((name, LoadClient::start(server.port(), Mode::Close)));
    }
    let hello = examples().hello.display().to_string();
    // The last --pid-file wins: one in a directory that does not exist.
    replace_with_script(
        &binary,
        &format!("exec '{hello}' \"$@\" --pid-file /proc/nonexistent/hello.pid"),
    );
    const ATTEMPTS: usize = 30;
    for count in 1..=ATTEMPTS {
        let line = fail_upgrade_promptly(&server, old, count);
        assert!(line.contains("before it reported ready"), "{line}");
    }
    let_clients_progress(&clients, 10);
    let failed_generations = started_pids(&server.log(), 2);
    assert_eq!(failed_generations.len(), ATTEMPTS);
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_no_failure(name);
        // Requests the failing generations answered before they gave up are fine.
        let strangers: Vec<_> = stats
            .pids
            .iter()
            .filter(|pid| **pid != old && !failed_generations.contains(pid))
            .collect();
        assert!(
            strangers.is_empty(),
            "{name} client: answered by {strangers:?}"
        );
    }
    assert_eq!(server.read_pid_file(), Some(old));
    upgrade_succeeds_after_restore(&mut server, &binary, old);
}

/// Case 2, what the log says: a real server that gives up before it reports ready (its pid
/// file cannot be written) exits with status 1 on its own. The old process must report that
/// status, not the SIGKILL it may have sent itself while the new process was exiting.
#[test]
fn failed_generation_is_reported_with_its_own_exit_status() {
    let (server, binary) = server_with_replaceable_binary(
        "faults-exit-status",
        &["--upgrade-timeout", LONG_UPGRADE_TIMEOUT],
    );
    let old = server.first_pid();
    let hello = examples().hello.display().to_string();
    replace_with_script(
        &binary,
        &format!("exec '{hello}' \"$@\" --pid-file /proc/nonexistent/hello.pid"),
    );
    for count in 1..=3 {
        let line = fail_upgrade_promptly(&server, old, count);
        let pid = started_pids(&server.log(), 2)[count - 1];
        let own = format!("pid {pid} generation 2: pid file /proc/nonexistent/hello.pid");
        assert!(
            server.log_contains(&own),
            "the new process did not log its own error `{own}`"
        );
        assert!(
            line.contains("exit status: 1"),
            "attempt {count}: the new process {pid} exited with status 1, but the old one \
             reports: {line}"
        );
    }
}

/// Asserts that the sequential `stats` client lost at most the one request it had in flight
/// when the process holding its connection was SIGKILLed at `kill_time` (client time): a
/// connection reset or cut short no earlier than the kill, and never a refused connection.
fn assert_only_the_killed_request_failed(name: &str, stats: &LoadStats, kill_time: Duration) {
    assert!(stats.successes > 0, "{name} client made no request");
    assert!(
        stats.failures <= 1,
        "{name} client: {} requests failed (at most the one in flight on the killed process \
         may):\n{}",
        stats.failures,
        stats.errors.join("\n")
    );
    for error in &stats.errors {
        let at: f64 = error
            .split(" at ")
            .nth(1)
            .and_then(|rest| rest.split('s').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no time in the error {error:?}"));
        assert!(
            at + 0.001 >= kill_time.as_secs_f64(),
            "{name} client: a request failed before the kill: {error}"
        );
        assert!(
            error.contains("reset") || error.contains("end of stream"),
            "{name} client: the failure was not the killed connection being cut: {error}"
        );
    }
}

/// Case 3: the new binary never reports ready. After the upgrade timeout (1.5 s) the old
/// process kills and reaps it, and serves every request throughout.
#[test]
fn new_binary_never_ready_is_killed_after_the_upgrade_timeout() {
    let (mut server, binary) =
        server_with_replaceable_binary("faults-never-ready", &["--upgrade-timeout", "1500"]);
    let old = server.first_pid();
    let clients = load_clients(&server);
    replace_with_script(&binary, "exec sleep 600");

    let started = Instant::now();
    send_signal(old, Signal::SIGHUP);
    // The new process, once the script has exec'd `sleep`.
    let sleeper = wait_for(TIMEOUT, || {
        children_of(old).into_iter().find_map(|(pid, _)| {
            fault_support::cmdline(pid)
                .is_some_and(|c| c.starts_with("sleep"))
                .then_some(pid)
        })
    })
    .expect("no `sleep` child of the old process appeared");
    assert!(
        server.wait_for_log(UPGRADE_FAILED, 1, TIMEOUT),
        "`{UPGRADE_FAILED}` was not logged"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "the upgrade was given up after {waited:?}, before its 1.5 s timeout"
    );
    let log = server.log();
    assert!(
        log.contains(&format!(
            "new process {sleeper} did not report ready within 1.5s"
        )),
        "the log does not say that pid {sleeper} timed out"
    );
    assert_eq!(started_pid(&log, 2), Some(sleeper));
    assert!(
        wait_until(PROMPT, || !pid_exists(sleeper)),
        "the `sleep` process {sleeper} was not killed and reaped (state {:?})",
        fault_support::stat_of(sleeper)
    );
    assert_eq!(children_of(old), Vec::new());

    old_served_throughout_then_upgrades(&mut server, &binary, old, clients);
}

/// Starts a request that keeps `pid` draining for [`DRAIN_HOLD_MS`] after an upgrade, and
/// waits until `pid` has accepted it.
fn hold_drain(server: &Server, pid: i32) -> RawRequest {
    let request = RawRequest::send(server.port(), &format!("/sleep/{DRAIN_HOLD_MS}"));
    assert!(
        request.wait_accepted_by(pid, TIMEOUT),
        "pid {pid} did not accept the long request"
    );
    request
}

/// SIGHUPs `old` (kept draining by a long request) and waits until the new generation has
/// reported ready, the old one drains, and both clients are answered by the new one (so the
/// only connection left in the old process is the long request). Returns the new pid.
fn hand_over(server: &Server, old: i32, clients: &[(&str, LoadClient)]) -> i32 {
    send_signal(old, Signal::SIGHUP);
    let new = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != old))
        .expect("the new generation did not write the pid file");
    let ready = format!("generation 2 (pid {new}) is ready after");
    assert!(server.wait_for_log(&ready, 1, TIMEOUT), "no `{ready}` line");
    for (name, client) in clients {
        assert!(
            wait_until(TIMEOUT, || client.stats().pids.contains(&new)),
            "{name} client was never answered by the new pid {new}"
        );
    }
    // Both clients have moved: a request sent now reaches the new generation.
    let_clients_progress(clients, 5);
    assert!(pid_alive(old), "the old process stopped draining too early");
    new
}

/// Case 6: the old process is SIGKILLed while it drains. The new one serves on, with no
/// failed request, and the pid file names it.
#[test]
fn old_process_killed_while_draining_leaves_the_new_one_serving() {
    no_stray_fds();
    let mut server = Server::start(&examples().hello, &[]);
    let old = server.first_pid();
    let long = hold_drain(&server, old);
    let clients = load_clients(&server);
    let new = hand_over(&server, old, &clients);

    send_signal(old, Signal::SIGKILL);
    let status = server.wait_exit(TIMEOUT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    assert!(
        long.response().is_err(),
        "the request in the killed process cannot have been answered"
    );
    let_clients_progress(&clients, 20);
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_no_failure(name);
        assert!(stats.pids.contains(&new));
    }
    assert_eq!(server.read_pid_file(), Some(new));
    assert_eq!(server.get_pid(), Ok(new));
    assert!(pid_alive(new));
    assert_eq!(processes_mentioning(&server.dir().to_string_lossy()), [new]);
}

/// Case 7: the new process is SIGKILLed after it reported ready, while the old one still
/// drains. The old one takes the listening sockets back and serves again (the pid file names
/// it again), and can still be upgraded afterwards.
///
/// Only the one-connection-per-request client runs through the kill: a keep-alive connection
/// that the new process holds is necessarily cut when it is killed. So is the one request the
/// (sequential) client may have in flight on the killed process at that instant: nothing else
/// holds that connection. Every other request, before and after, must succeed; connections
/// waiting in the shared listen queue are served by the old process.
#[test]
fn new_process_dying_while_the_old_one_drains_gives_the_sockets_back() {
    no_stray_fds();
    let mut server = Server::start(&examples().hello, &[]);
    let old = server.first_pid();
    let long = hold_drain(&server, old);
    let client_started = Instant::now();
    let clients = [("close", LoadClient::start(server.port(), Mode::Close))];
    let new = hand_over(&server, old, &clients);

    let killed_at = server.log().len();
    let kill_time = client_started.elapsed();
    send_signal(new, Signal::SIGKILL);
    assert!(
        server.wait_for_log("taking the listening sockets back", 1, TIMEOUT),
        "the old process did not take the sockets back"
    );
    let took_back = server.log()[killed_at..]
        .lines()
        .find(|l| l.contains("taking the listening sockets back"))
        .expect("seen above")
        .to_owned();
    assert!(
        took_back.contains(&format!(
            "pid {old} generation 1: generation 2 (pid {new}) died"
        )),
        "{took_back}"
    );
    assert!(
        wait_until(TIMEOUT, || server.read_pid_file() == Some(old)),
        "the pid file does not name the old process again: {:?}",
        server.read_pid_file()
    );
    assert!(
        wait_until(PROMPT, || !pid_exists(new)),
        "the killed process {new} was not reaped"
    );
    assert_eq!(children_of(old), Vec::new());
    // Requests are answered by the old process again.
    assert!(wait_until(TIMEOUT, || server.get_pid() == Ok(old)));
    let_clients_progress(&clients, 20);

    // The request that kept it draining was answered, by the old process.
    let response = long.response().expect("the long request failed");
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept {DRAIN_HOLD_MS} ms in pid {old}\n"))
    );
    for (name, client) in clients {
        let stats = client.stop();
        // The client's error times count from its start, like `kill_time`.
        eprintln!(
            "{name} client: SIGKILL sent to pid {new} at {:.3}s",
            kill_time.as_secs_f64()
        );
        assert_only_the_killed_request_failed(name, &stats, kill_time);
        assert!(stats.pids.contains(&old) && stats.pids.contains(&new));
    }
    assert_eq!(server.try_wait(), None, "the old process exited");

    // It is a serving process again: the next upgrade works.
    send_signal(old, Signal::SIGHUP);
    let next = server.wait_for_new_pid(old, TIMEOUT);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    assert_eq!(server.read_pid_file(), Some(next));
}
