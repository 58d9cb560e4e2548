//! The development loop actix-web's documentation recommends:
//! `systemfd --no-pid -s http::8080 -- cargo watch -x run`. `systemfd` binds the socket once
//! and passes it at fd 3 with `LISTEN_FDS=1` but, because of `--no-pid`, without `LISTEN_PID`
//! (the process `cargo watch` runs cannot be known in advance). systemd's protocol says such
//! descriptors belong to nobody, so the library ignores them unless told to adopt them
//! (`Endless::adopt_unclaimed_fds()`, in the examples `--adopt-unclaimed-fds` or
//! `ENDLESS_ADOPT_UNCLAIMED_FDS=1`); without the opt-in it binds the address itself, which the
//! passed socket holds, and the start-up error says why and how to opt in.
//!
//! Two peers pass the socket:
//!
//! - the real `systemfd` (crates.io; `make integration` installs it with `cargo install`),
//!   skipped with a `SKIP` message when it is not installed;
//! - the test itself, exactly as `systemfd --no-pid` does: the socket at fd 3,
//!   `LISTEN_FDS=1`, no `LISTEN_PID`; this runs everywhere.
//!
//! `systemfd` execs the command in its own process (on Unix), so the server's pid is the pid
//! the test started; the [`Proc`] guard kills that pid and every process whose command line
//! holds the test's directory, whatever happens.

mod deploy_support;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use deploy_support::{holds_socket, pass_fds, socket_inode, socket_inode_of, tcp_listeners, Proc};
use integration::{examples, get, port_closed, send_signal, wait_for, TempDir, TIMEOUT};
use nix::sys::signal::Signal;

/// How long a server that must refuse to start may take to exit.
const FAILS_WITHIN: Duration = Duration::from_secs(10);

/// The variable of the examples' opt-in.
const OPT_IN_VAR: &str = "ENDLESS_ADOPT_UNCLAIMED_FDS";

/// What the library logs when it adopts passed sockets.
const INHERITED: &str = "inherited 1 listening socket";

/// What the library says about descriptors passed without `LISTEN_PID` and not adopted.
const IGNORED: &str = "LISTEN_FDS=1 was passed without LISTEN_PID";

/// `systemfd` from `PATH`, `$CARGO_HOME/bin` or `~/.cargo/bin` (where `cargo install` puts
/// it), if installed.
fn systemfd_tool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from);
    let home_cargo = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo"));
    std::env::split_paths(&path)
        .chain(
            cargo_home
                .into_iter()
                .chain(home_cargo)
                .map(|d| d.join("bin")),
        )
        .map(|dir| dir.join("systemfd"))
        .find(|candidate| candidate.is_file())
}

const SKIP_NO_SYSTEMFD: &str =
    "SKIP: systemfd is not installed (`cargo install systemfd --locked`, \
     which `make integration` tries); the hand-passed descriptor tests still run";

/// A port that was free a moment ago: `systemfd` needs a fixed port (it binds `-s ADDR`
/// itself, and the server must be told the same address), so callers retry on a collision.
fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    probe.local_addr().expect("local address").port()
}

/// Runs `systemfd --no-pid -s http::127.0.0.1:PORT -- hello --bind 127.0.0.1:PORT ...` (with
/// `--adopt-unclaimed-fds` when `adopt`), and returns once `systemfd` has bound the socket
/// and handed over to the server; retries with another port if the one picked was taken in
/// the meantime.
fn start_systemfd(tool: &std::path::Path, adopt: bool) -> (Proc, SocketAddr) {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new("dev-loop-systemfd");
        let mut command = Proc::command(tool, &dir);
        command
            .args(["--color", "never", "--no-pid", "-s"])
            .arg(format!("http::{addr}"))
            .arg("--")
            .arg(&examples().hello)
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--pid-file")
            .arg(dir.join("pid"))
            .arg("--addr-file")
            .arg(dir.join("addr"))
            .env_remove(OPT_IN_VAR);
        if adopt {
            command.arg("--adopt-unclaimed-fds");
        }
        let mut server = Proc::spawn(command, dir);
        // systemfd logs `~> socket http://ADDR/ -> fd #3` once bound, then execs the server.
        let bound = format!("socket http://{addr}/ -> fd #");
        let up = wait_for(TIMEOUT, || {
            if server.log().contains(&bound) {
                Some(true)
            } else {
                server.try_wait().map(|_| false)
            }
        });
        match up {
            Some(true) => return (server, addr),
            Some(false) if server.log().contains("in use") => continue,
            _ => panic!("systemfd did not bind {addr}:\n{}", server.log()),
        }
    }
    panic!("no free port after {ATTEMPTS} attempts");
}

/// Starts `hello --bind ADDR` with `listener` at fd 3, `LISTEN_FDS=1` and no `LISTEN_PID`, as
/// `systemfd --no-pid` does; `env` is added to its environment.
fn start_hand_passed(listener: &TcpListener, env: &[(&str, &str)]) -> Proc {
    let addr = listener.local_addr().expect("local address");
    let dir = TempDir::new("dev-loop-hand-passed");
    let mut command = Proc::command(&examples().hello, &dir);
    command
        .arg("--bind")
        .arg(addr.to_string())
        .arg("--pid-file")
        .arg(dir.join("pid"))
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .env_remove(OPT_IN_VAR)
        .env("LISTEN_FDS", "1");
    command.envs(env.iter().copied());
    let sources = pass_fds(&mut command, &[listener.as_fd()]);
    let server = Proc::spawn(command, dir);
    drop(sources);
    server
}

/// `GET /pid` on `port`, retried until it answers.
fn pid_on(port: u16) -> i32 {
    let mut last = None;
    wait_for(TIMEOUT, || match get(port, "/pid") {
        Ok((200, body)) => body.parse().ok(),
        other => {
            last = Some(format!("{other:?}"));
            None
        }
    })
    .unwrap_or_else(|| panic!("GET /pid on port {port} never answered; last: {last:?}"))
}

/// Asserts that `server` (pid `pid`) serves `addr` on the socket at its fd 3, which is the
/// only socket listening on that port (the passed one, not a new bind), and answers there.
fn assert_serves_on_fd_3(server: &mut Proc, pid: i32, addr: SocketAddr) -> u64 {
    assert_eq!(server.wait_until_serving(pid, TIMEOUT), vec![addr]);
    assert_eq!(
        server.log_count(INHERITED),
        1,
        "no `{INHERITED}` log line: the passed socket was not adopted"
    );
    assert!(
        !server.log().contains(IGNORED),
        "the opt-in was given, yet the library says it ignored the socket"
    );
    let listeners = tcp_listeners(addr.port());
    assert_eq!(
        listeners.len(),
        1,
        "exactly one socket must listen on {addr}: {listeners:?}"
    );
    assert_eq!(
        socket_inode_of(pid, 3),
        Some(listeners[0]),
        "the socket listening on {addr} is not the one passed at fd 3 of pid {pid}"
    );
    assert_eq!(
        get(addr.port(), "/").expect("GET /"),
        (
            200,
            format!("hello from pid {pid}, generation 1, release v1\n")
        )
    );
    listeners[0]
}

/// Waits for `server` to refuse to start and checks the advice in its error.
fn assert_fails_with_advice(server: &mut Proc) {
    let started = Instant::now();
    let status: ExitStatus = server.wait_exit(FAILS_WITHIN);
    assert!(
        !status.success(),
        "the server started (and exited with {status}) although the descriptor was not adopted"
    );
    let log = server.log();
    let error = log
        .lines()
        .find(|line| line.contains("ERROR") && line.contains(IGNORED))
        .unwrap_or_else(|| {
            panic!(
                "no ERROR line saying `{IGNORED}` after {:?}:\n{log}",
                started.elapsed()
            )
        });
    for advice in [OPT_IN_VAR, "adopt_unclaimed_fds"] {
        assert!(
            error.contains(advice),
            "the error does not name `{advice}`: {error}"
        );
    }
}

/// SIGTERMs `pid` and checks that the process the test started exits successfully.
fn stop(server: &mut Proc, pid: i32, port: u16) {
    send_signal(pid, Signal::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "exited with {status} after SIGTERM");
    assert!(port_closed(port), "port {port} still open after the exit");
}

#[test]
fn systemfd_no_pid_socket_is_served_with_the_opt_in() {
    let Some(tool) = systemfd_tool() else {
        eprintln!("{SKIP_NO_SYSTEMFD}");
        return;
    };
    let (mut server, addr) = start_systemfd(&tool, true);
    let pid = server.pid();
    assert_serves_on_fd_3(&mut server, pid, addr);
    stop(&mut server, pid, addr.port());
}

#[test]
fn systemfd_no_pid_socket_without_the_opt_in_fails_with_advice() {
    let Some(tool) = systemfd_tool() else {
        eprintln!("{SKIP_NO_SYSTEMFD}");
        return;
    };
    let (mut server, _addr) = start_systemfd(&tool, false);
    assert_fails_with_advice(&mut server);
}

#[test]
fn hand_passed_fd_without_listen_pid_is_served_with_the_opt_in() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let inode = socket_inode(listener.as_fd());
    // The environment variable this time; the systemfd test uses the flag.
    let mut server = start_hand_passed(&listener, &[(OPT_IN_VAR, "1")]);
    let pid = server.pid();
    assert_eq!(assert_serves_on_fd_3(&mut server, pid, addr), inode);

    // The test closes its own copy: the server's is all that is left, and still serves.
    drop(listener);
    assert_eq!(
        pid_on(addr.port()),
        pid,
        "not served after the test closed its copy"
    );

    // The adopted socket is handed on at SIGHUP like any other (with LISTEN_PID this time).
    send_signal(pid, Signal::SIGHUP);
    let new = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != pid))
        .unwrap_or_else(|| panic!("the pid file still names {pid} after SIGHUP"));
    let status = server.wait_exit(TIMEOUT);
    assert!(
        status.success(),
        "the first generation exited with {status}"
    );
    assert_eq!(
        pid_on(addr.port()),
        new,
        "the new generation does not answer"
    );
    assert_eq!(
        tcp_listeners(addr.port()),
        vec![inode],
        "a new socket was bound"
    );
    assert!(
        holds_socket(new, inode),
        "pid {new} does not hold the socket"
    );
    send_signal(new, Signal::SIGTERM);
    assert!(
        wait_for(TIMEOUT, || port_closed(addr.port()).then_some(())).is_some(),
        "port {} still open after SIGTERM to {new}",
        addr.port()
    );
}

#[test]
fn hand_passed_fd_without_listen_pid_and_without_the_opt_in_fails_with_advice() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let mut server = start_hand_passed(&listener, &[]);
    assert_fails_with_advice(&mut server);
    // The passed socket was left alone: the test's copy still listens, and nothing else does.
    let addr = listener.local_addr().expect("local address");
    assert_eq!(
        tcp_listeners(addr.port()),
        vec![socket_inode(listener.as_fd())]
    );
}
