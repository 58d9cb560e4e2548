//! sd_notify: what a `Type=notify` service with `NotifyAccess=all` tells systemd, read from a
//! notification socket the test binds, with each datagram's sender pid from the kernel.
//!
//! The sequence systemd needs for a reload by re-exec:
//!
//! | when | sender | message |
//! |---|---|---|
//! | serving | the first process | `MAINPID=<pid>`, `READY=1`, `STATUS=generation 1 serving on ...` |
//! | SIGHUP | the old process | `RELOADING=1`, `MONOTONIC_USEC=<now>`, `STATUS=upgrading ...` |
//! | new generation serves | the new process | `MAINPID=<new pid>`, `READY=1`, `STATUS=...` |
//! | failed upgrade | the old process | `READY=1`, `STATUS=upgrade failed: ...` |
//! | SIGTERM | the serving process | `STOPPING=1`, `STATUS=stopping ...` |
//!
//! The new process sends from a pid that is not the main pid yet, which systemd accepts only
//! with `NotifyAccess=all`; `MAINPID=` then makes it the main pid.

mod deploy_support;

use std::net::SocketAddr;
use std::time::Duration;

use deploy_support::{
    install_copy, install_script, monotonic_usec, socket_activate_tool, start_socket_activated,
    Notification, NotifySocket, Proc, SKIP_NO_SOCKET_ACTIVATE,
};
use integration::{examples, get, pid_alive, send_signal, wait_for, RawRequest, TempDir, TIMEOUT};
use nix::sys::signal::Signal;

/// Starts `program` with `NOTIFY_SOCKET` set for `socket`, and `extra` arguments.
fn start(program: &std::path::Path, dir: TempDir, socket: &NotifySocket, extra: &[&str]) -> Proc {
    let mut command = Proc::command(program, &dir);
    command
        .args(["--bind", "127.0.0.1:0", "--pid-file"])
        .arg(dir.join("pid"))
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .args(extra)
        .env("NOTIFY_SOCKET", socket.env_value());
    Proc::spawn(command, dir)
}

/// Asserts that `n` was sent by `pid` and holds exactly the lines `keys`, in order.
fn assert_message(n: &Notification, pid: i32, keys: &[&str]) {
    assert_eq!(n.pid, pid, "sent by pid {} instead of {pid}: {n:?}", n.pid);
    assert_eq!(n.keys(), keys, "unexpected lines: {n:?}");
}

/// Checks a `MAINPID=`, `READY=1`, `STATUS=generation G serving on ADDR` message from `pid`
/// and returns the TCP address named in the status.
fn assert_ready(n: &Notification, pid: i32, generation: u64) -> SocketAddr {
    assert_message(n, pid, &["MAINPID", "READY", "STATUS"]);
    assert_eq!(n.get("MAINPID"), Some(pid.to_string().as_str()));
    assert_eq!(n.get("READY"), Some("1"));
    let status = n.get("STATUS").unwrap_or_default();
    let prefix = format!("generation {generation} serving on ");
    status
        .strip_prefix(&prefix)
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("STATUS={status:?} is not `{prefix}<addr>`"))
}

/// Sends SIGHUP to `pid` and checks the `RELOADING=1` message it answers with: from `pid`,
/// with a `MONOTONIC_USEC` taken between the signal and its receipt, as systemd requires, and
/// `STATUS=upgrading to generation {next_generation}`.
fn sighup_and_expect_reloading(socket: &NotifySocket, pid: i32, next_generation: u64) {
    let status = format!("upgrading to generation {next_generation}");
    sighup_and_expect_reloading_status(socket, pid, &status);
}

/// [`sighup_and_expect_reloading`] with any `STATUS=`.
fn sighup_and_expect_reloading_status(socket: &NotifySocket, pid: i32, status: &str) {
    let before = monotonic_usec();
    send_signal(pid, Signal::SIGHUP);
    let reloading = socket.expect(TIMEOUT, "RELOADING=1 after SIGHUP");
    let after = monotonic_usec();
    assert_message(&reloading, pid, &["RELOADING", "MONOTONIC_USEC", "STATUS"]);
    assert_eq!(reloading.get("RELOADING"), Some("1"));
    let usec: u64 = reloading
        .get("MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC is not a number: {reloading:?}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not between {before} and {after} (CLOCK_MONOTONIC, µs)"
    );
    assert_eq!(reloading.get("STATUS"), Some(status));
}

/// `GET /pid` on `port` until `pid` answers.
fn wait_for_pid_on(port: u16, pid: i32) {
    let answered = wait_for(TIMEOUT, || match get(port, "/pid") {
        Ok((200, body)) if body == pid.to_string() => Some(()),
        _ => None,
    });
    assert!(
        answered.is_some(),
        "pid {pid} never answered on port {port}"
    );
}

/// Asserts that no notification is left in the queue.
fn assert_no_more(socket: &NotifySocket, when: &str) {
    if let Some(extra) = socket.try_recv() {
        panic!("unexpected sd_notify message {when}: {extra:?}");
    }
}

/// The whole life of a service: start, reload by SIGHUP, stop by SIGTERM.
fn lifecycle(dir: TempDir, socket: NotifySocket) {
    let mut server = start(&examples().hello, dir, &socket, &[]);
    let first = server.pid();

    let ready = socket.expect(TIMEOUT, "READY=1 at start");
    let addr = assert_ready(&ready, first, 1);
    // READY=1 means serving: the very first request, without retry, succeeds.
    assert_eq!(
        get(addr.port(), "/pid").expect("GET /pid right after READY=1"),
        (200, first.to_string())
    );
    reload_and_stop(&mut server, &socket, addr);
}

/// From a first generation that serves on `addr` and has said READY=1: SIGHUP, then SIGTERM
/// to the new generation, checking every message systemd would get.
fn reload_and_stop(server: &mut Proc, socket: &NotifySocket, addr: SocketAddr) {
    let first = server.pid();
    sighup_and_expect_reloading(socket, first, 2);
    let ready = socket.expect(TIMEOUT, "READY=1 from the new generation");
    let second = ready.pid;
    assert_ne!(
        second, first,
        "READY=1 after the upgrade came from the old process"
    );
    assert_eq!(assert_ready(&ready, second, 2), addr);
    wait_for_pid_on(addr.port(), second);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "the old process exited with {status}");
    // Datagrams are queued when sent: whatever the old process sent is here by now. It must
    // not have said STOPPING=1 (systemd would take the whole service for stopping).
    assert_no_more(socket, "from the old process during its drain");

    send_signal(second, Signal::SIGTERM);
    let stopping = socket.expect(TIMEOUT, "STOPPING=1 after SIGTERM");
    assert_message(&stopping, second, &["STOPPING", "STATUS"]);
    assert_eq!(stopping.get("STOPPING"), Some("1"));
    assert!(
        wait_for(TIMEOUT, || (!pid_alive(second)).then_some(())).is_some(),
        "pid {second} did not exit after SIGTERM"
    );
    assert_no_more(socket, "after the exit");
}

#[test]
fn notify_socket_path_gets_ready_reloading_mainpid_and_stopping() {
    let dir = TempDir::new("deploy-notify");
    let socket = NotifySocket::bind_path(&dir.join("notify.sock"));
    lifecycle(dir, socket);
}

#[test]
fn notify_socket_in_the_abstract_namespace_works_too() {
    let dir = TempDir::new("deploy-notify-abstract");
    // The directory name is unique (pid, counter, time): so is an abstract name built on it.
    let name = dir
        .path()
        .file_name()
        .expect("a directory name")
        .to_string_lossy()
        .into_owned();
    let socket = NotifySocket::bind_abstract(&name);
    assert!(socket.env_value().starts_with('@'));
    lifecycle(dir, socket);
}

#[test]
fn failed_upgrades_report_ready_again_with_the_failure() {
    let dir = TempDir::new("deploy-notify-failed");
    let binary = dir.join("hello");
    install_copy(&binary, &examples().hello);
    let socket = NotifySocket::bind_path(&dir.join("notify.sock"));
    let server = start(&binary, dir, &socket, &["--upgrade-timeout", "2000"]);
    let first = server.pid();
    let addr = assert_ready(&socket.expect(TIMEOUT, "READY=1 at start"), first, 1);

    // A new binary that exits at once, then one that never reports ready. Each time the old
    // process must end the reload with READY=1 (systemd would otherwise wait in "reloading"
    // until its timeout) and say why in STATUS.
    for (script, why) in [
        ("exit 1", "before it reported ready"),
        ("exec sleep 600", "did not report ready within 2s"),
    ] {
        install_script(&binary, script);
        sighup_and_expect_reloading(&socket, first, 2);
        let ready = socket.expect(TIMEOUT, "READY=1 after the failed upgrade");
        assert_eq!(ready.pid, first, "{ready:?}");
        assert_eq!(ready.get("READY"), Some("1"), "{ready:?}");
        if let Some(mainpid) = ready.get("MAINPID") {
            assert_eq!(mainpid, first.to_string(), "{ready:?}");
        }
        let status = ready.get("STATUS").unwrap_or_default();
        assert!(
            status.starts_with("upgrade failed: ")
                && status.contains(why)
                && status.ends_with("generation 1 serving"),
            "STATUS={status:?} should say the upgrade failed ({why}) and generation 1 serves"
        );
        assert_eq!(
            get(addr.port(), "/pid").expect("GET /pid after the failed upgrade"),
            (200, first.to_string())
        );
    }

    // With the real binary back, the next reload succeeds as usual.
    install_copy(&binary, &examples().hello);
    sighup_and_expect_reloading(&socket, first, 2);
    let ready = socket.expect(TIMEOUT, "READY=1 from the new generation");
    assert_ne!(ready.pid, first);
    assert_eq!(assert_ready(&ready, ready.pid, 2), addr);
    wait_for_pid_on(addr.port(), ready.pid);
    drop(server);
}

#[test]
fn old_process_takes_back_mainpid_when_the_new_one_dies_during_the_drain() {
    let dir = TempDir::new("deploy-notify-take-back");
    let socket = NotifySocket::bind_path(&dir.join("notify.sock"));
    let server = start(&examples().hello, dir, &socket, &[]);
    let first = server.pid();
    let addr = assert_ready(&socket.expect(TIMEOUT, "READY=1 at start"), first, 1);

    // A long request keeps the old process draining after the hand-over.
    let request = RawRequest::send(addr.port(), "/sleep/60000");
    assert!(
        request.wait_accepted_by(first, TIMEOUT),
        "the first process did not accept the long request"
    );
    sighup_and_expect_reloading(&socket, first, 2);
    let ready = socket.expect(TIMEOUT, "READY=1 from the new generation");
    let second = ready.pid;
    assert_ready(&ready, second, 2);

    send_signal(second, Signal::SIGKILL);
    let back = socket.expect(
        Duration::from_secs(10),
        "MAINPID=<old pid> after the new generation died",
    );
    assert_message(&back, first, &["MAINPID", "READY", "STATUS"]);
    assert_eq!(back.get("MAINPID"), Some(first.to_string().as_str()));
    assert_eq!(
        back.get("STATUS"),
        Some("generation 1 serving again: generation 2 died")
    );
    wait_for_pid_on(addr.port(), first);
    drop(request);
    drop(server);
}

/// `systemctl stop` with the default `KillMode=control-group` sends SIGTERM to every process
/// of the service at once, including an old generation still draining after a reload: the old
/// one must finish its in-flight request, the new one drains and says `STOPPING=1`, and both
/// exit successfully.
#[test]
fn sigterm_to_the_whole_control_group_during_a_drain() {
    let dir = TempDir::new("deploy-notify-cgroup-stop");
    let socket = NotifySocket::bind_path(&dir.join("notify.sock"));
    let mut server = start(&examples().hello, dir, &socket, &[]);
    let first = server.pid();
    let addr = assert_ready(&socket.expect(TIMEOUT, "READY=1 at start"), first, 1);

    let request = RawRequest::send(addr.port(), "/sleep/3000");
    assert!(
        request.wait_accepted_by(first, TIMEOUT),
        "the first process did not accept the request"
    );
    let response = request.spawn_response();
    sighup_and_expect_reloading(&socket, first, 2);
    let ready = socket.expect(TIMEOUT, "READY=1 from the new generation");
    let second = ready.pid;
    assert_ready(&ready, second, 2);
    assert!(
        server.wait_for_log("stopped accepting; draining 1 connection", 1, TIMEOUT),
        "the old process did not start draining its request"
    );

    send_signal(first, Signal::SIGTERM);
    send_signal(second, Signal::SIGTERM);
    let response = response
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("the in-flight request failed: {e}"));
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept 3000 ms in pid {first}\n"))
    );
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "the old process exited with {status}");
    let stopping = socket.expect(TIMEOUT, "STOPPING=1 from the new generation");
    assert_message(&stopping, second, &["STOPPING", "STATUS"]);
    assert!(
        wait_for(TIMEOUT, || (!pid_alive(second)).then_some(())).is_some(),
        "pid {second} did not exit after SIGTERM"
    );
    assert_no_more(&socket, "after both exits");
}

/// Stable-pid mode: the master alone talks to systemd, always with its own pid, so even the
/// default `NotifyAccess=main` would do; workers never notify.
#[test]
fn master_mode_notifies_from_the_master_only() {
    let dir = TempDir::new("deploy-notify-master");
    let socket = NotifySocket::bind_path(&dir.join("notify.sock"));
    let mut server = start(&examples().hello, dir, &socket, &["--master"]);
    let master = server.pid();
    let serving = |n: &Notification, generation: u64| -> i32 {
        assert_message(n, master, &["MAINPID", "READY", "STATUS"]);
        assert_eq!(n.get("MAINPID"), Some(master.to_string().as_str()));
        assert_eq!(n.get("READY"), Some("1"));
        let status = n.get("STATUS").unwrap_or_default();
        let prefix = format!("worker generation {generation} (pid ");
        status
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(") serving")?.parse().ok())
            .unwrap_or_else(|| panic!("STATUS={status:?} is not `{prefix}<pid>) serving`"))
    };

    let first = serving(&socket.expect(TIMEOUT, "READY=1 at start"), 1);
    let port = server.wait_until_serving(master, TIMEOUT)[0].port();
    wait_for_pid_on(port, first);

    sighup_and_expect_reloading_status(&socket, master, "starting a new worker");
    let second = serving(&socket.expect(TIMEOUT, "READY=1 for the new worker"), 2);
    assert_ne!(second, first);
    wait_for_pid_on(port, second);
    assert!(
        wait_for(TIMEOUT, || (!pid_alive(first)).then_some(())).is_some(),
        "the old worker {first} did not exit"
    );
    assert_no_more(&socket, "during the worker change");

    send_signal(master, Signal::SIGTERM);
    let stopping = socket.expect(TIMEOUT, "STOPPING=1 after SIGTERM");
    assert_message(&stopping, master, &["STOPPING", "STATUS"]);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "the master exited with {status}");
    assert_no_more(&socket, "after the exit");
}

/// What `examples/systemd/hello.socket` and `hello.service` make systemd do, without systemd
/// as PID 1: `systemd-socket-activate` holds the socket and passes it with the
/// `FileDescriptorName=` of the unit, the server notifies `NOTIFY_SOCKET`, is reloaded by
/// SIGHUP and stopped by SIGTERM.
#[test]
fn socket_activated_notify_service_as_the_example_units_run_it() {
    let Some(tool) = socket_activate_tool() else {
        eprintln!("{SKIP_NO_SOCKET_ACTIVATE}");
        return;
    };
    let notify_dir = TempDir::new("deploy-notify-units");
    let socket = NotifySocket::bind_path(&notify_dir.join("notify.sock"));
    let (mut server, addr) =
        start_socket_activated(&tool, true, &[("NOTIFY_SOCKET", socket.env_value())]);
    let first = server.pid();
    // The first connection makes the tool exec the server, which answers it.
    assert_eq!(
        get(addr.port(), "/pid").expect("the first request"),
        (200, first.to_string())
    );
    let ready = socket.expect(TIMEOUT, "READY=1 at start");
    assert_eq!(assert_ready(&ready, first, 1), addr);
    assert!(server.wait_for_log("inherited 1 listening socket", 1, TIMEOUT));
    reload_and_stop(&mut server, &socket, addr);
    assert_eq!(
        server.log().matches("inherited 1 listening socket").count(),
        2,
        "both generations must have inherited the socket"
    );
}
