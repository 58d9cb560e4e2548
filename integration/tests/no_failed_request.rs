//! The zero-downtime promise: under continuous load, five upgrades in a row make no request
//! fail, on keep-alive connections as well as on one connection per request.

use std::time::Duration;

use integration::{
    examples, pid_alive, send_signal, wait_for, wait_until, LoadClient, LoadStats, Mode, Server,
    TIMEOUT,
};
use nix::sys::signal::Signal;

const UPGRADES: usize = 5;

fn assert_no_failure(name: &str, stats: &LoadStats) {
    assert_eq!(
        stats.failures,
        0,
        "{name} client: {} of {} requests failed; first errors:\n{}",
        stats.failures,
        stats.failures + stats.successes,
        stats.errors.join("\n")
    );
    assert!(stats.successes > 0, "{name} client made no request");
    assert!(
        stats.pids.len() > UPGRADES,
        "{name} client was answered by {} processes only: {:?}",
        stats.pids.len(),
        stats.pids
    );
}

#[test]
fn upgrades_under_load_fail_no_request() {
    let mut server = Server::start(&examples().hello, &["--workers", "2"]);
    let clients = [
        (
            "keep-alive",
            LoadClient::start(server.port(), Mode::KeepAlive),
        ),
        ("close", LoadClient::start(server.port(), Mode::Close)),
    ];

    let mut current = server.first_pid();
    for upgrade in 1..=UPGRADES {
        // Each generation must have served both clients before it is replaced.
        for (name, client) in &clients {
            assert!(
                wait_until(TIMEOUT, || client.stats().pids.contains(&current)),
                "{name} client was never answered by pid {current} (before upgrade {upgrade}); \
                 stats: {:?}",
                client.stats()
            );
        }
        assert_eq!(server.read_pid_file(), Some(current));

        send_signal(current, Signal::SIGHUP);
        let next = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != current))
            .unwrap_or_else(|| panic!("upgrade {upgrade}: the pid file still names {current}"));
        if upgrade == 1 {
            let status = server.wait_exit(TIMEOUT);
            assert!(status.success(), "first process exited with {status}");
        } else {
            assert!(
                wait_until(TIMEOUT, || !pid_alive(current)),
                "upgrade {upgrade}: old pid {current} did not exit"
            );
        }
        current = next;
    }
    for (name, client) in &clients {
        assert!(
            wait_until(TIMEOUT, || client.stats().pids.contains(&current)),
            "{name} client was never answered by the last pid {current}"
        );
    }
    // Some more load on the last generation, after every old process is gone.
    for (_, client) in &clients {
        let before = client.stats().successes;
        assert!(wait_until(Duration::from_secs(10), || {
            client.stats().successes > before + 10
        }));
    }

    for (name, client) in clients {
        assert_no_failure(name, &client.stop());
    }
}
