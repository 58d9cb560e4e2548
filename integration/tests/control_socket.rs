//! The control socket (issue 14): `hello upgrade|status` over `--control-socket PATH`, in
//! re-exec mode and with `--master`; failed upgrades reported with their reason while the old
//! generation serves every request; the socket open to its owner and root only; malformed
//! requests answered with an error and leaking nothing; many concurrent clients during an
//! upgrade.
//!
//! Real processes, real signals, real sockets. Every server is a `Server` (killed by pid when
//! the test ends); every client process is killed by pid if it outlives its deadline.

mod control_support;
mod fault_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use control_support::{
    exchange, fd_count, fd_listing, field, field_i64, run_ctl, spawn_ctl, status_line,
    ControlServer, Ctl,
};
use integration::{children_of, pid_alive, wait_for, wait_until, LoadClient, Mode, TIMEOUT};

/// How long the client may wait for an outcome (its `--timeout` default is 30 s).
const CTL_LIMIT: Duration = Duration::from_secs(40);

/// How long a failure noticed at once may take to be reported, on a loaded machine.
const PROMPT: Duration = Duration::from_secs(10);

/// Asserts a successful `hello upgrade`: exit 0, the progress lines `spawned`, `ready`,
/// `draining`, `drained` and then `{"result":"ok",...}` in that order, all naming the same new
/// pid and `generation`, and the closing `upgraded: ...` line. Returns the new pid.
fn assert_upgrade_ok(ctl: &Ctl, generation: i64) -> i32 {
    assert_eq!(
        ctl.code(),
        0,
        "`hello upgrade` failed: {:?}\nstderr: {}",
        ctl.stdout(),
        ctl.stderr
    );
    assert_eq!(
        ctl.kinds(),
        ["spawned", "ready", "draining", "drained", "result:ok"],
        "progress lines out of order: {:?}",
        ctl.stdout()
    );
    let (_, spawned) = ctl.event("spawned").expect("checked above");
    let (_, ready) = ctl.event("ready").expect("checked above");
    let (_, ok) = ctl.outcome().expect("checked above");
    let pid = field_i64(ok, "pid").unwrap_or_else(|| panic!("no pid in {ok}"));
    assert_eq!(field_i64(ok, "generation"), Some(generation), "{ok}");
    assert_eq!(field_i64(spawned, "pid"), Some(pid), "{spawned} vs {ok}");
    assert_eq!(
        field_i64(spawned, "generation"),
        Some(generation),
        "{spawned}"
    );
    assert_eq!(field_i64(ready, "pid"), Some(pid), "{ready} vs {ok}");
    assert_eq!(
        ctl.stdout().last().copied(),
        Some(format!("upgraded: generation {generation} serves as pid {pid}").as_str()),
        "{:?}",
        ctl.stdout()
    );
    assert!(ctl.stderr.is_empty(), "stderr: {}", ctl.stderr);
    i32::try_from(pid).expect("a pid")
}

/// The status line, through the real client, which must exit 0 and print one line.
fn status(server: &ControlServer) -> String {
    let ctl = server.ctl("status", CTL_LIMIT);
    assert_eq!(ctl.code(), 0, "`hello status` failed: {ctl:?}");
    assert_eq!(ctl.lines.len(), 1, "{:?}", ctl.stdout());
    ctl.lines[0].1.clone()
}

/// Asserts the fields of a status line.
fn assert_status(line: &str, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            field(line, key).as_deref(),
            Some(*value),
            "status field {key:?} in {line}"
        );
    }
}

/// Case 1 (re-exec mode): `hello upgrade` exits 0 once the new generation serves; its pid is
/// the one in the pid file and the one answering `GET /pid`, and the progress lines arrive in
/// order. `status` before and after names the serving process.
#[test]
fn upgrade_reports_progress_and_the_pid_that_serves() {
    let mut server = ControlServer::start("ctl-upgrade", &[]);
    let old = server.server.first_pid();
    let before = status(&server);
    assert_status(
        &before,
        &[
            ("pid", &old.to_string()),
            ("generation", "1"),
            ("state", "serving"),
            ("mode", "reexec"),
            ("upgrades_ok", "0"),
            ("upgrades_failed", "0"),
            ("last_failure", "null"),
        ],
    );

    let clients = [
        (
            "keep-alive",
            LoadClient::start(server.server.port(), Mode::KeepAlive),
        ),
        (
            "close",
            LoadClient::start(server.server.port(), Mode::Close),
        ),
    ];
    let ctl = server.ctl("upgrade", CTL_LIMIT);
    let new = assert_upgrade_ok(&ctl, 2);
    assert_ne!(new, old);
    eprintln!("upgrade took {:?}: {:?}", ctl.elapsed, ctl.stdout());
    // `ok` is sent once the old generation has drained: by then the pid file names the new one.
    assert_eq!(server.server.read_pid_file(), Some(new));
    assert_eq!(server.server.get_pid(), Ok(new));
    let exit = server.server.wait_exit(TIMEOUT);
    assert!(exit.success(), "the old generation exited with {exit}");
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_no_failure(name);
        assert!(stats.pids.contains(&new), "{name}: {:?}", stats.pids);
    }
    assert_status(
        &status(&server),
        &[
            ("pid", &new.to_string()),
            ("generation", "2"),
            ("state", "serving"),
            ("mode", "reexec"),
        ],
    );
}

/// Case 5 (`--master`): the master answers. `status` says mode `master`, the master's pid
/// (stable, the one in the pid file) and the worker's generation and pid; `hello upgrade`
/// reports the same progress and an `ok` naming the new worker, which answers `GET /pid`.
#[test]
fn master_answers_status_and_reports_the_new_worker() {
    let mut server = ControlServer::start("ctl-master", &["--master"]);
    let master = server.server.first_pid();
    assert_eq!(server.server.read_pid_file(), Some(master));
    let worker = wait_for(TIMEOUT, || server.server.get_pid().ok()).expect("no worker answers");
    assert_ne!(worker, master);
    assert_status(
        &status(&server),
        &[
            ("pid", &master.to_string()),
            ("generation", "1"),
            ("worker_pid", &worker.to_string()),
            ("state", "serving"),
            ("mode", "master"),
            ("upgrades_ok", "0"),
            ("upgrades_failed", "0"),
            ("last_failure", "null"),
        ],
    );

    let clients = [
        (
            "keep-alive",
            LoadClient::start(server.server.port(), Mode::KeepAlive),
        ),
        (
            "close",
            LoadClient::start(server.server.port(), Mode::Close),
        ),
    ];
    let ctl = server.ctl("upgrade", CTL_LIMIT);
    let new = assert_upgrade_ok(&ctl, 2);
    server.server.record_pid(new);
    assert!(new != worker && new != master, "ok names pid {new}");
    assert_eq!(server.server.get_pid(), Ok(new));
    assert_eq!(
        server.server.read_pid_file(),
        Some(master),
        "the master pid moved"
    );
    assert!(pid_alive(master));
    assert_eq!(server.server.try_wait(), None, "the master exited");
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker)),
        "the old worker {worker} is still running"
    );
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_no_failure(name);
        assert!(stats.pids.contains(&new), "{name}: {:?}", stats.pids);
    }
    assert_status(
        &status(&server),
        &[
            ("pid", &master.to_string()),
            ("generation", "2"),
            ("worker_pid", &new.to_string()),
            ("state", "serving"),
            ("mode", "master"),
            ("upgrades_ok", "1"),
            ("upgrades_failed", "0"),
        ],
    );
    assert_eq!(
        field(&status(&server), "draining_workers").as_deref(),
        Some("[]")
    );
}

/// Case 2: the new binary exits at start (`exit 3`), never becomes ready (`--ready-delay
/// 600s`, with `--upgrade-timeout 2s`), or fails its readiness gate (`--ready-fail`).
/// `hello upgrade` exits 1 within the timeout with the reason on stderr; the old generation
/// serves every request of two strict load clients throughout; `status` counts the failures
/// and shows the last one.
#[test]
fn failed_upgrades_report_the_reason_while_the_old_generation_serves() {
    let server = ControlServer::start("ctl-failed", &["--upgrade-timeout", "2s"]);
    let old = server.server.first_pid();
    let clients = [
        (
            "keep-alive",
            LoadClient::start(server.server.port(), Mode::KeepAlive),
        ),
        (
            "close",
            LoadClient::start(server.server.port(), Mode::Close),
        ),
    ];
    let hello = integration::examples().hello.display().to_string();
    // (wrapper body, what the reason says, the shortest and longest time to the outcome)
    let cases = [
        (
            "exit 3".to_owned(),
            "ended (exit status: 3) before it reported ready",
            Duration::ZERO,
            PROMPT,
        ),
        (
            format!("exec '{hello}' --ready-delay 600s \"$@\""),
            "did not report ready within 2s",
            Duration::from_secs(2),
            Duration::from_secs(2) + PROMPT,
        ),
        (
            format!("exec '{hello}' \"$@\" --ready-fail"),
            "is not ready: readiness gate failed: --ready-fail was given",
            Duration::ZERO,
            PROMPT,
        ),
    ];
    for (count, (body, reason, shortest, longest)) in cases.iter().enumerate() {
        integration::replace_with_script(&server.binary, body);
        let ctl = server.ctl("upgrade", CTL_LIMIT);
        eprintln!(
            "`{body}`: exit {:?} after {:?}; stdout {:?}; stderr {:?}",
            ctl.status.code(),
            ctl.elapsed,
            ctl.stdout(),
            ctl.stderr
        );
        assert_eq!(ctl.code(), 1, "`{body}`: {ctl:?}");
        assert!(
            ctl.elapsed >= *shortest && ctl.elapsed <= *longest,
            "`{body}`: the outcome came after {:?}, not within [{shortest:?}, {longest:?}]",
            ctl.elapsed
        );
        assert_eq!(ctl.kinds(), ["spawned", "result:failed"], "`{body}`");
        let (_, spawned) = ctl.event("spawned").expect("checked above");
        let child = field_i64(spawned, "pid").expect("spawned has a pid");
        assert_eq!(field_i64(spawned, "generation"), Some(2), "{spawned}");
        let (_, outcome) = ctl.outcome().expect("checked above");
        let why = field(outcome, "reason").expect("a failure has a reason");
        assert_eq!(why, format!("new process {child} {reason}"), "`{body}`");
        assert_eq!(ctl.stderr.trim_end(), format!("error: {why}"), "`{body}`");
        assert!(
            wait_until(PROMPT, || children_of(old).is_empty()),
            "`{body}`: the failed generation was not reaped: {:?}",
            children_of(old)
        );

        let after = status(&server);
        assert_status(
            &after,
            &[
                ("pid", &old.to_string()),
                ("generation", "1"),
                ("state", "serving"),
                ("upgrades_ok", "0"),
                ("upgrades_failed", &(count + 1).to_string()),
                ("last_failure", &why),
            ],
        );
        assert_eq!(server.server.read_pid_file(), Some(old), "`{body}`");
    }
    for (name, client) in &clients {
        let before = client.stats().successes;
        assert!(
            wait_until(TIMEOUT, || client.stats().successes >= before + 10),
            "{name} client made no progress"
        );
    }
    for (name, client) in clients {
        let stats = client.stop();
        eprintln!(
            "{name} client: {} requests, {} failed",
            stats.successes, stats.failures
        );
        stats.assert_all_served_by(name, old);
    }
    assert_eq!(server.server.get_pid(), Ok(old));
}

/// The uid and gid of `nobody`.
fn nobody() -> (u32, u32) {
    // SAFETY: getpwnam with a NUL-terminated name; the result is read at once, before any other
    // call that could reuse its static buffer (the tests do not call getpw* elsewhere).
    unsafe {
        let entry = libc::getpwnam(c"nobody".as_ptr());
        assert!(!entry.is_null(), "no user `nobody`");
        ((*entry).pw_uid, (*entry).pw_gid)
    }
}

/// Case 4: the socket has mode 0600 and belongs to the server's user. Another user (`nobody`)
/// cannot connect through the file mode (the client exits 2 and prints nothing); with the
/// file mode opened (0666), the server itself refuses it by its peer credentials: the client
/// gets `{"result":"refused",...}` and exits 1, and no upgrade is started.
#[test]
fn only_the_owner_and_root_may_use_the_socket() {
    let server = ControlServer::start("ctl-owner", &[]);
    let old = server.server.first_pid();
    let meta = fs::metadata(&server.socket).expect("the control socket exists");
    assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "socket mode");
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(meta.uid(), euid, "the socket's owner");
    if euid != 0 {
        eprintln!("not root: cannot run a client as another user; skipping that part");
        return;
    }
    let (uid, gid) = nobody();
    let reuid = format!("--reuid={uid}");
    let regid = format!("--regid={gid}");
    let as_nobody = ["setpriv", reuid.as_str(), regid.as_str(), "--clear-groups"];

    // Mode 0600: nobody cannot even connect.
    for command in ["status", "upgrade"] {
        let ctl = run_ctl(&as_nobody, command, &server.socket, &[], CTL_LIMIT);
        eprintln!("0600, {command} as nobody: {ctl:?}");
        assert_eq!(ctl.code(), 2, "{command} as nobody: {ctl:?}");
        assert!(
            ctl.lines.is_empty(),
            "{command} as nobody printed {:?}",
            ctl.stdout()
        );
        assert!(
            ctl.stderr
                .contains("connecting to the control socket: Permission denied"),
            "{command} as nobody: {}",
            ctl.stderr
        );
    }

    // Mode 0666: the server refuses by peer credentials.
    fs::set_permissions(&server.socket, fs::Permissions::from_mode(0o666)).expect("chmod 0666");
    let refusal =
        format!("uid {uid} refused: only uid {euid} (the owner) and root may use this socket");
    let ctl = run_ctl(&as_nobody, "status", &server.socket, &[], CTL_LIMIT);
    eprintln!("0666, status as nobody: {ctl:?}");
    assert_eq!(ctl.code(), 1, "status as nobody: {ctl:?}");
    assert!(
        ctl.lines.is_empty(),
        "status as nobody printed {:?}",
        ctl.stdout()
    );
    assert_eq!(ctl.stderr.trim_end(), format!("error: {refusal}"));

    let ctl = run_ctl(&as_nobody, "upgrade", &server.socket, &[], CTL_LIMIT);
    eprintln!("0666, upgrade as nobody: {ctl:?}");
    assert_eq!(ctl.code(), 1, "upgrade as nobody: {ctl:?}");
    assert_eq!(ctl.kinds(), ["result:refused"], "{:?}", ctl.stdout());
    assert_eq!(field(&ctl.lines[0].1, "reason"), Some(refusal.clone()));
    assert_eq!(ctl.stderr.trim_end(), format!("error: {refusal}"));
    assert_eq!(
        server
            .server
            .log_count(&format!("control socket: {refusal}")),
        2,
        "the server did not log both refusals"
    );
    assert!(
        !server.server.log_contains("upgrading: starting generation"),
        "a refused client started an upgrade"
    );
    // The owner still may, and nothing changed.
    assert_status(
        &status(&server),
        &[
            ("pid", &old.to_string()),
            ("generation", "1"),
            ("upgrades_failed", "0"),
        ],
    );
    assert_eq!(server.server.get_pid(), Ok(old));
}

/// Waits until `pid` has `expected` descriptors open; panics with both listings otherwise.
fn assert_fds_settle(pid: i32, expected: usize, baseline: &[String], what: &str) {
    let mut count = 0;
    let settled = wait_until(PROMPT, || {
        count = fd_count(pid);
        count == expected
    });
    assert!(
        settled,
        "after {what}: pid {pid} has {count} descriptors open instead of {expected}\n\
         before: {baseline:#?}\nnow: {:#?}",
        fd_listing(pid)
    );
}

/// Asserts that an exchange got exactly one `{"result":"error",...}` line whose reason
/// contains `reason`, and then the end of the stream (`eof`), or a reset where the server
/// closes with part of the request unread (a line longer than the limit).
fn assert_error_then_close(what: &str, got: &control_support::Exchange, reason: &str) {
    assert_eq!(got.lines.len(), 1, "{what}: {got:?}");
    assert_eq!(
        field(&got.lines[0], "result").as_deref(),
        Some("error"),
        "{what}: {got:?}"
    );
    let why = field(&got.lines[0], "reason").unwrap_or_default();
    assert!(
        why.contains(reason),
        "{what}: the reason {why:?} does not say {reason:?}"
    );
    let closed: &[&str] = if why.contains("longer than") {
        &["eof", "ConnectionReset"]
    } else {
        &["eof"]
    };
    assert!(
        closed.contains(&got.end.as_str()),
        "{what}: the connection was not closed ({closed:?}): {got:?}"
    );
}

/// Case 4: garbage, unknown commands, oversized lines (4097 bytes, and 8 MiB) and half-written
/// requests (closed without a newline; or left open, until the 5 s timeout) each get an error
/// line or a close, the server serves on, and its descriptor count is what it was.
#[test]
fn malformed_requests_get_an_error_and_leak_no_descriptor() {
    let server = ControlServer::start("ctl-malformed", &[]);
    let pid = server.server.first_pid();
    let socket = &server.socket;
    // One request first, so that whatever the first client sets up once is in the baseline.
    status(&server);
    let baseline_listing = fd_listing(pid);
    let baseline = baseline_listing.len();
    eprintln!("pid {pid}: {baseline} descriptors open before");
    let read = Duration::from_secs(10);

    let mut oversized = vec![b'x'; 4097];
    oversized.push(b'\n');
    let cases: [(&str, Vec<u8>, &str); 7] = [
        ("garbage", b"rm -rf /\n".to_vec(), "not a request"),
        ("bad JSON", b"{not json\n".to_vec(), "not JSON"),
        ("not UTF-8", b"\xff\xfe\xfd\n".to_vec(), "not UTF-8"),
        (
            "unknown command",
            b"{\"command\":\"reboot\"}\n".to_vec(),
            "unknown command \"reboot\"",
        ),
        (
            "no command",
            b"{\"cmd\":\"status\"}\n".to_vec(),
            "no \"command\"",
        ),
        ("empty line", b"\n".to_vec(), "not a request"),
        (
            "4097-byte line",
            oversized,
            "request longer than 4096 bytes",
        ),
    ];
    for (what, request, reason) in &cases {
        let got = exchange(socket, request, false, read);
        eprintln!("{what}: {got:?}");
        assert_error_then_close(what, &got, reason);
    }

    // Half-written, then the writing side shut: an error line (no newline) and a close.
    let got = exchange(socket, b"{\"command\":\"sta", true, read);
    eprintln!("half-written, shut: {got:?}");
    assert_error_then_close("half-written", &got, "not terminated by a newline");
    // Connected and closed without a byte.
    let got = exchange(socket, b"", true, read);
    eprintln!("nothing, shut: {got:?}");
    assert_error_then_close("nothing", &got, "no request");
    // Half-written, then closed entirely without reading: the server's answer goes nowhere.
    {
        let mut stream = UnixStream::connect(socket).expect("connect");
        stream.write_all(b"{\"command\":\"upg").expect("write");
    }
    assert_fds_settle(
        pid,
        baseline,
        &baseline_listing,
        "the half-written, closed request",
    );

    // 8 MiB without a newline, written by one thread while this one reads: an error line or a
    // close (a reset, since the server closes with unread data), and no hang.
    let stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(read)).expect("timeout");
    stream.set_write_timeout(Some(read)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let written = thread::spawn(move || {
        let chunk = vec![b'y'; 64 * 1024];
        let mut total = 0usize;
        for _ in 0..128 {
            match writer.write_all(&chunk) {
                Ok(()) => total += chunk.len(),
                Err(e) => return (total, Some(format!("{:?}", e.kind()))),
            }
        }
        (total, None)
    });
    let started = Instant::now();
    let got = control_support::read_all_lines(stream);
    let (total, write_error) = written.join().expect("writer thread");
    eprintln!(
        "8 MiB line: {got:?} after {:?}; wrote {total} bytes, then {write_error:?}",
        started.elapsed()
    );
    assert!(
        got.end == "eof" || got.end == "ConnectionReset",
        "8 MiB: {got:?}"
    );
    assert!(got.lines.len() <= 1, "8 MiB: {got:?}");
    if let Some(line) = got.lines.first() {
        assert_eq!(field(line, "result").as_deref(), Some("error"), "{line}");
        assert!(line.contains("request longer than 4096 bytes"), "{line}");
    }
    assert!(
        write_error.is_some(),
        "the server read all 8 MiB of a line limited to 4096 bytes"
    );
    assert_fds_settle(pid, baseline, &baseline_listing, "the 8 MiB line");

    // Half-written and left open: an error line after the 5 s read timeout, then a close.
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(read)).expect("timeout");
    stream.write_all(b"{\"command\":").expect("write");
    let got = control_support::read_all_lines(stream);
    let waited = started.elapsed();
    eprintln!("half-written, left open: {got:?} after {waited:?}");
    assert_error_then_close("half-written, left open", &got, "reading the request");
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(9),
        "the silent client was answered after {waited:?}, not after the 5 s timeout"
    );

    assert_fds_settle(pid, baseline, &baseline_listing, "every malformed request");
    assert_eq!(fd_count(pid), baseline);
    assert_status(
        &status(&server),
        &[
            ("pid", &pid.to_string()),
            ("state", "serving"),
            ("generation", "1"),
        ],
    );
    assert_eq!(server.server.get_pid(), Ok(pid));
    assert!(
        !server.server.log_contains("upgrading: starting generation"),
        "a malformed request started an upgrade"
    );
    assert!(
        !server.server.log_contains("panicked"),
        "a panic was logged"
    );
}

/// Case 4: 100 clients asking for the status at once, again and again, while an upgrade runs
/// (its new generation held 1 s in its readiness gate, so that the old one answers `upgrading`
/// meanwhile). Every request gets a status line, from the old or the new generation, with
/// that generation's number; none hangs.
#[test]
fn hundred_concurrent_status_clients_during_an_upgrade() {
    const CLIENTS: usize = 100;
    const PACE: Duration = Duration::from_millis(50);
    let server = ControlServer::start("ctl-concurrent", &[]);
    let old = server.server.first_pid();
    server.upgrade_with_flags("--ready-delay 1s");

    let upgrade_done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let deadline = Instant::now() + Duration::from_secs(45);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let socket = server.socket.clone();
            let done = Arc::clone(&upgrade_done);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut answers = Vec::new();
                // Until the upgrade is over, and one more after it.
                loop {
                    let last = done.load(Ordering::SeqCst);
                    let asked = Instant::now();
                    let answer = status_line(&socket, Duration::from_secs(10));
                    answers.push((asked.elapsed(), answer));
                    if last || Instant::now() > deadline {
                        return answers;
                    }
                    thread::sleep(PACE);
                }
            })
        })
        .collect();
    start.wait();
    let ctl = spawn_ctl("upgrade", server.socket.clone(), CTL_LIMIT)
        .join()
        .expect("client thread");
    upgrade_done.store(true, Ordering::SeqCst);
    let new = assert_upgrade_ok(&ctl, 2);
    server.server.record_pid(new);

    let mut by: BTreeMap<(i32, String), usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut total = 0;
    for thread in threads {
        let answers = thread.join().expect("status thread");
        assert!(
            answers.len() >= 2,
            "a client made {} requests",
            answers.len()
        );
        for (took, answer) in answers {
            total += 1;
            slowest = slowest.max(took);
            let line = answer.unwrap_or_else(|e| panic!("a status request failed: {e}"));
            let pid = field_i64(&line, "pid").unwrap_or_else(|| panic!("no pid in {line}"));
            let generation = field_i64(&line, "generation");
            let state = field(&line, "state").unwrap_or_default();
            match i32::try_from(pid).expect("pid") {
                p if p == old => assert_eq!(generation, Some(1), "{line}"),
                p if p == new => assert_eq!(generation, Some(2), "{line}"),
                other => panic!("status from pid {other}, neither {old} nor {new}: {line}"),
            }
            *by.entry((pid as i32, state)).or_default() += 1;
        }
    }
    eprintln!(
        "{total} status requests from {CLIENTS} clients, slowest {slowest:?}; (pid, state): {by:?}; upgrade took {:?}",
        ctl.elapsed
    );
    assert!(
        by.keys()
            .any(|(pid, state)| *pid == old && state == "upgrading"),
        "no request was answered by the old generation while it upgraded: {by:?}"
    );
    assert!(
        by.keys().any(|(pid, _)| *pid == new),
        "no request was answered by the new generation: {by:?}"
    );
}
