//! Debian's supervisor (`supervisord`, `supervisorctl`) running `hello --master` with the
//! README's program section ("supervisord (and runit, s6)"), read from `README.md` and used
//! as it is but for the binary's path, the address (`127.0.0.1:0`, with `--addr-file` to
//! learn the port) and the log file.
//!
//! supervisord runs in the foreground (`-n`) as a child of the test, with its socket, pid
//! file and logs in a temporary directory. Upgrades go through `supervisorctl signal HUP
//! hello`: the master (the pid supervisord watches) keeps its pid, the worker is replaced, no
//! request fails, supervisord never sees the program exit or restarts it. `supervisorctl
//! stop hello` then drains: a request in flight at the stop is answered 200 before the stop
//! completes, and the program exits 0 (`STOPPED`, not `EXITED`).

mod peer_support;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Instant;

use integration::{
    children_of, examples, get, pid_alive, port_closed, send_signal, wait_for, wait_until,
    LoadClient, Mode, RawRequest, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;
use peer_support::{find_tool, readme_block, replace_once, run_bounded, skip, Peer};

const UPGRADES: usize = 5;

/// The README section whose `ini` block is the program section under test.
const GUIDE: &str = "### supervisord (and runit, s6)";

/// How long the request in flight at `supervisorctl stop` takes.
const SLOW_MS: u64 = 1500;

/// supervisord's configuration: the test's settings (every file in `dir`), then the README's
/// program section with the binary, the address and the log file replaced.
fn supervisord_conf(dir: &Path, hello: &Path) -> String {
    let program = readme_block(GUIDE, "ini");
    let program = replace_once(
        &program,
        "command=/usr/local/bin/hello ",
        &format!("command={} ", hello.display()),
    );
    let program = replace_once(
        &program,
        "--bind 127.0.0.1:8080",
        &format!("--bind 127.0.0.1:0 --addr-file {}/addr", dir.display()),
    );
    let program = replace_once(
        &program,
        "stdout_logfile=/var/log/hello.log",
        &format!("stdout_logfile={}/hello.log", dir.display()),
    );
    let d = dir.display();
    format!(
        "; The test's settings: every file in {d}.
[unix_http_server]
file={d}/supervisor.sock
chmod=0700

[supervisord]
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}
loglevel=info
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

; The README's guide ({GUIDE}).
{program}"
    )
}

/// supervisord running the README's `[program:hello]`, and `supervisorctl` for it.
struct Supervisor {
    peer: Peer,
    ctl: PathBuf,
    conf: PathBuf,
}

impl Supervisor {
    fn start(supervisord: &Path, ctl: PathBuf) -> Supervisor {
        let dir = TempDir::new("peer-supervisord");
        let conf = dir.join("supervisord.conf");
        fs::write(&conf, supervisord_conf(dir.path(), &examples().hello))
            .expect("write supervisord.conf");
        let mut command = Peer::command("supervisord", supervisord, &dir);
        command.arg("-n").arg("-c").arg(&conf);
        let peer = Peer::spawn(
            "supervisord",
            command,
            dir,
            &["supervisord.log", "hello.log", "supervisorctl.out"],
        );
        Supervisor { peer, ctl, conf }
    }

    /// `supervisorctl -c CONF args...`: its status and output.
    fn ctl(&mut self, args: &[&str]) -> (ExitStatus, String) {
        self.peer.assert_running();
        let mut command = Command::new(&self.ctl);
        command.arg("-c").arg(&self.conf).args(args);
        run_bounded("supervisorctl", command, self.peer.dir(), TIMEOUT)
    }

    /// `supervisorctl signal|stop|... hello`, which must succeed and print `expected`.
    fn ctl_ok(&mut self, args: &[&str], expected: &str) {
        let (status, output) = self.ctl(args);
        assert!(
            status.success() && output.contains(expected),
            "supervisorctl {args:?} exited with {status}, expected {expected:?} in:\n{output}"
        );
    }

    /// The state column of `supervisorctl status hello` (`RUNNING`, `STOPPED`, ...) and the
    /// whole line.
    fn status(&mut self) -> (String, String) {
        let (_, output) = self.ctl(&["status", "hello"]);
        let state = output
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next()? == "hello").then_some(())?;
                fields.next().map(str::to_owned)
            })
            .unwrap_or_default();
        (state, output.trim().to_owned())
    }

    /// Polls `supervisorctl status hello` until it shows `state`; returns the line.
    fn wait_for_state(&mut self, state: &str, what: &str) -> String {
        let mut last = String::new();
        let reached = wait_until(TIMEOUT, || {
            let (now, line) = self.status();
            last = line;
            now == state
        });
        assert!(reached, "{what}: hello is not {state}: {last}");
        last
    }

    /// `supervisorctl pid hello`: the pid supervisord watches (0 when not running).
    fn program_pid(&mut self) -> i32 {
        let (_, output) = self.ctl(&["pid", "hello"]);
        output
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("supervisorctl pid hello printed {output:?}"))
    }

    /// supervisord's own log.
    fn log(&self) -> String {
        self.peer.read("supervisord.log")
    }
}

/// The pid answering `GET /pid` on `port`, once it differs from `old` (retried: probes may
/// fail, the load clients count failures).
fn worker_pid(port: u16, old: i32) -> i32 {
    let mut last = String::from("no request made");
    wait_for(TIMEOUT, || match get(port, "/pid") {
        Ok((200, body)) => body.trim().parse().ok().filter(|&pid| pid != old),
        other => {
            last = format!("{other:?}");
            None
        }
    })
    .unwrap_or_else(|| panic!("no worker other than {old} answered GET /pid; last: {last}"))
}

#[test]
fn supervisord_upgrades_the_master_in_place_and_stop_drains() {
    let (Some(supervisord), Some(ctl)) = (find_tool("supervisord"), find_tool("supervisorctl"))
    else {
        return skip("supervisord or supervisorctl", "supervisor");
    };
    examples();
    let started = Instant::now();
    let mut sup = Supervisor::start(&supervisord, ctl);
    sup.wait_for_state("RUNNING", "after the start");
    let master = sup.program_pid();
    assert!(master > 0, "supervisorctl pid hello printed {master}");
    let addr_file = sup.peer.dir().join("addr");
    let port = wait_for(TIMEOUT, || {
        let text = fs::read_to_string(&addr_file).ok()?;
        Some(
            text.lines()
                .next()?
                .trim()
                .parse::<SocketAddr>()
                .ok()?
                .port(),
        )
    })
    .expect("hello did not write its address file");
    let mut worker = worker_pid(port, master);

    let clients = [
        ("keep-alive", LoadClient::start(port, Mode::KeepAlive)),
        ("close", LoadClient::start(port, Mode::Close)),
    ];
    let served_by = |pid: i32| clients.iter().all(|(_, c)| c.stats().pids.contains(&pid));
    for upgrade in 1..=UPGRADES {
        assert!(
            wait_until(TIMEOUT, || served_by(worker)),
            "before upgrade {upgrade}: not every client was answered by worker {worker}"
        );
        sup.ctl_ok(&["signal", "HUP", "hello"], "hello: signalled");
        let next = worker_pid(port, worker);
        assert!(
            wait_until(TIMEOUT, || !pid_alive(worker)),
            "upgrade {upgrade}: the old worker {worker} did not exit"
        );
        assert!(
            children_of(master).iter().any(|&(pid, _)| pid == next),
            "upgrade {upgrade}: the new worker {next} is not the master's child"
        );
        assert_eq!(
            sup.program_pid(),
            master,
            "upgrade {upgrade}: supervisord watches another pid"
        );
        let line = sup.wait_for_state("RUNNING", &format!("after upgrade {upgrade}"));
        assert!(
            line.contains(&format!("pid {master},")),
            "upgrade {upgrade}: {line}"
        );
        worker = next;
    }
    assert!(
        wait_until(TIMEOUT, || served_by(worker)),
        "not every client was answered by the last worker {worker}"
    );
    let mut counts = Vec::new();
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_across_upgrades(format!("supervisord {name}"), UPGRADES);
        assert!(
            !stats.pids.contains(&master),
            "the master answered a request"
        );
        counts.push(format!(
            "{name} {} ok / {} failed, {} workers",
            stats.successes,
            stats.failures,
            stats.pids.len()
        ));
    }

    // `supervisorctl stop` with a request in flight: SIGTERM to the master, which drains.
    let slow = RawRequest::send(port, &format!("/sleep/{SLOW_MS}"));
    assert!(
        slow.wait_accepted_by(worker, TIMEOUT),
        "the worker never took the slow request"
    );
    let response = slow.spawn_response();
    let stopping = Instant::now();
    sup.ctl_ok(&["stop", "hello"], "hello: stopped");
    let stopped = Instant::now();
    // The worker exits only once its drain is over, and the master only after its worker:
    // both gone when `stop` returns means supervisord waited for the drain.
    assert!(
        !pid_alive(master) && !pid_alive(worker),
        "supervisorctl stop returned while a process still ran (master {master} alive: {}, \
         worker {worker} alive: {})",
        pid_alive(master),
        pid_alive(worker)
    );
    let response = response
        .join()
        .expect("the response thread panicked")
        .expect("the request in flight at the stop failed");
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept {SLOW_MS} ms in pid {worker}\n")),
        "the request in flight at the stop"
    );
    let line = sup.wait_for_state("STOPPED", "after supervisorctl stop");
    assert!(
        sup.log().contains("stopped: hello (exit status 0)"),
        "supervisord did not log a clean exit:\n{}",
        sup.log()
    );
    assert!(port_closed(port), "port {port} still accepts connections");
    let log = sup.log();
    assert_eq!(
        log.matches("spawned: 'hello'").count(),
        1,
        "supervisord started the program more than once:\n{log}"
    );
    assert!(
        !log.contains("exited: hello"),
        "supervisord saw the program exit on its own:\n{log}"
    );

    send_signal(sup.peer.pid(), Signal::SIGTERM);
    let status = sup.peer.wait_exit(TIMEOUT);
    assert!(status.success(), "supervisord exited with {status}");
    println!(
        "supervisord: {UPGRADES} upgrades through `supervisorctl signal HUP hello`, master pid \
         {master} throughout, 0 failed requests ({}); stop drained a {SLOW_MS} ms request \
         (answered 200, stop took {:.2} s); {line}; {:.1} s",
        counts.join(", "),
        (stopped - stopping).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
