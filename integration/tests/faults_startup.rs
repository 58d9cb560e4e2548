//! Faults at start-up (issue 4, cases 8, 10 and 11): a bad inheritance environment, a stale
//! or unwritable pid file, and addresses that cannot be bound.
//!
//! A process that cannot start must say why on stderr, in the library's words (the `Display`
//! of its error, which names the variable, descriptor or address), exit non-zero quickly,
//! never panic, and leave nothing behind. Variables meant for another process are ignored.

mod fault_support;

use std::fs;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fault_support::{
    assert_no_panic, free_port, listening_inodes, no_stray_fds, pid_exists, processes_mentioning,
    socket_holders, Guarded,
};
use integration::{
    examples, get, replace_with_copy, send_signal, wait_for, Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;

/// How long a process that cannot start may take to exit: "quickly", with room for a debug
/// binary on a loaded machine.
const QUICK: Duration = Duration::from_secs(15);

/// Every variable of the inheritance protocol; removed from the environment of every process
/// these tests start, and then set as each test wants.
const INHERIT_VARS: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "ACTIX_ENDLESS_READY_FD",
    "ACTIX_ENDLESS_GENERATION",
    "ACTIX_ENDLESS_MASTER_PID",
];

/// A shell command that sets `LISTEN_PID` to its own pid and then becomes the program given
/// as `$0` with the arguments `$@`: `exec` keeps the pid, so `LISTEN_PID` names the program.
const OWN_LISTEN_PID: &str = r#"export LISTEN_PID=$$; exec "$0" "$@""#;

/// How a test starts `hello`.
struct Start {
    /// Variables to set (after the inheritance variables are removed).
    env: Vec<(&'static str, String)>,
    /// Descriptors to place at 3, 4, ...; every other descriptor above 2 is closed.
    fds: Vec<OwnedFd>,
    /// Set `LISTEN_PID` to the process's own pid.
    own_listen_pid: bool,
    /// Extra arguments after `--addr-file DIR/addr`.
    args: Vec<String>,
}

impl Start {
    /// `hello --bind 127.0.0.1:0 --addr-file DIR/addr`, `LISTEN_PID` = its own pid, and `env`.
    fn own(env: &[(&'static str, &str)]) -> Start {
        Start {
            env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            fds: Vec::new(),
            own_listen_pid: true,
            args: vec!["--bind".into(), "127.0.0.1:0".into()],
        }
    }

    /// Passes `fds` at 3, 4, ...
    fn fds(mut self, fds: Vec<OwnedFd>) -> Start {
        self.fds = fds;
        self
    }

    /// Starts `program` (default: `hello`) as described, in `dir`.
    fn spawn(self, dir: &TempDir) -> Guarded {
        self.spawn_program(&examples().hello, dir)
    }

    fn spawn_program(self, program: &Path, dir: &TempDir) -> Guarded {
        no_stray_fds();
        let mut command = if self.own_listen_pid {
            let mut sh = Command::new("/bin/sh");
            sh.arg("-c").arg(OWN_LISTEN_PID).arg(program);
            sh
        } else {
            Command::new(program)
        };
        command
            .arg("--addr-file")
            .arg(dir.join("addr"))
            .args(&self.args)
            .current_dir(dir.path());
        for var in INHERIT_VARS {
            command.env_remove(var);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Copies numbered well above the targets, so that no dup2 below overwrites a source.
        let sources: Vec<OwnedFd> = self
            .fds
            .iter()
            .map(|fd| {
                let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))
                    .expect("duplicating a descriptor");
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
            })
            .collect();
        let raw_sources: Vec<RawFd> = sources.iter().map(AsRawFd::as_raw_fd).collect();
        let first_free = 3 + raw_sources.len() as libc::c_uint;
        let pre_exec = move || {
            for (target, source) in (3..).zip(&raw_sources) {
                // SAFETY: dup2 is async-signal-safe; both are valid descriptor numbers (the
                // sources were inherited across fork and are above every target). It clears
                // close-on-exec on the target, so the descriptor crosses exec.
                if unsafe { libc::dup2(*source, target) } == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // SAFETY: close_range is async-signal-safe; with CLOSE_RANGE_CLOEXEC it only marks
            // every descriptor above the passed ones close-on-exec, so that nothing else
            // reaches the program (the sources and std's own error pipe among them).
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    first_free,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
            }
            Ok(())
        };
        // SAFETY: the closure only calls dup2 and close_range, both async-signal-safe, and
        // neither allocates nor locks (`last_os_error` builds an error from errno in place).
        unsafe {
            command.pre_exec(pre_exec);
        }
        let guard = Guarded::spawn(&mut command, dir);
        drop(sources);
        guard
    }
}

/// Waits for a process that must not start: it exits non-zero within [`QUICK`], without a
/// panic, with `expected` (every part) in its output, having never served, and leaving no
/// process behind. Returns its output.
fn assert_refused_to_start(mut process: Guarded, dir: &TempDir, expected: &[&str]) -> String {
    let started = Instant::now();
    let status = process.wait_exit(QUICK);
    let output = process.output();
    assert!(
        !status.success(),
        "it exited with {status} after {:?}; output:\n{output}",
        started.elapsed()
    );
    assert_no_panic(&output);
    assert!(
        !dir.join("addr").exists(),
        "it served before it failed; output:\n{output}"
    );
    assert_eq!(
        processes_mentioning(&dir.path().to_string_lossy()),
        Vec::<i32>::new(),
        "processes left behind"
    );
    for part in expected {
        assert!(
            output.contains(part),
            "the error does not say `{part}` (its output is printed below)"
        );
    }
    output
}

/// Starts `hello` with `LISTEN_PID` set to its own pid, `env` and `fds` at 3.., and checks
/// that it refuses to start with `expected` on stderr.
fn refused(label: &str, env: &[(&'static str, &str)], fds: Vec<OwnedFd>, expected: &[&str]) {
    let dir = TempDir::new(label);
    let process = Start::own(env).fds(fds).spawn(&dir);
    assert_refused_to_start(process, &dir, expected);
}

/// A regular file, open for reading.
fn regular_file(dir: &TempDir) -> OwnedFd {
    let path = dir.join("regular");
    fs::write(&path, "not a socket\n").expect("writing a file");
    fs::File::open(path).expect("opening a file").into()
}

// ---------------------------------------------------------------------------------------------
// Case 8: bad inheritance environment
// ---------------------------------------------------------------------------------------------

/// Control: a real listening socket passed at fd 3 is adopted and served. It shows that the
/// way these tests pass descriptors and `LISTEN_PID` works, so the refusals below are about
/// what was passed.
#[test]
fn inherited_listening_socket_is_adopted() {
    let dir = TempDir::new("faults-env-control");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("local address").port();
    let mut process = Start::own(&[("LISTEN_FDS", "1")])
        .fds(vec![listener.into()])
        .spawn(&dir);
    let pid = process.pid();
    let body =
        wait_for(TIMEOUT, || get(port, "/").ok().map(|(_, body)| body)).unwrap_or_else(|| {
            panic!(
                "nothing answers on the passed socket; output:\n{}",
                process.output()
            )
        });
    assert_eq!(
        body,
        format!("hello from pid {pid}, generation 1, release v1\n")
    );
    assert!(process.output().contains("inherited 1 listening socket(s)"));
    send_signal(pid, Signal::SIGTERM);
    assert!(process.wait_exit(TIMEOUT).success());
}

#[test]
fn listen_fds_not_a_number_is_refused() {
    refused(
        "faults-env-fds-nan",
        &[("LISTEN_FDS", "abc")],
        vec![],
        &[r#"LISTEN_FDS="abc""#],
    );
}

#[test]
fn listen_fds_beyond_the_open_descriptors_is_refused() {
    refused(
        "faults-env-fds-missing",
        &[("LISTEN_FDS", "5")],
        vec![],
        &["fd 3 (passed in LISTEN_FDS)", "not an open descriptor"],
    );
    // One good listener at fd 3, nothing at fd 4: the second one is named.
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    refused(
        "faults-env-fds-second-missing",
        &[("LISTEN_FDS", "2")],
        vec![listener.into()],
        &["fd 4 (passed in LISTEN_FDS)", "not an open descriptor"],
    );
}

#[test]
fn listen_fds_pointing_at_a_regular_file_is_refused() {
    let dir = TempDir::new("faults-env-file-source");
    refused(
        "faults-env-file",
        &[("LISTEN_FDS", "1")],
        vec![regular_file(&dir)],
        &["fd 3 (passed in LISTEN_FDS) is a regular file, not a socket"],
    );
}

#[test]
fn listen_fds_pointing_at_a_pipe_is_refused() {
    let (reader, _writer) = std::io::pipe().expect("pipe");
    refused(
        "faults-env-pipe",
        &[("LISTEN_FDS", "1")],
        vec![reader.into()],
        &["fd 3 (passed in LISTEN_FDS) is a pipe, not a socket"],
    );
}

#[test]
fn listen_fds_pointing_at_a_udp_socket_is_refused() {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
    refused(
        "faults-env-udp",
        &[("LISTEN_FDS", "1")],
        vec![udp.into()],
        &["fd 3 (passed in LISTEN_FDS)", "not a stream socket"],
    );
}

#[test]
fn listen_fds_pointing_at_a_connected_tcp_socket_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let stream = TcpStream::connect(listener.local_addr().expect("address")).expect("connecting");
    refused(
        "faults-env-tcp-connected",
        &[("LISTEN_FDS", "1")],
        vec![stream.into()],
        &["fd 3 (passed in LISTEN_FDS)", "not listening"],
    );
}

#[test]
fn listen_fdnames_not_matching_listen_fds_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    refused(
        "faults-env-fdnames",
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web:admin")],
        vec![listener.into()],
        &[r#"LISTEN_FDNAMES="web:admin""#],
    );
}

#[test]
fn listen_pid_not_a_number_is_refused() {
    let dir = TempDir::new("faults-env-pid-nan");
    let mut start = Start::own(&[("LISTEN_PID", "abc"), ("LISTEN_FDS", "1")]);
    start.own_listen_pid = false;
    let process = start.spawn(&dir);
    assert_refused_to_start(process, &dir, &[r#"LISTEN_PID="abc""#]);
}

#[test]
fn ready_fd_garbage_is_refused() {
    refused(
        "faults-env-ready-nan",
        &[("ACTIX_ENDLESS_READY_FD", "xyz")],
        vec![],
        &[r#"ACTIX_ENDLESS_READY_FD="xyz""#],
    );
    refused(
        "faults-env-ready-closed",
        &[("LISTEN_FDS", "0"), ("ACTIX_ENDLESS_READY_FD", "9")],
        vec![],
        &[
            "fd 9 (passed in ACTIX_ENDLESS_READY_FD)",
            "not an open descriptor",
        ],
    );
    let dir = TempDir::new("faults-env-ready-file-source");
    refused(
        "faults-env-ready-file",
        &[("LISTEN_FDS", "0"), ("ACTIX_ENDLESS_READY_FD", "3")],
        vec![regular_file(&dir)],
        &["fd 3 (passed in ACTIX_ENDLESS_READY_FD)", "not a pipe"],
    );
}

#[test]
fn generation_garbage_is_refused() {
    refused(
        "faults-env-generation-nan",
        &[("ACTIX_ENDLESS_GENERATION", "xyz")],
        vec![],
        &[r#"ACTIX_ENDLESS_GENERATION="xyz""#],
    );
    refused(
        "faults-env-generation-0",
        &[("ACTIX_ENDLESS_GENERATION", "0")],
        vec![],
        &[r#"ACTIX_ENDLESS_GENERATION="0""#],
    );
}

#[test]
fn master_pid_garbage_is_refused() {
    refused(
        "faults-env-master-nan",
        &[("ACTIX_ENDLESS_MASTER_PID", "xyz")],
        vec![],
        &[r#"ACTIX_ENDLESS_MASTER_PID="xyz""#],
    );
    refused(
        "faults-env-master-0",
        &[("ACTIX_ENDLESS_MASTER_PID", "0")],
        vec![],
        &[r#"ACTIX_ENDLESS_MASTER_PID="0""#],
    );
}

/// Variables meant for another process (`LISTEN_PID` of another pid, or none at all) are
/// ignored, whatever they hold: the process starts normally as generation 1 and serves.
#[test]
fn variables_meant_for_another_process_are_ignored() {
    let garbage = [
        ("LISTEN_FDS", "abc"),
        ("LISTEN_FDNAMES", "x:y:z"),
        ("ACTIX_ENDLESS_READY_FD", "xyz"),
        ("ACTIX_ENDLESS_GENERATION", "xyz"),
        ("ACTIX_ENDLESS_MASTER_PID", "xyz"),
    ];
    for listen_pid in [Some("1"), None] {
        let dir = TempDir::new("faults-env-other-pid");
        let mut env = garbage.to_vec();
        env.extend(listen_pid.map(|pid| ("LISTEN_PID", pid)));
        let mut start = Start::own(&env);
        start.own_listen_pid = false;
        let mut process = start.spawn(&dir);
        let pid = process.pid();
        let port = wait_for(TIMEOUT, || {
            let text = fs::read_to_string(dir.join("addr")).ok()?;
            text.lines().next()?.parse::<std::net::SocketAddr>().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "LISTEN_PID={listen_pid:?}: it did not serve; output:\n{}",
                process.output()
            )
        })
        .port();
        assert_eq!(
            get(port, "/").expect("GET /"),
            (
                200,
                format!("hello from pid {pid}, generation 1, release v1\n")
            )
        );
        send_signal(pid, Signal::SIGTERM);
        let status = process.wait_exit(TIMEOUT);
        assert!(
            status.success(),
            "LISTEN_PID={listen_pid:?}: exited with {status}"
        );
        assert_no_panic(&process.output());
    }
}

// ---------------------------------------------------------------------------------------------
// Case 10: pid file at start-up
// ---------------------------------------------------------------------------------------------

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> i32 {
    let mut child = Command::new("true").spawn().expect("running `true`");
    let pid = child.id() as i32;
    child.wait().expect("waiting for `true`");
    assert!(!pid_exists(pid));
    pid
}

/// A pid file left behind by a dead process, or holding garbage, is replaced at start.
#[test]
fn stale_pid_file_is_replaced_at_start() {
    no_stray_fds();
    for stale in [format!("{}\n", dead_pid()), String::from("garbage")] {
        let dir = TempDir::new("faults-stale-pid");
        fs::write(dir.join("pid"), &stale).expect("writing the stale pid file");
        let mut server = Server::start_in(dir, &examples().hello, &[]);
        let pid = server.first_pid();
        assert_eq!(
            fs::read_to_string(server.pid_file()).expect("reading the pid file"),
            format!("{pid}\n"),
            "stale content {stale:?} was not replaced"
        );
        send_signal(pid, Signal::SIGTERM);
        assert!(server.wait_exit(TIMEOUT).success());
        assert!(!server.pid_file().exists(), "the pid file was not removed");
    }
}

/// A pid file in a directory that cannot hold one is an error at start that names the path:
/// the process exits non-zero and leaves nothing running or listening.
#[test]
fn unwritable_pid_file_is_an_error_at_start() {
    let dir = TempDir::new("faults-pid-unwritable");
    let port = free_port();
    let mut start = Start::own(&[]);
    start.own_listen_pid = false;
    start.args = vec![
        "--bind".into(),
        format!("127.0.0.1:{port}"),
        "--pid-file".into(),
        "/proc/nonexistent/x.pid".into(),
    ];
    let process = start.spawn(&dir);
    assert_refused_to_start(process, &dir, &["/proc/nonexistent/x.pid"]);
    assert_eq!(listening_inodes(port), Vec::<u64>::new(), "port {port}");
}

// ---------------------------------------------------------------------------------------------
// Case 11: bind errors
// ---------------------------------------------------------------------------------------------

/// Starts `program` with `--bind addr` and no inheritance variables.
fn start_binding(program: &Path, addr: &str, dir: &TempDir) -> Guarded {
    let mut start = Start::own(&[]);
    start.own_listen_pid = false;
    start.args = vec!["--bind".into(), addr.into()];
    start.spawn_program(program, dir)
}

/// An address another socket already listens on.
#[test]
fn address_in_use_is_refused() {
    let dir = TempDir::new("faults-bind-in-use");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let addr = listener.local_addr().expect("local address").to_string();
    let port = listener.local_addr().expect("local address").port();
    let ours = listening_inodes(port);
    let process = start_binding(&examples().hello, &addr, &dir);
    assert_refused_to_start(process, &dir, &[&format!("cannot listen on {addr}")]);
    assert_eq!(listening_inodes(port), ours, "listeners on port {port}");
    assert_eq!(
        socket_holders(ours[0]),
        [std::process::id() as i32].into(),
        "only the test holds its socket"
    );
}

/// A privileged port, bound as user `nobody`.
#[test]
fn permission_denied_is_refused() {
    const NOBODY: u32 = 65534;
    let unprivileged_from: u16 =
        fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_from <= 80 {
        eprintln!(
            "SKIPPED: every user may bind port 80 here (ip_unprivileged_port_start = \
             {unprivileged_from}), so binding it cannot be refused"
        );
        return;
    }
    // SAFETY: geteuid cannot fail and has no side effect.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the test must run as root to start a process as nobody");
        return;
    }
    let dir = TempDir::new("faults-bind-denied");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let listeners_before = listening_inodes(80);
    let process = match start_as_nobody(&dir, NOBODY) {
        Ok(process) => process,
        Err(e) => {
            eprintln!("SKIPPED: cannot run the example as nobody here: {e}");
            return;
        }
    };
    assert_refused_to_start(
        process,
        &dir,
        &["cannot listen on 127.0.0.1:80", "Permission denied"],
    );
    assert_eq!(
        listening_inodes(80),
        listeners_before,
        "listeners on port 80"
    );
}

/// Starts `hello` as `uid`, from its build path if that user may execute it there, else from
/// a copy in `dir` with mode 0755.
fn start_as_nobody(dir: &TempDir, uid: u32) -> std::io::Result<Guarded> {
    no_stray_fds();
    let command_for = |program: &Path| {
        let mut command = Command::new(program);
        command
            .arg("--addr-file")
            .arg(dir.join("addr"))
            .args(["--bind", "127.0.0.1:80"])
            .current_dir(dir.path())
            .uid(uid)
            .gid(uid);
        for var in INHERIT_VARS {
            command.env_remove(var);
        }
        Guarded::try_spawn(&mut command, dir)
    };
    match command_for(&examples().hello) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let copy: PathBuf = dir.join("hello");
            replace_with_copy(&copy, &examples().hello);
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
            command_for(&copy)
        }
        other => other,
    }
}

/// An address that is not on this host (TEST-NET-1): EADDRNOTAVAIL.
#[test]
fn address_not_on_this_host_is_refused() {
    let dir = TempDir::new("faults-bind-not-here");
    let process = start_binding(&examples().hello, "192.0.2.1:8080", &dir);
    assert_refused_to_start(process, &dir, &["cannot listen on 192.0.2.1:8080"]);
}

/// A host name that does not resolve.
#[test]
fn unresolvable_host_is_refused() {
    let dir = TempDir::new("faults-bind-unresolvable");
    let process = start_binding(&examples().hello, "no-such-host.invalid:80", &dir);
    assert_refused_to_start(process, &dir, &["cannot listen on no-such-host.invalid:80"]);
}
