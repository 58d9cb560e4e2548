//! Signal storms (issue 4, cases 4 and 5): many signals, fast, to one process.
//!
//! A storm of SIGHUPs runs exactly one upgrade, loses no request and leaves exactly one
//! process holding the listening socket. A mixed storm ending in SIGTERM neither deadlocks nor
//! leaves a half-started generation behind, and runs every signal's hooks.

mod fault_support;

use std::time::{Duration, Instant};

use fault_support::{
    listening_inode, no_stray_fds, pid_exists, processes_mentioning, socket_holders, started_pids,
    try_signal, zombie_children,
};
use integration::{
    examples, port_closed, send_signal, wait_for, wait_until, LoadClient, Mode, Server, TIMEOUT,
};
use nix::sys::signal::Signal;

/// How many SIGHUPs the storm sends within [`STORM_SPAN`]. The n-th goes out at
/// `(n / STORM_SIGNALS)² × STORM_SPAN`: dense at first (the first ten within 40 ms, while
/// even a fast upgrade is still in progress), then sparser (reaching a slow upgrade, its
/// drain, and the process after it exited).
const STORM_SIGNALS: u32 = 50;
const STORM_SPAN: Duration = Duration::from_secs(1);

/// Case 4: 50 SIGHUPs within one second, under load from both strict clients. Exactly one
/// upgrade runs, no request fails, and afterwards exactly one process (of all of `/proc`)
/// holds the listening socket.
#[test]
fn sighup_storm_runs_exactly_one_upgrade_and_fails_no_request() {
    no_stray_fds();
    let mut server = Server::start(&examples().hello, &[]);
    let old = server.first_pid();
    let clients = [
        (
            "keep-alive",
            LoadClient::start(server.port(), Mode::KeepAlive),
        ),
        ("close", LoadClient::start(server.port(), Mode::Close)),
    ];
    for (name, client) in &clients {
        assert!(
            wait_until(TIMEOUT, || client.stats().successes > 10),
            "{name} client is not served: {:?}",
            client.stats()
        );
    }

    // The storm. The old process is our child and is not reaped before the end of the storm,
    // so its pid cannot be reused meanwhile: every signal reaches it or its zombie.
    let start = Instant::now();
    for i in 0..STORM_SIGNALS {
        let at = start + STORM_SPAN * (i * i) / (STORM_SIGNALS * STORM_SIGNALS);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        assert!(try_signal(old, Signal::SIGHUP), "SIGHUP {i} was not sent");
    }

    let new = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != old))
        .expect("no new generation wrote the pid file");
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    for (name, client) in &clients {
        let before = client.stats().successes;
        assert!(
            wait_until(TIMEOUT, || client.stats().pids.contains(&new)
                && client.stats().successes > before + 10),
            "{name} client is not served by the new generation {new}"
        );
    }
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_no_failure(name);
        assert_eq!(stats.pids, [old, new].into(), "{name} client");
    }

    let log = server.log();
    let upgrades = log
        .matches(&format!(
            "pid {old} generation 1: upgrading: starting generation"
        ))
        .count();
    assert_eq!(upgrades, 1, "the storm started {upgrades} upgrades");
    assert_eq!(log.matches("upgrading: starting generation").count(), 1);
    assert_eq!(started_pids(&log, 2), [new]);
    // The storm did hit the process while it was busy, and each ignored request was logged.
    let handled = log
        .matches(&format!("hook: pre SIGHUP pid={old} generation=1"))
        .count();
    let ignored = log
        .matches(&format!("pid {old} generation 1: upgrade request ignored"))
        .count();
    assert!(
        handled >= 2 && ignored == handled - 1,
        "{handled} SIGHUPs handled, {ignored} logged as ignored"
    );

    let inode = listening_inode(server.port());
    assert_eq!(
        socket_holders(inode),
        [new].into(),
        "processes holding the listening socket {inode}"
    );
    assert_eq!(zombie_children(new), Vec::<i32>::new());
    assert_eq!(processes_mentioning(&server.dir().to_string_lossy()), [new]);
    assert_eq!(server.get_pid(), Ok(new));
}

/// Case 5: SIGHUP, SIGUSR1, SIGTSTP, SIGHUP and SIGTERM back to back to one process. It does
/// not deadlock: it exits, with status 0, within the deadline; every distinct signal's pre and
/// post hooks ran (a second SIGHUP may merge with the first: standard signals do not queue);
/// and the upgrade in flight when SIGTERM arrived was abandoned: no process serves the port
/// afterwards and no generation it started survives.
#[test]
fn mixed_signal_storm_ends_in_a_clean_graceful_exit() {
    no_stray_fds();
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();
    let port = server.port();
    let marker = server.dir().to_string_lossy().into_owned();

    for signal in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGTSTP,
        Signal::SIGHUP,
        Signal::SIGTERM,
    ] {
        send_signal(pid, signal);
    }
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "the process exited with {status}");

    let log = server.log();
    let count = |stage: &str, name: &str| {
        log.matches(&format!("hook: {stage} {name} pid={pid} generation=1"))
            .count()
    };
    let hups = count("pre", "SIGHUP");
    assert!((1..=2).contains(&hups), "{hups} SIGHUPs handled for 2 sent");
    assert_eq!(count("post", "SIGHUP"), hups, "post SIGHUP hooks");
    for name in ["SIGUSR1", "SIGTSTP", "SIGTERM"] {
        assert_eq!(count("pre", name), 1, "pre {name} hooks");
        assert_eq!(count("post", name), 1, "post {name} hooks");
    }

    // Nothing is left: no generation started by the storm, nothing on the port, no pid file.
    for child in started_pids(&log, 2) {
        assert!(
            !pid_exists(child),
            "generation 2 (pid {child}) survived the stop: state {:?}",
            fault_support::stat_of(child)
        );
    }
    let mut left = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            left = processes_mentioning(&marker);
            left.is_empty()
        }),
        "processes of this server still run after it exited: {left:?}"
    );
    assert!(port_closed(port), "something still listens on port {port}");
    assert!(
        !server.pid_file().exists(),
        "the pid file was not removed on the graceful exit"
    );
}
