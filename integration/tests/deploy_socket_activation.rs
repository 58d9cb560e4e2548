//! systemd socket activation: a process started with `LISTEN_FDS` serves on the sockets it
//! was handed, binds none of its own, and hands them on to the next generation at SIGHUP.
//!
//! Two kinds of peer start the server:
//!
//! - the test itself, exactly as systemd does: it binds the listening socket, places it at
//!   fd 3 with `dup2` between fork and exec (which also clears close-on-exec), and runs the
//!   server through `/bin/sh -c 'export LISTEN_PID=$$; exec "$0" "$@"'`, so that `LISTEN_PID`
//!   is the pid the server will have;
//! - `systemd-socket-activate` from Debian's `systemd` package, the real implementation of the
//!   protocol outside of PID 1 (skipped, with a message, when the tool is not installed).
//!
//! Socket names: the library names a TCP bind `tcp-<addr>` with `:` replaced by `_`
//! (`tcp-127.0.0.1_8080`), matches inherited sockets by `LISTEN_FDNAMES` first and falls back to
//! their position among the unmatched ones.

mod deploy_support;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use deploy_support::{
    fd_name, holds_socket, socket_activate_tool, socket_inode, start_socket_activated,
    tcp_listeners, Proc, SKIP_NO_SOCKET_ACTIVATE,
};
use integration::{examples, get, port_closed, send_signal, wait_for, TempDir, TIMEOUT};
use nix::sys::signal::Signal;

/// What the library logs when it adopts passed sockets (followed by `(s) from ...`).
fn inherited_log(count: usize) -> String {
    format!("inherited {count} listening socket")
}

/// The shell wrapper systemd's protocol needs when a test, not systemd, passes the sockets:
/// `LISTEN_PID` must be the server's pid, known only after fork; `exec` keeps it.
const SET_LISTEN_PID: &str = r#"export LISTEN_PID=$$; exec "$0" "$@""#;

/// A listening socket the test hands over, with the inode that identifies it system-wide.
struct Passed {
    listener: TcpListener,
    addr: SocketAddr,
    inode: u64,
}

impl Passed {
    fn bind() -> Passed {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let inode = socket_inode(listener.as_fd());
        Passed {
            listener,
            addr,
            inode,
        }
    }
}

/// Starts `hello` with `binds` as its `--bind` flags (then `extra`) and `passed` at fds 3,
/// 4, ... through the `LISTEN_PID` shell wrapper, with `LISTEN_FDS` and, when given,
/// `LISTEN_FDNAMES`.
fn start_with_passed_fds(
    passed: &[&Passed],
    names: Option<&str>,
    binds: &[SocketAddr],
    extra: &[&str],
) -> Proc {
    let dir = TempDir::new("deploy-listen-fds");
    let mut command = Proc::command("/bin/sh", &dir);
    command
        .arg("-c")
        .arg(SET_LISTEN_PID)
        .arg(&examples().hello)
        .arg("--pid-file")
        .arg(dir.join("pid"))
        .arg("--addr-file")
        .arg(dir.join("addr"));
    for bind in binds {
        command.arg("--bind").arg(bind.to_string());
    }
    command.args(extra);
    command.env("LISTEN_FDS", passed.len().to_string());
    if let Some(names) = names {
        command.env("LISTEN_FDNAMES", names);
    }
    let count = RawFd::try_from(passed.len()).expect("a few fds");
    // Copies numbered above the target range, so no dup2 below overwrites a source that a
    // later one still needs (the listeners themselves may well be fds 3 and 4). They are
    // close-on-exec; the dup2'ed copies are not.
    let sources: Vec<OwnedFd> = passed
        .iter()
        .map(|p| {
            // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new descriptor (or -1),
            // which nothing else owns.
            let fd =
                unsafe { libc::fcntl(p.listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3 + count) };
            assert!(
                fd >= 0,
                "F_DUPFD_CLOEXEC: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` was just returned by fcntl and is owned by nobody else.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    let raw: Vec<RawFd> = sources.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs between fork and exec and only calls dup2, which is
    // async-signal-safe; it allocates nothing and reads `raw`, allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            for (target, &source) in (3..).zip(&raw) {
                if libc::dup2(source, target) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let proc = Proc::spawn(command, dir);
    drop(sources);
    proc
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

/// Asserts that exactly one socket listens on `passed`'s port, that it is the passed one, and
/// that `pid` holds it.
fn assert_serves_on_passed(passed: &Passed, pid: i32) {
    assert_eq!(
        tcp_listeners(passed.addr.port()),
        vec![passed.inode],
        "the only socket listening on {} must be the one the test passed",
        passed.addr
    );
    assert!(
        holds_socket(pid, passed.inode),
        "pid {pid} does not hold the passed socket"
    );
}

/// SIGHUPs `old` (the process the test started) and returns the new generation's pid, once
/// the old one has exited successfully.
fn upgrade(server: &mut Proc, old: i32, port: u16) -> i32 {
    send_signal(old, Signal::SIGHUP);
    let new = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != old))
        .unwrap_or_else(|| panic!("the pid file still names {old}"));
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "the old process exited with {status}");
    assert_eq!(pid_on(port), new, "the new generation does not answer");
    new
}

/// The scenario for one passed socket, with `LISTEN_FDNAMES` computed from its address by
/// `names`: served without a new bind, still served once the test has closed its own copy,
/// and handed on to the next generation at SIGHUP.
fn one_passed_socket(names: impl Fn(SocketAddr) -> Option<String>) {
    let passed = Passed::bind();
    let names = names(passed.addr);
    let mut server = start_with_passed_fds(&[&passed], names.as_deref(), &[passed.addr], &[]);
    let pid = server.pid();
    let addrs = server.wait_until_serving(pid, TIMEOUT);
    assert_eq!(addrs, vec![passed.addr]);
    assert_eq!(
        server.log_count(&inherited_log(1)),
        1,
        "no `inherited` log line"
    );
    assert!(!server.log().contains("closing inherited socket"));
    assert_serves_on_passed(&passed, pid);
    assert_eq!(pid_on(passed.addr.port()), pid);

    // The test closes its own copy: the server's is all that is left.
    let Passed { listener, addr, .. } = passed;
    drop(listener);
    assert_eq!(
        pid_on(addr.port()),
        pid,
        "not served after the test closed its copy"
    );
    assert_eq!(tcp_listeners(addr.port()), vec![passed.inode]);

    let new = upgrade(&mut server, pid, addr.port());
    assert_eq!(
        server.log_count(&inherited_log(1)),
        2,
        "generation 2 did not inherit"
    );
    assert_eq!(
        tcp_listeners(addr.port()),
        vec![passed.inode],
        "a new socket was bound"
    );
    assert!(
        holds_socket(new, passed.inode),
        "pid {new} does not hold the socket"
    );
    assert_eq!(
        get(addr.port(), "/").expect("GET /"),
        (
            200,
            format!("hello from pid {new}, generation 2, release v1\n")
        )
    );
}

#[test]
fn passed_socket_named_as_the_library_expects_is_adopted() {
    one_passed_socket(|addr| Some(fd_name(addr)));
}

#[test]
fn passed_socket_with_an_unknown_name_is_adopted_by_position() {
    one_passed_socket(|_| Some("web".to_owned()));
}

#[test]
fn passed_socket_without_names_is_adopted_by_position() {
    one_passed_socket(|_| None);
}

#[test]
fn passed_sockets_are_matched_by_name_before_position() {
    // Passed in the opposite order of the binds: matching by position would serve each
    // address on the other's socket.
    let (a, b) = (Passed::bind(), Passed::bind());
    let names = format!("{}:{}", fd_name(b.addr), fd_name(a.addr));
    let mut server = start_with_passed_fds(&[&b, &a], Some(&names), &[a.addr, b.addr], &[]);
    let pid = server.pid();
    assert_eq!(
        server.wait_until_serving(pid, TIMEOUT),
        vec![a.addr, b.addr],
        "each bind must get the socket named after it, in bind order"
    );
    assert_eq!(server.log_count(&inherited_log(2)), 1);
    assert_serves_on_passed(&a, pid);
    assert_serves_on_passed(&b, pid);
    let (a_port, b_port) = (a.addr.port(), b.addr.port());
    drop((a.listener, b.listener));
    assert_eq!((pid_on(a_port), pid_on(b_port)), (pid, pid));

    let new = upgrade(&mut server, pid, a_port);
    assert_eq!(server.read_addrs(), Some(vec![a.addr, b.addr]));
    assert_eq!(server.log_count(&inherited_log(2)), 2);
    assert_eq!(pid_on(b_port), new);
    assert_eq!(tcp_listeners(a_port), vec![a.inode]);
    assert_eq!(tcp_listeners(b_port), vec![b.inode]);
}

#[test]
fn passed_socket_matching_no_bind_is_closed() {
    let (extra, wanted) = (Passed::bind(), Passed::bind());
    let names = format!("{}:{}", fd_name(extra.addr), fd_name(wanted.addr));
    let mut server = start_with_passed_fds(&[&extra, &wanted], Some(&names), &[wanted.addr], &[]);
    let pid = server.pid();
    assert_eq!(server.wait_until_serving(pid, TIMEOUT), vec![wanted.addr]);
    let warning = format!("closing inherited socket {}", extra.addr);
    assert!(server.log().contains(&warning), "no `{warning}` log line");
    assert_serves_on_passed(&wanted, pid);
    assert!(
        !holds_socket(pid, extra.inode),
        "the unmatched socket is still open"
    );
    // Once the test closes its copy, nobody listens on the extra port any more.
    let extra_port = extra.addr.port();
    drop(extra.listener);
    assert!(
        port_closed(extra_port),
        "something still listens on {extra_port}"
    );
    assert_eq!(pid_on(wanted.addr.port()), pid);
}

#[test]
fn passed_socket_is_kept_by_the_master_and_inherited_by_its_workers() {
    // `--master`: the first process keeps its pid and the socket; workers serve on it.
    let passed = Passed::bind();
    let names = fd_name(passed.addr);
    let mut server = start_with_passed_fds(&[&passed], Some(&names), &[passed.addr], &["--master"]);
    let master = server.pid();
    assert_eq!(
        server.wait_until_serving(master, TIMEOUT),
        vec![passed.addr]
    );
    let (port, inode) = (passed.addr.port(), passed.inode);
    drop(passed.listener);
    let worker = pid_on(port);
    assert_ne!(worker, master, "the master itself serves no request");
    assert_eq!(tcp_listeners(port), vec![inode], "a new socket was bound");
    assert!(
        holds_socket(master, inode),
        "the master does not keep the socket"
    );
    assert!(
        holds_socket(worker, inode),
        "the worker does not serve on the socket"
    );

    send_signal(master, Signal::SIGHUP);
    let next = wait_for(TIMEOUT, || Some(pid_on(port)).filter(|&p| p != worker))
        .expect("a new worker answers");
    assert_ne!(next, master);
    assert!(
        wait_for(TIMEOUT, || (!integration::pid_alive(worker)).then_some(())).is_some(),
        "the old worker {worker} did not exit"
    );
    assert_eq!(server.try_wait(), None, "the master exited");
    assert_eq!(server.read_pid_file(), Some(master));
    assert_eq!(tcp_listeners(port), vec![inode], "a new socket was bound");
    assert!(holds_socket(next, inode));
}

// ---------------------------------------------------------------------------------------------
// systemd-socket-activate
// ---------------------------------------------------------------------------------------------

/// The real peer: `systemd-socket-activate` binds, waits for the first connection and then
/// execs the server in its own process (so its pid is the server's), with `LISTEN_FDS=1`.
fn socket_activated(named: bool) {
    let Some(tool) = socket_activate_tool() else {
        eprintln!("{SKIP_NO_SOCKET_ACTIVATE}");
        return;
    };
    let (mut server, addr) = start_socket_activated(&tool, named, &[]);
    let pid = server.pid();
    let inodes = tcp_listeners(addr.port());
    assert_eq!(inodes.len(), 1, "one socket, bound by the tool");

    // The first connection makes the tool exec the server, which then answers it.
    let (status, body) = get(addr.port(), "/").expect("the first request");
    assert_eq!(
        (status, body),
        (
            200,
            format!("hello from pid {pid}, generation 1, release v1\n")
        )
    );
    assert_eq!(server.wait_until_serving(pid, TIMEOUT), vec![addr]);
    assert_eq!(
        server.log_count(&inherited_log(1)),
        1,
        "no `inherited` log line"
    );
    assert_eq!(tcp_listeners(addr.port()), inodes, "a new socket was bound");

    let new = upgrade(&mut server, pid, addr.port());
    assert_eq!(
        server.log_count(&inherited_log(1)),
        2,
        "generation 2 did not inherit"
    );
    assert_eq!(tcp_listeners(addr.port()), inodes, "a new socket was bound");
    assert!(holds_socket(new, inodes[0]));
    assert_eq!(
        get(addr.port(), "/").expect("GET / after the upgrade"),
        (
            200,
            format!("hello from pid {new}, generation 2, release v1\n")
        )
    );
}

#[test]
fn systemd_socket_activate_with_fdname() {
    socket_activated(true);
}

#[test]
fn systemd_socket_activate_without_fdname() {
    socket_activated(false);
}
