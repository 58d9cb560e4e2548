//! Stable-pid mode (`hello --master`): the master keeps its pid and the sockets while worker
//! generations come and go.

use integration::{
    children_of, examples, get, pid_alive, port_closed, process_state, send_signal, wait_for,
    wait_until, LoadClient, Mode, Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;
use std::process::{Child, Command, Stdio};

const UPGRADES: usize = 5;

/// The pid the master's workers answer `GET /pid` with, once it differs from `old`.
fn next_worker(server: &Server, old: i32) -> i32 {
    server.wait_for_new_pid(old, TIMEOUT)
}

#[test]
fn master_keeps_its_pid_across_upgrades_under_load() {
    let server = Server::start(&examples().hello, &["--master", "--workers", "2"]);
    let master = server.first_pid();
    assert_eq!(
        server.read_pid_file(),
        Some(master),
        "the pid file names the master"
    );
    let mut worker = server.get_pid().expect("a worker answers");
    assert_ne!(worker, master, "the master itself serves no request");
    assert_eq!(
        children_of(master)
            .iter()
            .filter(|(pid, _)| *pid == worker)
            .count(),
        1,
        "the serving process is the master's child"
    );

    let clients = [
        LoadClient::start(server.port(), Mode::KeepAlive),
        LoadClient::start(server.port(), Mode::Close),
    ];
    for upgrade in 1..=UPGRADES {
        send_signal(master, Signal::SIGHUP);
        let next = next_worker(&server, worker);
        assert!(
            wait_until(TIMEOUT, || !pid_alive(worker)),
            "upgrade {upgrade}: old worker {worker} did not exit"
        );
        assert!(pid_alive(master), "upgrade {upgrade}: the master is gone");
        assert_eq!(server.read_pid_file(), Some(master), "upgrade {upgrade}");
        worker = next;
    }
    for client in &clients {
        assert!(
            wait_until(TIMEOUT, || client.stats().pids.contains(&worker)),
            "the last worker never answered a load client"
        );
    }
    for (name, client) in ["keep-alive", "close"].into_iter().zip(clients) {
        let stats = client.stop();
        stats.assert_across_upgrades(name, UPGRADES);
        assert!(
            !stats.pids.contains(&master),
            "the master answered a request"
        );
    }
    assert_eq!(
        server.log_count("upgrading: starting generation"),
        0,
        "workers must not re-exec themselves"
    );
}

#[test]
fn killed_worker_is_replaced_and_term_ends_everything() {
    let mut server = Server::start(&examples().hello, &["--master"]);
    let master = server.first_pid();
    let worker = server.get_pid().expect("a worker answers");
    send_signal(worker, Signal::SIGKILL);
    let replacement = next_worker(&server, worker);
    assert!(server.log_contains("died unexpectedly"), "{}", server.log());
    assert_eq!(server.read_pid_file(), Some(master));
    assert_ne!(
        process_state(worker),
        Some('Z'),
        "the killed worker was not reaped"
    );

    // A SIGHUP sent straight to a worker is forwarded to the master: an upgrade, same master.
    send_signal(replacement, Signal::SIGHUP);
    let upgraded = next_worker(&server, replacement);
    assert!(wait_until(TIMEOUT, || !pid_alive(replacement)));
    assert!(server.log_contains("forwarded to master"));

    send_signal(master, Signal::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "master exited with {status}");
    assert!(
        wait_until(TIMEOUT, || !pid_alive(upgraded)),
        "worker {upgraded} outlived the master"
    );
    assert!(port_closed(server.port()), "the port is still open");
    assert!(!server.pid_file().exists(), "the master left its pid file");
}

/// A process started in a new pid namespace, where the master is PID 1, as in a container.
struct Namespace {
    unshare: Child,
    dir: TempDir,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Killing the namespace's PID 1 kills everything in it.
        for (pid, _) in children_of(self.unshare.id() as i32) {
            send_signal(pid, Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            eprintln!("--- server log ---\n{log}");
        }
    }
}

#[test]
fn master_as_pid_1_reaps_orphans_and_forwards_sigterm() {
    let dir = TempDir::new("master-pid1");
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let spawned = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(&examples().hello)
        .args(["--master", "--bind", "127.0.0.1:0", "--addr-file"])
        .arg(dir.join("addr"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn();
    let unshare = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("SKIP: cannot run unshare to make a pid namespace: {e}");
            return;
        }
    };
    let ns = Namespace { unshare, dir };
    let unshare_pid = ns.unshare.id() as i32;
    let Some(master) = wait_for(TIMEOUT, || children_of(unshare_pid).first().map(|c| c.0)) else {
        eprintln!("SKIP: unshare did not start a child (no pid namespaces here?)");
        return;
    };
    let port: u16 = wait_for(TIMEOUT, || {
        std::fs::read_to_string(ns.dir.join("addr"))
            .ok()
            .and_then(|s| s.lines().next()?.rsplit(':').next()?.parse().ok())
    })
    .expect("the server never wrote its address");
    let log = || std::fs::read_to_string(ns.dir.join("server.log")).unwrap_or_default();
    assert!(
        log().contains("master pid 1:"),
        "the master is not PID 1:\n{}",
        log()
    );
    let (status, _) = get(port, "/").expect("the worker answers");
    assert_eq!(status, 200);

    // An orphan inside the namespace is reparented to the master, which must reap it. The
    // orphan's stdio is detached so that `output()` returns when the shell exits, while the
    // orphan still lives (the master reaps on a 20 ms tick, so an exited orphan is gone
    // almost at once and cannot be observed as a child).
    let orphan_maker = Command::new("nsenter")
        .args(["--target", &master.to_string(), "--pid", "--"])
        .args([
            "/bin/sh",
            "-c",
            "sleep 3 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .output();
    match orphan_maker {
        Ok(out) if out.status.success() => {
            let orphan_ppid_is_master = wait_until(TIMEOUT, || {
                children_of(master).iter().any(|(pid, _)| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
            });
            assert!(
                orphan_ppid_is_master,
                "the orphan was not reparented to the master"
            );
            assert!(
                wait_until(TIMEOUT, || !children_of(master).iter().any(
                    |(pid, state)| {
                        *state == 'Z'
                            || std::fs::read_to_string(format!("/proc/{pid}/comm"))
                                .is_ok_and(|c| c.trim() == "sleep")
                    }
                )),
                "the orphan was not reaped: {:?}",
                children_of(master)
            );
        }
        other => eprintln!("note: nsenter unavailable, orphan reaping not exercised: {other:?}"),
    }

    // SIGTERM to PID 1 (from outside, as a container runtime does) drains the worker and ends.
    send_signal(master, Signal::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || !pid_alive(master)),
        "the master did not exit on SIGTERM:\n{}",
        log()
    );
    assert!(
        log().contains("graceful stop: draining the workers"),
        "{}",
        log()
    );
    assert!(port_closed(port));
}

#[test]
fn master_forwards_user_signals_and_sigusr2_forces_the_close() {
    let mut server = Server::start(&examples().hello, &["--master"]);
    let master = server.first_pid();
    let worker = server.get_pid().expect("a worker answers");
    for (signal, name) in [(Signal::SIGUSR1, "SIGUSR1"), (Signal::SIGTSTP, "SIGTSTP")] {
        send_signal(master, signal);
        for pid in [master, worker] {
            for stage in ["pre", "post"] {
                let line = format!("hook: {stage} {name} pid={pid} ");
                assert!(
                    server.wait_for_log(&line, 1, TIMEOUT),
                    "no `{line}` in the log: {name} was not handled by pid {pid}"
                );
            }
        }
        assert_ne!(
            process_state(master),
            Some('T'),
            "{name} stopped the master"
        );
        assert_ne!(
            process_state(worker),
            Some('T'),
            "{name} stopped the worker"
        );
        assert_eq!(server.get_pid(), Ok(worker), "the same worker serves on");
    }

    // A request the worker holds for 20 s; SIGUSR2 to the master closes it now.
    let slow = integration::RawRequest::send(server.port(), "/sleep/20000");
    assert!(
        slow.wait_accepted_by(worker, TIMEOUT),
        "the worker never took the request"
    );
    let sent = std::time::Instant::now();
    send_signal(master, Signal::SIGUSR2);
    server.wait_exit(TIMEOUT);
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(10),
        "SIGUSR2 did not force the close: the master took {:?}",
        sent.elapsed()
    );
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker)),
        "the worker survived"
    );
    assert!(
        slow.response().is_err(),
        "the held request was answered, not cut"
    );
}
