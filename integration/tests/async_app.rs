//! Issue 12: a real async actix-web application (`examples/async_app.rs`: `#[actix_web::main]`,
//! setup that connects to a backend, `.run().await`) upgraded under load; its setup failing
//! in a new generation; readiness gates that fail or time out; setup in master mode.
//!
//! The backend is a small line server in the test process ([`Backend`]). Real processes, real
//! signals, real sockets; every process a test starts is killed by pid when it ends
//! (`Server`), and the backend stops with its guard.

mod fault_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use fault_support::{
    let_clients_progress, link_binary, load_clients, no_stray_fds, UPGRADE_FAILED,
};
use integration::{
    examples, pid_alive, replace_with_script, send_signal, wait_until, LoadClient, Server, TempDir,
    TIMEOUT,
};
use nix::sys::signal::Signal;

/// The `async_app` example, built with the others.
fn async_app() -> PathBuf {
    examples().hello.with_file_name("async_app")
}

/// A line server standing in for a database: answers `hello` with `welcome test-backend`
/// (unless it is [`Backend::refuse_handshakes`]: then it closes the connection) and `ping`
/// with `pong`. Stops accepting when dropped.
struct Backend {
    addr: String,
    refusing: Arc<AtomicBool>,
    handshakes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the backend");
        let addr = listener.local_addr().expect("backend address").to_string();
        let refusing = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (refusing2, handshakes2, stop2) = (refusing.clone(), handshakes.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (refusing, handshakes) = (refusing2.clone(), handshakes2.clone());
                thread::spawn(move || serve_backend(stream, &refusing, &handshakes));
            }
        });
        Backend {
            addr,
            refusing,
            handshakes,
            stop,
        }
    }

    /// From now on, `hello` gets the connection closed instead of a greeting (pings on
    /// connections opened before or after still work).
    fn refuse_handshakes(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// How many greetings it sent.
    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve_backend(stream: TcpStream, refusing: &AtomicBool, handshakes: &AtomicUsize) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let answer = match line.as_str() {
            "hello" if refusing.load(Ordering::SeqCst) => return,
            "hello" => {
                handshakes.fetch_add(1, Ordering::SeqCst);
                "welcome test-backend\n"
            }
            "ping" => "pong\n",
            _ => "error\n",
        };
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// `async_app` started from its own hard link in the server's directory (so that a test can
/// replace what an upgrade runs), talking to `backend`.
fn start(label: &str, backend: &Backend, args: &[&str]) -> (Server, PathBuf) {
    no_stray_fds();
    let dir = TempDir::new(label);
    let binary = dir.join("async_app");
    link_binary(&binary, &async_app());
    let mut all = vec!["--backend", backend.addr.as_str()];
    all.extend_from_slice(args);
    let server = Server::start_in(dir, &binary, &all);
    (server, binary)
}

/// SIGHUPs `old` and waits for the `count`-th `upgrade failed` line, logged by `old`, which
/// is returned.
fn failed_upgrade(server: &Server, old: i32, count: usize) -> String {
    send_signal(old, Signal::SIGHUP);
    assert!(
        server.wait_for_log(UPGRADE_FAILED, count, TIMEOUT),
        "`{UPGRADE_FAILED}` was not logged {count} time(s)"
    );
    let line = server
        .log()
        .lines()
        .filter(|line| line.contains(UPGRADE_FAILED))
        .nth(count - 1)
        .expect("counted above")
        .to_owned();
    assert!(
        line.contains(&format!("pid {old} generation 1: ")),
        "the failure was not logged by the old process: {line}"
    );
    line
}

/// Upgrades `old` and waits until the new generation serves and `old` has exited.
fn good_upgrade(server: &Server, old: i32) -> i32 {
    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || !pid_alive(old)),
        "generation {old} did not finish its drain"
    );
    assert!(
        wait_until(TIMEOUT, || server.read_pid_file() == Some(new)),
        "the pid file does not name {new}"
    );
    new
}

/// The end of every failed-upgrade case: the old process served every request of both
/// clients (the new one none), and a later good upgrade works.
fn old_served_throughout_then_upgrades(
    server: &mut Server,
    old: i32,
    clients: [(&'static str, LoadClient); 2],
) {
    let_clients_progress(&clients, 10);
    for (name, client) in clients {
        client.stop().assert_all_served_by(name, old);
    }
    assert_eq!(server.read_pid_file(), Some(old));
    let new = good_upgrade(server, old);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    let (status, body) = server.get("/").expect("GET / after the good upgrade");
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!(
            "hello from pid {new}, generation 2, backend test-backend: pong"
        )),
        "{body}"
    );
}

#[test]
fn ten_upgrades_under_load_fail_no_request() {
    let backend = Backend::start();
    let (server, _) = start("async-ten", &backend, &["--workers", "2"]);
    let first = server.first_pid();
    let (status, body) = server.get("/").expect("GET /");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("hello from pid {first}, generation 1, backend test-backend: pong\n")
    );
    let clients = load_clients(&server);
    let mut current = first;
    for _ in 0..10 {
        let_clients_progress(&clients, 5);
        current = good_upgrade(&server, current);
    }
    let_clients_progress(&clients, 5);
    for (name, client) in clients {
        client.stop().assert_across_upgrades(name, 10);
    }
    assert_eq!(server.log_count(UPGRADE_FAILED), 0, "an upgrade failed");
    assert_eq!(backend.handshakes(), 11, "one setup per generation");
    let (_, body) = server.get("/").expect("GET /");
    assert!(body.contains("generation 11,"), "{body}");
}

/// The same application under `#[tokio::main]` (`examples/async_app_tokio.rs`): upgrades under
/// load lose nothing there either.
#[test]
fn tokio_main_variant_upgrades_under_load() {
    let backend = Backend::start();
    let dir = TempDir::new("async-tokio");
    let binary = dir.join("async_app_tokio");
    link_binary(&binary, &examples().hello.with_file_name("async_app_tokio"));
    let server = Server::start_in(
        dir,
        &binary,
        &["--backend", backend.addr.as_str(), "--workers", "2"],
    );
    let first = server.first_pid();
    let (status, body) = server.get("/").expect("GET /");
    assert_eq!(
        (status, body),
        (
            200,
            format!("hello from pid {first}, generation 1, backend test-backend: pong\n")
        )
    );
    let clients = load_clients(&server);
    let mut current = first;
    for _ in 0..3 {
        let_clients_progress(&clients, 5);
        current = good_upgrade(&server, current);
    }
    let_clients_progress(&clients, 5);
    for (name, client) in clients {
        client.stop().assert_across_upgrades(name, 3);
    }
    assert_eq!(server.log_count(UPGRADE_FAILED), 0, "an upgrade failed");
    assert_eq!(backend.handshakes(), 4, "one setup per generation");
}

#[test]
fn forced_setup_error_fails_the_upgrade_with_its_reason() {
    let backend = Backend::start();
    let dir_marker = TempDir::new("async-forced-marker");
    let marker = dir_marker.join("fail");
    let marker_arg = marker.to_str().expect("UTF-8 path");
    let (mut server, _) = start("async-forced", &backend, &["--fail-setup-if", marker_arg]);
    let old = server.first_pid();
    let clients = load_clients(&server);
    std::fs::write(&marker, b"").expect("creating the marker");
    let line = failed_upgrade(&server, old, 1);
    assert!(
        line.contains("is not ready: setup failed: forced by") && line.contains("--fail-setup-if"),
        "the reason is not in the old generation's log: {line}"
    );
    std::fs::remove_file(&marker).expect("removing the marker");
    old_served_throughout_then_upgrades(&mut server, old, clients);
}

#[test]
fn backend_refusing_the_new_generation_fails_the_upgrade() {
    let backend = Backend::start();
    let (mut server, _) = start("async-backend-down", &backend, &[]);
    let old = server.first_pid();
    let clients = load_clients(&server);
    backend.refuse_handshakes(true);
    let line = failed_upgrade(&server, old, 1);
    assert!(
        line.contains("setup failed: the backend closed the connection"),
        "the reason is not in the old generation's log: {line}"
    );
    assert_eq!(
        backend.handshakes(),
        1,
        "only the first generation connected"
    );
    backend.refuse_handshakes(false);
    old_served_throughout_then_upgrades(&mut server, old, clients);
}

/// Replaces `binary` with a script that runs the real example with `extra` arguments.
fn with_extra_args(binary: &Path, extra: &str) {
    let real = async_app();
    replace_with_script(binary, &format!("exec '{}' {extra} \"$@\"", real.display()));
}

#[test]
fn failing_readiness_gate_fails_the_upgrade_and_a_later_one_works() {
    let backend = Backend::start();
    let (mut server, binary) = start("async-gate-fail", &backend, &[]);
    let old = server.first_pid();
    let clients = load_clients(&server);
    with_extra_args(&binary, "--ready-fail");
    let line = failed_upgrade(&server, old, 1);
    assert!(
        line.contains("readiness gate failed: --ready-fail was given"),
        "{line}"
    );
    link_binary(&binary, &async_app());
    old_served_throughout_then_upgrades(&mut server, old, clients);
}

#[test]
fn readiness_gate_timing_out_fails_the_upgrade_and_a_later_one_works() {
    let backend = Backend::start();
    let (mut server, binary) = start("async-gate-slow", &backend, &["--upgrade-timeout", "3s"]);
    let old = server.first_pid();
    let clients = load_clients(&server);
    with_extra_args(&binary, "--ready-delay 60s");
    let line = failed_upgrade(&server, old, 1);
    assert!(line.contains("did not report ready within 3s"), "{line}");
    link_binary(&binary, &async_app());
    old_served_throughout_then_upgrades(&mut server, old, clients);
}

/// The pids in the setup trace, one line per setup run.
fn traced(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| line.parse().expect("a pid per line"))
        .collect()
}

#[test]
fn master_mode_runs_the_setup_in_each_worker_and_never_in_the_master() {
    let backend = Backend::start();
    let trace_dir = TempDir::new("async-master-trace");
    let trace = trace_dir.join("setup");
    let trace_arg = trace.to_str().expect("UTF-8 path");
    let (server, _) = start(
        "async-master",
        &backend,
        &["--master", "--setup-trace", trace_arg],
    );
    let master = server.first_pid();
    let worker1 = server.get_pid().expect("GET /pid");
    assert_ne!(worker1, master);
    assert_eq!(
        traced(&trace),
        vec![worker1],
        "setup runs once, in the worker"
    );

    send_signal(master, Signal::SIGHUP);
    let worker2 = server.wait_for_new_pid(worker1, TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker1)),
        "the first worker did not finish"
    );
    assert_eq!(traced(&trace), vec![worker1, worker2]);
    assert_eq!(backend.handshakes(), 2, "the master never connected");
    assert!(pid_alive(master));
    assert_eq!(server.read_pid_file(), Some(master));
    let pids: BTreeSet<i32> = traced(&trace).into_iter().collect();
    assert!(!pids.contains(&master));
}

/// The README's Embedding snippet is `examples/embedding.rs`'s `main`, which `make test`
/// builds: the snippet compiles.
#[test]
fn readme_embedding_snippet_is_the_compiled_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let example =
        std::fs::read_to_string(root.join("examples/embedding.rs")).expect("embedding.rs");
    let chain = readme
        .find("    actix_endless::Endless::new(move ||")
        .expect("the README's Embedding section shows the async main");
    let start = readme[..chain]
        .rfind("#[actix_web::main]")
        .expect("the start of main");
    let end = chain + readme[chain..].find("\n}\n").expect("the end of main") + 3;
    let snippet = &readme[start..end];
    assert!(snippet.contains("actix_endless::Endless::new"), "{snippet}");
    assert!(
        example.contains(snippet),
        "examples/embedding.rs does not hold the README's snippet:\n{snippet}"
    );
}
