//! Failed upgrades: when the new binary exits at once or never reports ready, the old process
//! kills and reaps it, keeps serving every request, and can still be upgraded later.

use std::time::Duration;

use integration::{
    children_of, examples, replace_with_copy, replace_with_script, send_signal, wait_until,
    LoadClient, Mode, Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;

/// What the library logs when an upgrade fails.
const UPGRADE_FAILED: &str = "upgrade failed";

/// SIGHUPs `old` and waits for the `count`-th upgrade failure; then checks that `old` has no
/// child left, not even a zombie.
fn fail_upgrade(server: &Server, old: i32, count: usize) {
    send_signal(old, Signal::SIGHUP);
    assert!(
        server.wait_for_log(UPGRADE_FAILED, count, TIMEOUT),
        "`{UPGRADE_FAILED}` was not logged {count} time(s)"
    );
    let mut children = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            children = children_of(old);
            children.is_empty()
        }),
        "the failed upgrade left children (pid, state) of {old}: {children:?}"
    );
}

#[test]
fn failed_upgrades_keep_the_old_process_serving() {
    let dir = TempDir::new("failed-upgrade");
    let binary = dir.join("hello");
    replace_with_copy(&binary, &examples().hello);
    let mut server = Server::start_in(dir, &binary, &["--upgrade-timeout", "2000"]);
    let old = server.first_pid();

    let keep_alive = LoadClient::start(server.port(), Mode::KeepAlive);
    let close = LoadClient::start(server.port(), Mode::Close);

    // A new binary that exits at once.
    replace_with_script(&binary, "exit 1");
    fail_upgrade(&server, old, 1);

    // A new binary that never reports ready.
    replace_with_script(&binary, "exec sleep 600");
    fail_upgrade(&server, old, 2);

    // Let both clients make a few more requests after the second failure.
    let progressed = |client: &LoadClient| {
        let before = client.stats().successes;
        wait_until(TIMEOUT, || client.stats().successes > before + 10)
    };
    assert!(progressed(&keep_alive) && progressed(&close));

    keep_alive.stop().assert_all_served_by("keep-alive", old);
    close.stop().assert_all_served_by("close", old);
    assert_eq!(server.try_wait(), None, "the old process exited");
    assert_eq!(server.read_pid_file(), Some(old));

    // With the real binary back, the next upgrade succeeds.
    replace_with_copy(&binary, &examples().hello);
    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    assert_eq!(server.read_pid_file(), Some(new));
    let (status, body) = server.get("/").expect("GET /");
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!("hello from pid {new}, generation ")),
        "unexpected body {body:?}"
    );
}
