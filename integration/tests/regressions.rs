//! Regression tests for issue 10: upgrades and stops that overlap an old drain, the pid file's
//! temporary file in a shared directory, descendants of an abandoned generation, the master
//! killed by SIGKILL, a symlinked working directory, a pid file written by a generation that
//! never became ready, and weaker spots at start-up.
//!
//! Real processes, real signals, real sockets; every process a test starts is killed by pid
//! when it ends (`Server`, `Guarded`, `KillOnDrop`, and `KillMentioning` for any generation
//! of a `Server` whose pid the test never read).

mod fault_support;
mod regression_support;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use fault_support::{
    cmdline, link_binary, no_stray_fds, processes_mentioning, socket_holders, Guarded,
    UPGRADE_FAILED,
};
use integration::{
    examples, get, pid_alive, port_closed, replace_with_script, send_signal, wait_for, wait_until,
    LoadClient, Mode, RawRequest, Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;
use regression_support::{
    assert_refused_to_start, descendants, hello_command, next_pids, own_listen_pid, pass_fd_3,
    plant_links_as_nobody, upgrade, wait_served, KillMentioning, KillOnDrop, PidFileWatch,
};

/// How long the request that keeps generation 1 draining sleeps (the figure): long
/// enough for two upgrades of a debug build to complete while it runs.
const LONG_MS: u64 = 6000;

/// What the old code logged when it took the sockets back from a dead successor.
const TAKE_BACK: &str = "taking the listening sockets back";

/// How long something the test is waiting for at once may take on a loaded machine.
const PROMPT: Duration = Duration::from_secs(10);

/// Sends `/sleep/LONG_MS` and waits until `pid` has accepted it.
fn long_request(server: &Server, pid: i32) -> RawRequest {
    let request = RawRequest::send(server.port(), &format!("/sleep/{LONG_MS}"));
    assert!(
        request.wait_accepted_by(pid, TIMEOUT),
        "pid {pid} did not accept the long request"
    );
    request
}

/// Generation 1 answers its long request with 200 and then exits 0, without ever taking the
/// sockets back from generation 2 (which exited on purpose while generation 1 drained).
fn first_generation_finishes_and_exits(server: &mut Server, gen1: i32, long: RawRequest) {
    let response = long.response().expect("the long request failed");
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept {LONG_MS} ms in pid {gen1}\n"))
    );
    let exited = wait_until(PROMPT, || server.try_wait().is_some());
    let took_back = server
        .log()
        .lines()
        .find(|line| line.contains(TAKE_BACK))
        .map(str::to_owned);
    assert!(
        exited,
        "generation 1 (pid {gen1}) still runs {PROMPT:?} after its last request; it took the \
         sockets back: {took_back:?}"
    );
    assert_eq!(took_back, None, "generation 1 took the sockets back");
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "generation 1 exited with {status}");
}

/// Issue 10.1: gen 1 drains a long request while gen 2 takes over and is itself upgraded to
/// gen 3. Gen 2 exiting after its own drain is not a death: gen 1 finishes its request and
/// exits; only gen 3 answers and the pid file names it.
#[test]
fn two_quick_upgrades_during_a_long_request_leave_only_the_last_generation() {
    no_stray_fds();
    let mut server = Server::start(&examples().hello, &[]);
    let _reap = KillMentioning::server(&server);
    let gen1 = server.first_pid();
    let long = long_request(&server, gen1);
    let started = Instant::now();
    let gen2 = upgrade(&server, gen1, 2);
    let gen3 = upgrade(&server, gen2, 3);
    assert!(
        wait_until(TIMEOUT, || !pid_alive(gen2)),
        "generation 2 (pid {gen2}) did not exit after handing over to generation 3"
    );
    let gen2_gone = started.elapsed();
    eprintln!("gen 2 ready and gone {gen2_gone:?} into gen 1's {LONG_MS} ms request");
    assert!(
        pid_alive(gen1),
        "precondition: gen 1 finished before gen 2 exited ({gen2_gone:?}); nothing was tested"
    );
    assert!(
        server.log_contains(&format!("pid {gen2} generation 2: drained in")),
        "generation 2 did not drain"
    );
    first_generation_finishes_and_exits(&mut server, gen1, long);
    for i in 0..20 {
        assert_eq!(server.get_pid(), Ok(gen3), "GET /pid #{i}");
    }
    assert_eq!(server.read_pid_file(), Some(gen3));
    assert_eq!(
        processes_mentioning(&server.dir().to_string_lossy()),
        [gen3]
    );
}

/// Issue 10.2: `signal` to gen 2 (the pid in the pid file) while gen 1 drains a long request:
/// gen 2 stops, gen 1 does not take the sockets back, finishes its request and exits; nothing
/// is left and the port is closed.
fn stop_during_an_old_drain(signal: Signal) {
    no_stray_fds();
    let mut server = Server::start(&examples().hello, &[]);
    let _reap = KillMentioning::server(&server);
    let gen1 = server.first_pid();
    let port = server.port();
    let long = long_request(&server, gen1);
    let gen2 = upgrade(&server, gen1, 2);
    assert_eq!(server.read_pid_file(), Some(gen2));
    let sent = Instant::now();
    send_signal(gen2, signal);
    assert!(
        wait_until(TIMEOUT, || !pid_alive(gen2)),
        "generation 2 (pid {gen2}) did not stop on {signal}"
    );
    eprintln!("gen 2 stopped {:?} after {signal}", sent.elapsed());
    assert!(
        pid_alive(gen1),
        "precondition: gen 1 finished its request before gen 2 stopped; nothing was tested"
    );
    first_generation_finishes_and_exits(&mut server, gen1, long);
    let dir = server.dir().to_string_lossy().into_owned();
    let mut left = Vec::new();
    assert!(
        wait_until(PROMPT, || {
            left = processes_mentioning(&dir);
            left.is_empty()
        }),
        "processes left after the stop: {left:?}"
    );
    assert!(port_closed(port), "port {port} still accepts connections");
}

#[test]
fn sigterm_to_the_new_generation_during_an_old_drain_ends_everything() {
    stop_during_an_old_drain(Signal::SIGTERM);
}

#[test]
fn sigusr2_to_the_new_generation_during_an_old_drain_ends_everything() {
    stop_during_an_old_drain(Signal::SIGUSR2);
}

/// Issue 10.3: links planted by another user in a world-writable sticky pid-file directory,
/// at every predictable temporary name, are never written through, and the pid file is a
/// regular file with mode 0644 even under umask 077, across two upgrades.
#[test]
fn pid_file_is_never_written_through_planted_links() {
    no_stray_fds();
    // The server's own directory is the shared one: it holds the pid file `DIR/pid`.
    let shared = TempDir::new("regress-pid-links");
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    let elsewhere = TempDir::new("regress-pid-victim");
    let victim = elsewhere.join("victim");
    fs::write(&victim, "precious\n").expect("writing the victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let wrapper = elsewhere.join("umask077");
    let hello = examples().hello.display().to_string();
    replace_with_script(&wrapper, &format!("umask 077\nexec '{hello}' \"$@\""));

    let pid_file = shared.join("pid");
    let shared_path = shared.path().to_path_buf();
    let mut planted = std::collections::BTreeSet::new();
    // The old scheme's `.pid.PID.tmp` for the next 500 pids, and other predictable names.
    let mut plant = || {
        let pids = next_pids(500);
        let mut links = vec![shared_path.join(".pid.tmp"), shared_path.join("pid.tmp")];
        for pid in &pids {
            links.push(shared_path.join(format!(".pid.{pid}.tmp")));
            links.push(shared_path.join(format!("pid.{pid}.tmp")));
        }
        links.retain(|path| fs::symlink_metadata(path).is_err());
        plant_links_as_nobody(&victim, &links);
        planted.extend(pids);
    };
    let check = |server: &Server, serving: i32, when: &str| {
        let content = fs::read(&victim).expect("reading the victim");
        let mode = fs::metadata(&victim).expect("victim").permissions().mode() & 0o7777;
        assert_eq!(
            (String::from_utf8_lossy(&content).into_owned(), mode),
            ("precious\n".to_owned(), 0o600),
            "{when}: the victim was written through a planted link"
        );
        let meta = fs::symlink_metadata(&pid_file).expect("the pid file exists");
        assert!(
            meta.is_file(),
            "{when}: the pid file is a {:?}",
            meta.file_type()
        );
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644, "{when}: the pid file has mode {mode:o}");
        assert_eq!(server.read_pid_file(), Some(serving), "{when}: pid file");
    };

    plant();
    let server = Server::start_in(shared, &wrapper, &[]);
    let _reap = KillMentioning::server(&server);
    let gen1 = server.first_pid();
    check(&server, gen1, "after the start");
    plant();
    let gen2 = upgrade(&server, gen1, 2);
    check(&server, gen2, "after the first upgrade");
    plant();
    let gen3 = upgrade(&server, gen2, 3);
    check(&server, gen3, "after the second upgrade");
    let covered: Vec<bool> = [gen1, gen2, gen3]
        .iter()
        .map(|pid| planted.contains(pid))
        .collect();
    eprintln!(
        "{} pids planted; generations {gen1}, {gen2}, {gen3} covered: {covered:?}",
        planted.len()
    );
    assert!(
        covered.iter().all(|&c| c),
        "the planted links missed a generation's pid ({covered:?}): that generation was not tested"
    );
}

/// Issue 10.4: a new binary that is a shell script running `sleep 600` (a grandchild holding
/// the inherited sockets) never reports ready. After the upgrade timeout and a stop, nothing
/// holds the port: the `sleep` is gone, the port is closed and can be bound again.
#[test]
fn abandoned_generation_leaves_no_descendant_holding_the_port() {
    no_stray_fds();
    let dir = TempDir::new("regress-abandoned");
    let binary = dir.join("app");
    link_binary(&binary, &examples().hello);
    let mut server = Server::start_in(dir, &binary, &["--upgrade-timeout", "1500"]);
    let _reap = KillMentioning::server(&server);
    let old = server.first_pid();
    let port = server.port();
    replace_with_script(&binary, "sleep 600");
    let mut guard = KillOnDrop::default();
    send_signal(old, Signal::SIGHUP);
    let sleeper = wait_for(TIMEOUT, || {
        descendants(old)
            .into_iter()
            .find(|&pid| cmdline(pid).as_deref() == Some("sleep 600"))
    })
    .expect("no `sleep 600` descendant of the server appeared");
    guard.add(sleeper, "sleep 600".to_owned());
    assert!(
        server.wait_for_log(UPGRADE_FAILED, 1, TIMEOUT),
        "the upgrade did not fail"
    );
    assert!(server.log_contains("did not report ready"), "not a timeout");
    send_signal(old, Signal::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "the server exited with {status}");
    let gone = wait_until(PROMPT, || !pid_alive(sleeper));
    let holders = fault_support::listening_inodes(port)
        .into_iter()
        .flat_map(socket_holders)
        .collect::<Vec<_>>();
    assert!(
        gone,
        "the abandoned generation's `sleep` (pid {sleeper}) survived; listening socket holders: \
         {holders:?}"
    );
    assert!(port_closed(port), "port {port} still accepts connections");
    TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("port {port} cannot be bound again: {e}"));
}

/// Issue 10.5: SIGKILL of the master: its worker exits within about a second, and the port can
/// be bound again.
#[test]
fn worker_exits_promptly_when_the_master_is_killed() {
    let mut server = Server::start(&examples().hello, &["--master"]);
    let _reap = KillMentioning::server(&server);
    let master = server
        .read_pid_file()
        .expect("the pid file names the master");
    assert_eq!(master, server.first_pid());
    let worker = server.get_pid().expect("a worker answers");
    assert_ne!(worker, master);
    let port = server.port();
    let killed = Instant::now();
    send_signal(master, Signal::SIGKILL);
    server.wait_exit(TIMEOUT);
    let gone = wait_until(PROMPT, || !pid_alive(worker));
    let took = killed.elapsed();
    eprintln!("worker {worker} gone: {gone}, {took:?} after the master's SIGKILL");
    assert!(
        gone,
        "worker {worker} still runs {took:?} after the master died"
    );
    assert!(
        took <= Duration::from_secs(2),
        "worker took {took:?} to exit (expected about 1 s)"
    );
    TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("port {port} cannot be bound again: {e}"));
}

/// Issue 10.5: a worker whose `ACTIX_ENDLESS_MASTER_PID` is not its parent refuses to start.
#[test]
fn worker_whose_master_is_not_its_parent_refuses_to_start() {
    let dir = TempDir::new("regress-master-not-parent");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let env = [("LISTEN_FDS", "1"), ("ACTIX_ENDLESS_MASTER_PID", "1")];
    let mut command = own_listen_pid(&examples().hello, &dir, &[], &env);
    pass_fd_3(&mut command, &listener);
    let process = Guarded::spawn(&mut command, &dir);
    assert_refused_to_start(process, &dir, &["ACTIX_ENDLESS_MASTER_PID"]);
}

/// `./hello` started in `cwd` (given as `$PWD` too, as a shell does), serving on port 0.
fn start_in_directory(program: &str, cwd: &Path, dir: &TempDir) -> (Guarded, u16) {
    let args = ["--bind", "127.0.0.1:0", "--pid-file"];
    let mut command = hello_command(Path::new(program), dir, &args);
    command
        .arg(dir.join("pid"))
        .current_dir(cwd)
        .env("PWD", cwd);
    let process = Guarded::spawn(&mut command, dir);
    let port = wait_served(&process, dir);
    (process, port)
}

/// `GET /` until a pid other than `old` answers; returns that pid and the body.
fn next_answer(port: u16, old: i32, process: &Guarded) -> (i32, String) {
    wait_for(TIMEOUT, || {
        let (_, body) = get(port, "/").ok()?;
        let pid: i32 = body
            .strip_prefix("hello from pid ")?
            .split(',')
            .next()?
            .parse()
            .ok()?;
        (pid != old).then_some((pid, body))
    })
    .unwrap_or_else(|| panic!("no new generation answered; output:\n{}", process.output()))
}

/// Issue 10.6: started as `./hello` in `current -> releases/v1`; switching the link to
/// `releases/v2` and SIGHUP runs v2; removing `releases/v1` afterwards does not break the next
/// upgrade.
#[test]
fn symlinked_working_directory_follows_the_link_on_upgrade() {
    let dir = TempDir::new("regress-symlinked-cwd");
    for (release, binary) in [("v1", &examples().hello), ("v2", &examples().hello_v2)] {
        fs::create_dir_all(dir.join("releases").join(release)).expect("mkdir");
        link_binary(&dir.join(format!("releases/{release}/hello")), binary);
    }
    let current = dir.join("current");
    symlink("releases/v1", &current).expect("symlink");
    let (mut process, port) = start_in_directory("./hello", &current, &dir);
    let gen1 = process.pid();
    let (_, body) = get(port, "/").expect("GET /");
    assert!(body.contains("release v1"), "{body:?}");

    let next = dir.join("current.next");
    symlink("releases/v2", &next).expect("symlink");
    fs::rename(&next, &current).expect("switching current");
    send_signal(gen1, Signal::SIGHUP);
    let (gen2, body) = next_answer(port, gen1, &process);
    assert!(body.contains("release v2"), "after the switch: {body:?}");
    assert!(process.wait_exit(TIMEOUT).success());

    fs::remove_dir_all(dir.join("releases/v1")).expect("removing releases/v1");
    send_signal(gen2, Signal::SIGHUP);
    let (gen3, body) = next_answer(port, gen2, &process);
    assert!(body.contains("release v2"), "after removing v1: {body:?}");
    assert!(!process.output().contains(UPGRADE_FAILED));
    assert!(
        wait_until(TIMEOUT, || !pid_alive(gen2)),
        "gen 2 did not exit"
    );
    assert!(pid_alive(gen3));
}

/// Issue 10.6: when the working directory is gone, the failed upgrade says so.
#[test]
fn removed_working_directory_is_named_when_the_upgrade_fails() {
    let dir = TempDir::new("regress-removed-cwd");
    let cwd = dir.join("wd");
    fs::create_dir(&cwd).expect("mkdir");
    let hello = examples().hello.display().to_string();
    let (process, port) = start_in_directory(&hello, &cwd, &dir);
    let pid = process.pid();
    fs::remove_dir(&cwd).expect("removing the working directory");
    send_signal(pid, Signal::SIGHUP);
    let line = wait_for(TIMEOUT, || {
        let output = process.output();
        let line = output.lines().find(|l| l.contains(UPGRADE_FAILED))?;
        Some(line.to_owned())
    })
    .unwrap_or_else(|| panic!("the upgrade did not fail; output:\n{}", process.output()));
    assert!(line.contains("working directory"), "{line}");
    assert_eq!(get(port, "/pid").expect("GET /pid").1, pid.to_string());
}

/// Issue 10.7: a new generation still in its readiness gate (`--ready-delay 3s`) when the
/// 1 s upgrade timeout expires never names itself in the pid file; after the failure the pid
/// file names the old process, which served every request and can still be upgraded.
#[test]
fn generation_abandoned_in_its_readiness_gate_never_owns_the_pid_file() {
    no_stray_fds();
    let dir = TempDir::new("regress-ready-gate");
    let binary = dir.join("hello");
    link_binary(&binary, &examples().hello);
    let mut server = Server::start_in(dir, &binary, &["--upgrade-timeout", "1000"]);
    let _reap = KillMentioning::server(&server);
    let old = server.first_pid();
    let client = LoadClient::start(server.port(), Mode::KeepAlive);
    assert!(wait_until(TIMEOUT, || client.stats().successes > 10));
    let hello = examples().hello.display().to_string();
    replace_with_script(&binary, &format!("exec '{hello}' --ready-delay 3s \"$@\""));
    let watch = PidFileWatch::start(server.pid_file());
    send_signal(old, Signal::SIGHUP);
    // The first outcome of the upgrade: a failure, or (wrongly) the new generation ready.
    let line = wait_for(TIMEOUT, || {
        let log = server.log();
        let line = log.lines().find(|l| {
            l.contains(UPGRADE_FAILED) || (l.contains("(pid") && l.contains("is ready after"))
        })?;
        Some(line.to_owned())
    })
    .expect("the upgrade neither failed nor succeeded");
    assert!(
        line.contains(UPGRADE_FAILED) && line.contains("did not report ready"),
        "the upgrade did not fail by its 1 s timeout, although the new generation waits 3 s \
         in its readiness gate (is --ready-delay applied?): {line}"
    );
    assert!(
        wait_until(PROMPT, || server.read_pid_file() == Some(old)),
        "the pid file names {:?}, not the serving pid {old}",
        server.read_pid_file()
    );
    let (seen, samples) = watch.stop();
    eprintln!("pid file sampled {samples} times: {seen:?}");
    assert_eq!(seen, [old].into(), "the pid file named another process");
    let before = client.stats().successes;
    assert!(wait_until(TIMEOUT, || client.stats().successes > before + 10));
    client.stop().assert_all_served_by("keep-alive", old);
    assert_eq!(server.try_wait(), None, "the old process exited");

    link_binary(&binary, &examples().hello);
    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);
    assert!(server.wait_exit(TIMEOUT).success());
    assert_eq!(server.read_pid_file(), Some(new));
}

/// A pid file path that is a directory is refused at start, naming the path, in both process
/// modes (the master used to log the error and serve without a pid file).
#[test]
fn pid_file_that_is_a_directory_is_refused() {
    for mode in [None, Some("--master")] {
        let dir = TempDir::new("regress-pid-dir");
        let pid_dir = dir.join("pid.d");
        fs::create_dir(&pid_dir).expect("mkdir");
        let pid_arg = pid_dir.display().to_string();
        let mut args = vec!["--bind", "127.0.0.1:0", "--pid-file", &pid_arg];
        args.extend(mode);
        let process = Guarded::spawn(&mut hello_command(&examples().hello, &dir, &args), &dir);
        eprintln!("mode {mode:?}:");
        assert_refused_to_start(process, &dir, &[&pid_arg]);
    }
}

/// An inherited generation of u64::MAX (whose successor cannot be numbered) is refused.
#[test]
fn generation_u64_max_is_refused() {
    let dir = TempDir::new("regress-generation-max");
    let env = [("ACTIX_ENDLESS_GENERATION", "18446744073709551615")];
    let args = ["--bind", "127.0.0.1:0"];
    let process = Guarded::spawn(
        &mut own_listen_pid(&examples().hello, &dir, &args, &env),
        &dir,
    );
    assert_refused_to_start(process, &dir, &["ACTIX_ENDLESS_GENERATION"]);
}

/// `--workers 0` is an error that mentions workers, not a panic.
#[test]
fn zero_workers_is_an_error_not_a_panic() {
    let dir = TempDir::new("regress-workers-0");
    let args = ["--bind", "127.0.0.1:0", "--workers", "0"];
    let process = Guarded::spawn(&mut hello_command(&examples().hello, &dir, &args), &dir);
    assert_refused_to_start(process, &dir, &["workers"]);
}

/// A second instance given the pid file of a live first one refuses to start; the first one
/// serves on and keeps its pid file.
#[test]
fn second_instance_with_the_same_pid_file_is_refused() {
    no_stray_fds();
    let server = Server::start(&examples().hello, &[]);
    let _reap = KillMentioning::server(&server);
    let first = server.first_pid();
    let dir = TempDir::new("regress-pid-shared");
    let pid_arg = server.pid_file().display().to_string();
    let args = ["--bind", "127.0.0.1:0", "--pid-file", &pid_arg];
    let process = Guarded::spawn(&mut hello_command(&examples().hello, &dir, &args), &dir);
    assert_refused_to_start(process, &dir, &[&pid_arg]);
    assert_eq!(server.read_pid_file(), Some(first));
    assert_eq!(server.get_pid(), Ok(first));
}

/// A Unix socket file deleted under a running server is reported at the next SIGHUP.
#[test]
fn deleted_unix_socket_file_is_reported_at_the_next_upgrade() {
    no_stray_fds();
    let dir = TempDir::new("regress-uds");
    let socket = dir.join("hello.sock");
    let bind = format!("unix:{}", socket.display());
    let server = Server::start_in(dir, &examples().hello, &["--bind", &bind]);
    let _reap = KillMentioning::server(&server);
    assert!(
        wait_until(TIMEOUT, || socket.exists()),
        "no socket file {}",
        socket.display()
    );
    fs::remove_file(&socket).expect("deleting the socket file");
    let from = server.log().len();
    let pid = server.read_pid_file().expect("pid file");
    send_signal(pid, Signal::SIGHUP);
    let path = socket.display().to_string();
    // The words must be in the message, not in the path.
    let warned = wait_until(PROMPT, || {
        server.log()[from..].lines().any(|line| {
            let message = line.replace(&path, "");
            message.len() < line.len()
                && (message.contains("deleted") || message.contains("missing"))
        })
    });
    assert!(
        warned,
        "no log line names {path} as deleted or missing after the SIGHUP"
    );
}
