//! The zero-downtime promise: under continuous load, five upgrades in a row make no request
//! fail, on keep-alive connections as well as on one connection per request.

use std::time::Duration;

use integration::{
    examples, pid_alive, send_signal, wait_for, wait_until, LoadClient, Mode, Server, TIMEOUT,
};
use nix::sys::signal::Signal;

const UPGRADES: usize = 5;

/// Starts `hello --workers 2` and one [`LoadClient`] per mode, performs [`UPGRADES`] upgrades
/// in a row, and asserts that no request failed and that every generation answered.
fn upgrade_under_load(modes: &[Mode]) {
    let mut server = Server::start(&examples().hello, &["--workers", "2"]);
    let clients: Vec<(Mode, LoadClient)> = modes
        .iter()
        .map(|&mode| (mode, LoadClient::start(server.port(), mode)))
        .collect();
    let wait_answered_by = |pid: i32, when: &str| {
        for (mode, client) in &clients {
            assert!(
                wait_until(TIMEOUT, || client.stats().pids.contains(&pid)),
                "{mode:?} client was never answered by pid {pid} ({when}); stats: {:?}",
                client.stats()
            );
        }
    };

    let mut current = server.first_pid();
    for upgrade in 1..=UPGRADES {
        // Each generation must have served every client before it is replaced.
        wait_answered_by(current, &format!("before upgrade {upgrade}"));
        assert_eq!(server.read_pid_file(), Some(current));

        send_signal(current, Signal::SIGHUP);
        let next = wait_for(TIMEOUT, || {
            server.read_pid_file().filter(|&pid| pid != current)
        })
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
    wait_answered_by(current, "after the last upgrade");
    // Some more load on the last generation, after every old process is gone.
    for (_, client) in &clients {
        let before = client.stats().successes;
        assert!(wait_until(Duration::from_secs(10), || {
            client.stats().successes > before + 10
        }));
    }

    for (mode, client) in clients {
        client
            .stop()
            .assert_across_upgrades(format!("{mode:?}"), UPGRADES);
    }
}

/// The main scenario: a keep-alive client and a connection-per-request client at once.
#[test]
fn upgrades_under_load_fail_no_request() {
    upgrade_under_load(&[Mode::KeepAlive, Mode::Close]);
}

/// Connection-per-request load alone. Without a keep-alive connection, the old process often
/// has no open connection at the moment it stops accepting, which is when a connection it has
/// just accepted, but not yet started serving, must not be dropped.
#[test]
fn upgrades_under_connection_per_request_load_fail_no_request() {
    upgrade_under_load(&[Mode::Close]);
}
