//! Unix domain sockets (`--bind unix:PATH`, for a reverse proxy on the same host): served
//! across upgrades without a single failed request, never unlinked by an old generation; a
//! stale socket file is replaced at start, a live one is an error.
//!
//! Not covered: `Endless::unix_socket_mode` (permission bits), which the example's command
//! line does not expose.

mod deploy_support;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use deploy_support::{unix_load, unix_pid, unix_request, Proc};
use integration::{
    examples, pid_alive, send_signal, wait_for, wait_until, Mode, Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;

const UPGRADES: usize = 3;

/// Whether `path` exists and is a socket file.
fn is_socket_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// `GET /pid` over the Unix socket until `pid` answers (the old generation may still accept
/// for a moment after the new one wrote the pid file).
fn wait_for_unix_pid(socket: &Path, pid: i32) {
    let mut last = Err(String::new());
    let answered = wait_until(TIMEOUT, || {
        last = unix_pid(socket);
        last == Ok(pid)
    });
    assert!(
        answered,
        "pid {pid} never answered on {}; last: {last:?}",
        socket.display()
    );
}

#[test]
fn unix_socket_is_served_across_upgrades_with_no_failed_request() {
    let dir = TempDir::new("deploy-unix");
    let socket = dir.join("app.sock");
    let bind = format!("unix:{}", socket.display());
    // `Server` adds `--bind 127.0.0.1:0`: the Unix socket is mixed with a TCP one.
    let mut server = Server::start_in(dir, &examples().hello, &["--bind", &bind, "--workers", "2"]);
    assert!(
        is_socket_file(&socket),
        "{} is not a socket file",
        socket.display()
    );
    let mut current = server.first_pid();
    wait_for_unix_pid(&socket, current);

    // Only Unix clients, so that each makes as many requests as it can around the upgrades
    // (TCP under load is `no_failed_request.rs`'s business); the TCP bind is probed below.
    let clients = [
        ("keep-alive", unix_load(&socket, Mode::KeepAlive)),
        ("close", unix_load(&socket, Mode::Close)),
    ];
    let served_by = |pid: i32| clients.iter().all(|(_, c)| c.stats().pids.contains(&pid));

    for upgrade in 1..=UPGRADES {
        assert!(
            wait_until(TIMEOUT, || served_by(current)),
            "before upgrade {upgrade}: not every client was answered by pid {current}"
        );
        send_signal(current, Signal::SIGHUP);
        let next = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != current))
            .unwrap_or_else(|| panic!("upgrade {upgrade}: the pid file still names {current}"));
        assert!(
            wait_until(TIMEOUT, || !pid_alive(current)),
            "upgrade {upgrade}: old pid {current} did not exit"
        );
        if upgrade == 1 {
            let status = server.wait_exit(TIMEOUT);
            assert!(status.success(), "first process exited with {status}");
        }
        // The old generation is gone and did not take the socket file with it.
        assert!(
            is_socket_file(&socket),
            "after upgrade {upgrade}: {} is gone",
            socket.display()
        );
        assert_eq!(
            unix_pid(&socket),
            Ok(next),
            "after upgrade {upgrade}: a new connection to the socket file"
        );
        assert_eq!(
            server.get("/pid").ok(),
            Some((200, next.to_string())),
            "after upgrade {upgrade}: the TCP bind"
        );
        current = next;
    }
    assert!(
        wait_until(TIMEOUT, || served_by(current)),
        "not every client was answered by the last pid {current}"
    );
    for (name, client) in clients {
        client
            .stop()
            .assert_across_upgrades(format!("unix {name}"), UPGRADES);
    }
}

#[test]
fn stale_socket_file_is_replaced_at_start() {
    let dir = TempDir::new("deploy-unix-stale");
    let socket = dir.join("app.sock");
    // A socket file whose server is gone: the file stays, connecting is refused. (Another
    // test thread forking at the moment of the bind can hold a copy of the listener until
    // its child execs, so wait for the refusal rather than expect it at once.)
    drop(UnixListener::bind(&socket).expect("bind the soon-stale socket"));
    assert!(is_socket_file(&socket));
    assert!(
        integration::wait_until(TIMEOUT, || {
            UnixStream::connect(&socket).map_err(|e| e.kind()).err()
                == Some(std::io::ErrorKind::ConnectionRefused)
        }),
        "the stale socket file should refuse connections"
    );

    let bind = format!("unix:{}", socket.display());
    let server = Server::start_in(dir, &examples().hello, &["--bind", &bind]);
    assert!(
        server.log_contains(&format!("replacing stale socket file {}", socket.display())),
        "no log line about the stale socket file"
    );
    let response = unix_request(&socket, "/").expect("GET / over the replaced socket");
    let pid = server.first_pid();
    assert_eq!(
        (response.status, response.body),
        (
            200,
            format!("hello from pid {pid}, generation 1, release v1\n")
        )
    );
}

#[test]
fn socket_permissions_are_configurable_and_survive_upgrades() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("deploy-unix-mode");
    let socket = dir.join("app.sock");
    let bind = format!("unix:{}", socket.display());
    let mode_of = |path: &Path| {
        std::fs::metadata(path)
            .expect("the socket file exists")
            .permissions()
            .mode()
            & 0o777
    };
    for (flag, expected) in [("600", 0o600), ("660", 0o660)] {
        let _ = std::fs::remove_file(&socket);
        let sub = TempDir::new("deploy-unix-mode-run");
        let server = Server::start_in(
            sub,
            &examples().hello,
            &["--bind", &bind, "--socket-mode", flag],
        );
        assert_eq!(mode_of(&socket), expected, "--socket-mode {flag}");
        let old = server.first_pid();
        integration::send_signal(old, nix::sys::signal::Signal::SIGHUP);
        let new = server.wait_for_new_pid(old, integration::TIMEOUT);
        wait_for_unix_pid(&socket, new);
        assert_eq!(mode_of(&socket), expected, "after an upgrade");
    }
}

/// Starts `hello` with `--bind unix:PATH --bind 127.0.0.1:0` where something already is at
/// `path`, and returns its guard once it has exited unsuccessfully.
fn start_must_fail(dir: TempDir, path: &Path) -> Proc {
    let mut command = Proc::command(&examples().hello, &dir);
    command
        .arg("--bind")
        .arg(format!("unix:{}", path.display()))
        .args(["--bind", "127.0.0.1:0", "--pid-file"])
        .arg(dir.join("pid"));
    let mut server = Proc::spawn(command, dir);
    let status = server.wait_exit(TIMEOUT);
    assert!(!status.success(), "the server started anyway");
    assert_eq!(server.read_pid_file(), None, "a pid file was written");
    server
}

#[test]
fn socket_path_of_a_live_server_is_an_error_at_start() {
    let dir = TempDir::new("deploy-unix-live");
    let socket = dir.join("app.sock");
    let live = UnixListener::bind(&socket).expect("bind the live socket");
    // Keep the guard (and so the directory) until the end.
    let server = start_must_fail(dir, &socket);
    let log = server.log();
    assert!(
        log.contains(&format!("cannot listen on unix:{}", socket.display()))
            && log.contains("another process is serving on this socket"),
        "the error should name the path and say it is in use:\n{log}"
    );
    // The live server keeps its socket file and still gets connections.
    assert!(is_socket_file(&socket), "the live socket file was removed");
    let _client = UnixStream::connect(&socket).expect("connect to the live socket");
    live.set_nonblocking(true).expect("O_NONBLOCK");
    let accepted = wait_for(Duration::from_secs(10), || live.accept().ok());
    assert!(accepted.is_some(), "the live socket no longer accepts");
}

#[test]
fn socket_path_holding_another_kind_of_file_is_an_error_at_start() {
    let dir = TempDir::new("deploy-unix-file");
    let path = dir.join("app.sock");
    std::fs::write(&path, "not a socket").expect("write a regular file");
    let server = start_must_fail(dir, &path);
    let log = server.log();
    assert!(
        log.contains("the path exists and is not a socket"),
        "the error should say the path is not a socket:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).ok().as_deref(),
        Some("not a socket"),
        "the file was removed or replaced"
    );
}
