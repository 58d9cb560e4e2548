//! The commit window (issue 14, `--commit-after`): after a hand-over the old generation stays,
//! paused and holding the sockets, until the window ends; if the new generation dies within
//! it, the old one serves again and the upgrade's outcome is `failed` (`rolled back: ...`).
//!
//! Real processes, real signals, real sockets. Every server is a `Server` (killed by pid when
//! the test ends); every client process is killed by pid if it outlives its deadline.

mod control_support;
mod fault_support;

use std::time::{Duration, Instant};

use control_support::{
    assert_only_in_flight_requests_failed, field, field_i64, log_time_ms, now_ms, spawn_ctl,
    vm_rss_kib, ControlServer,
};
use fault_support::pid_exists;
use integration::{children_of, pid_alive, wait_for, wait_until, LoadClient, Mode, TIMEOUT};

/// How long the client may wait for an outcome (its `--timeout` default is 30 s).
const CTL_LIMIT: Duration = Duration::from_secs(40);

/// How long something that happens at once may take on a loaded machine.
const PROMPT: Duration = Duration::from_secs(10);

/// What the crashing build logs right before it aborts (`examples/common`).
const CRASH_LINE: &str = "--crash-after 1s: aborting";

/// Waits until every client has made `count` more successful requests.
fn let_clients_progress(clients: &[(&str, u64, LoadClient)], count: u64) {
    for (name, _, client) in clients {
        let before = client.stats().successes;
        assert!(
            wait_until(TIMEOUT, || client.stats().successes >= before + count),
            "{name} client made no progress: {:?}",
            client.stats()
        );
    }
}

/// `--commit-after 3s`, and a new build that reports ready and aborts 1 s after it began
/// serving (`--crash-after 1s`, added by a wrapper script). Under four strict load clients
/// (one keep-alive, three one-connection-per-request) the old generation takes over again on
/// its own: `hello upgrade` exits 1 with `rolled back: ...`, the old pid answers and is named
/// by the pid file, and the only failed requests are those in flight on the crashed process:
/// at most one per client, each at or after the crash, each a connection cut short (never a
/// refused one).
#[test]
fn new_generation_crashing_in_the_commit_window_is_rolled_back_under_load() {
    let server = ControlServer::start("commit-rollback", &["--commit-after", "3s"]);
    let old = server.server.first_pid();
    server.upgrade_with_flags("--crash-after 1s");

    // (name, wall-clock ms just before the client started, client)
    let clients: Vec<(&str, u64, LoadClient)> = [
        ("keep-alive", Mode::KeepAlive),
        ("close 1", Mode::Close),
        ("close 2", Mode::Close),
        ("close 3", Mode::Close),
    ]
    .into_iter()
    .map(|(name, mode)| {
        (
            name,
            now_ms(),
            LoadClient::start(server.server.port(), mode),
        )
    })
    .collect();
    let_clients_progress(&clients, 10);

    let ctl = spawn_ctl("upgrade", server.socket.clone(), CTL_LIMIT)
        .join()
        .expect("client thread");
    eprintln!(
        "upgrade: exit {:?} after {:?}: {:?}; stderr {:?}",
        ctl.status.code(),
        ctl.elapsed,
        ctl.lines,
        ctl.stderr
    );
    assert_eq!(ctl.code(), 1, "{ctl:?}");
    let kinds = ctl.kinds();
    assert!(
        kinds == ["spawned", "ready", "draining", "drained", "result:failed"]
            || kinds == ["spawned", "ready", "draining", "result:failed"],
        "progress lines: {:?}",
        ctl.stdout()
    );
    let (_, spawned) = ctl.event("spawned").expect("checked above");
    let new = i32::try_from(field_i64(spawned, "pid").expect("a pid")).expect("pid");
    server.server.record_pid(new);
    let (_, outcome) = ctl.outcome().expect("checked above");
    let reason = field(outcome, "reason").expect("a failure has a reason");
    assert_eq!(
        reason,
        format!(
            "rolled back: generation 2 (pid {new}) died (signal: 6 (SIGABRT)) while generation 1 \
             drained; generation 1 serves again"
        )
    );
    assert_eq!(ctl.stderr.trim_end(), format!("error: {reason}"));
    // The crash comes 1 s after the new build began serving; the rollback at once, long before
    // the 3 s window ends.
    let (ready_at, _) = ctl.event("ready").expect("checked above");
    let (failed_at, _) = ctl.outcome().expect("checked above");
    let after_ready = failed_at.saturating_sub(ready_at);
    assert!(
        after_ready >= Duration::from_millis(900) && after_ready < Duration::from_millis(2900),
        "the rollback was reported {after_ready:?} after `ready`"
    );

    // The old generation serves again and the pid file names it.
    assert!(
        wait_until(PROMPT, || !pid_exists(new)),
        "the crashed generation {new} was not reaped"
    );
    assert!(pid_alive(old), "the old generation is gone");
    // `hello upgrade` has exited with the rollback: a deploy script reads the pid file now.
    assert_eq!(
        server.server.read_pid_file(),
        Some(old),
        "`hello upgrade` reported `{reason}`, but the pid file does not name pid {old}"
    );
    assert!(
        wait_until(PROMPT, || server.server.get_pid() == Ok(old)),
        "GET /pid: {:?}",
        server.server.get_pid()
    );
    assert_eq!(children_of(old), Vec::new());
    let log = server.server.log();
    let took_back = format!(
        "pid {old} generation 1: generation 2 (pid {new}) died while this process was draining \
         (signal: 6 (SIGABRT)); taking the listening sockets back and serving again"
    );
    assert!(log.contains(&took_back), "no `{took_back}` in the log");
    let status = server.ctl("status", CTL_LIMIT);
    assert_eq!(status.code(), 0, "{status:?}");
    let line = &status.lines[0].1;
    for (key, value) in [
        ("pid", old.to_string()),
        ("generation", "1".to_owned()),
        ("state", "serving".to_owned()),
        ("upgrades_ok", "0".to_owned()),
        ("upgrades_failed", "1".to_owned()),
        (
            "last_failure",
            "generation 2 died during the drain".to_owned(),
        ),
    ] {
        assert_eq!(
            field(line, key),
            Some(value),
            "status field {key} in {line}"
        );
    }

    // When the crashed process died, by the clock the server logs with.
    let crash_ms = log
        .lines()
        .find(|line| line.contains(CRASH_LINE))
        .and_then(log_time_ms)
        .unwrap_or_else(|| panic!("no timed `{CRASH_LINE}` line in the log"));
    let_clients_progress(&clients, 20);
    let mut failed = 0;
    for (name, started_ms, client) in clients {
        let stats = client.stop();
        // Client time of the crash. The log's millisecond is truncated (the abort comes after
        // it), and the client's clock starts a moment after `started_ms`: 10 ms of slack.
        let death = (crash_ms as f64 - started_ms as f64) / 1000.0 - 0.010;
        eprintln!(
            "{name} client: {} ok, {} failed, crash at {death:.3}s, pids {:?}, errors {:?}",
            stats.successes, stats.failures, stats.pids, stats.errors
        );
        assert_only_in_flight_requests_failed(name, &stats, death);
        assert!(stats.pids.contains(&old), "{name}: {:?}", stats.pids);
        failed += stats.failures;
    }
    assert!(
        failed <= 4,
        "{failed} requests failed, more than one per client"
    );
    assert_eq!(server.server.read_pid_file(), Some(old));
}

/// `--commit-after 2s` and a good build: the old generation stays alive (paused) for the
/// window after the hand-over, is gone within 2 s + 3 s of slack, and exits 0; `hello
/// upgrade` reports `ok` only after the window. Prints the old process's VmRSS while it waits.
#[test]
fn good_build_is_committed_when_the_window_ends() {
    const WINDOW: Duration = Duration::from_secs(2);
    let mut server = ControlServer::start("commit-window", &["--commit-after", "2s"]);
    let old = server.server.first_pid();
    let clients: Vec<(&str, u64, LoadClient)> =
        [("keep-alive", Mode::KeepAlive), ("close", Mode::Close)]
            .into_iter()
            .map(|(name, mode)| {
                (
                    name,
                    now_ms(),
                    LoadClient::start(server.server.port(), mode),
                )
            })
            .collect();
    let_clients_progress(&clients, 10);
    let rss_serving = vm_rss_kib(old).expect("VmRSS of the old process");

    let upgrade = spawn_ctl("upgrade", server.socket.clone(), CTL_LIMIT);
    // The new generation writes the pid file right before it reports ready, and the old one
    // hands over when it hears that: this is the hand-over, to within a poll.
    let new = wait_for(TIMEOUT, || {
        server.server.read_pid_file().filter(|&p| p != old)
    })
    .expect("the new generation did not write the pid file");
    let handed_over = Instant::now();

    // Alive throughout the first second of the window; measure it meanwhile.
    let mut rss_max = 0;
    let mut samples = 0;
    let mut status_seen = None;
    while handed_over.elapsed() < Duration::from_secs(1) {
        assert!(
            pid_alive(old),
            "the old generation exited {:?} after the hand-over, within the 2 s window",
            handed_over.elapsed()
        );
        if let Some(rss) = vm_rss_kib(old) {
            rss_max = rss_max.max(rss);
            samples += 1;
        }
        if status_seen.is_none() && handed_over.elapsed() > Duration::from_millis(300) {
            status_seen = Some(server.ctl("status", CTL_LIMIT));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pid_alive(old),
        "the old generation is gone 1 s after the hand-over"
    );
    let rss_new = vm_rss_kib(new).unwrap_or(0);
    eprintln!(
        "old pid {old}: VmRSS {rss_serving} KiB while serving, at most {rss_max} KiB in the \
         commit window ({samples} samples); new pid {new}: VmRSS {rss_new} KiB"
    );
    assert!(samples > 0, "VmRSS of {old} could not be read");
    // During the window the new generation answers on the control socket.
    let status = status_seen.expect("status asked");
    assert_eq!(status.code(), 0, "{status:?}");
    let line = &status.lines[0].1;
    assert_eq!(field_i64(line, "pid"), Some(i64::from(new)), "{line}");
    assert_eq!(field(line, "state").as_deref(), Some("serving"), "{line}");

    let limit = WINDOW + Duration::from_secs(3);
    let exit = server
        .server
        .wait_exit(limit.saturating_sub(handed_over.elapsed()));
    let gone_after = handed_over.elapsed();
    eprintln!("old generation exited with {exit} {gone_after:?} after the hand-over");
    assert!(exit.success(), "the old generation exited with {exit}");
    assert!(
        gone_after <= limit + Duration::from_millis(50),
        "{gone_after:?}"
    );
    assert!(
        gone_after >= WINDOW - Duration::from_millis(100),
        "the old generation exited {gone_after:?} after the hand-over, before the 2 s window ended"
    );

    let ctl = upgrade.join().expect("client thread");
    eprintln!("upgrade after {:?}: {:?}", ctl.elapsed, ctl.lines);
    assert_eq!(ctl.code(), 0, "{ctl:?}");
    assert_eq!(
        ctl.kinds(),
        ["spawned", "ready", "draining", "drained", "result:ok"],
        "{:?}",
        ctl.stdout()
    );
    let (ready_at, _) = ctl.event("ready").expect("checked above");
    let (ok_at, ok) = ctl.outcome().expect("checked above");
    assert!(
        ok_at.saturating_sub(ready_at) >= WINDOW - Duration::from_millis(100),
        "`ok` came {:?} after `ready`, before the 2 s window ended",
        ok_at.saturating_sub(ready_at)
    );
    assert_eq!(field_i64(ok, "pid"), Some(i64::from(new)), "{ok}");
    assert_eq!(field_i64(ok, "generation"), Some(2), "{ok}");
    assert_eq!(
        ctl.stdout().last().copied(),
        Some(format!("upgraded: generation 2 serves as pid {new}").as_str())
    );
    assert_eq!(server.server.read_pid_file(), Some(new));
    assert_eq!(server.server.get_pid(), Ok(new));

    let_clients_progress(&clients, 10);
    for (name, _, client) in clients {
        let stats = client.stop();
        eprintln!(
            "{name} client: {} ok, {} failed, pids {:?}",
            stats.successes, stats.failures, stats.pids
        );
        stats.assert_no_failure(name);
        assert!(stats.pids.contains(&new), "{name}: {:?}", stats.pids);
    }
}
