//! SIGHUP upgrades: a new process takes over the listening socket, the old one drains its
//! in-flight requests and exits.

use integration::{examples, replace_with_copy, send_signal, RawRequest, Server, TempDir, TIMEOUT};
use nix::sys::signal::Signal;

/// The body of `GET /` for the hello examples.
fn hello(pid: i32, generation: u32, release: &str) -> (u16, String) {
    (
        200,
        format!("hello from pid {pid}, generation {generation}, release {release}\n"),
    )
}

#[test]
fn sighup_replaces_the_process() {
    let mut server = Server::start(&examples().hello, &[]);
    let old = server.first_pid();
    assert_eq!(server.get("/").expect("GET /"), hello(old, 1, "v1"));
    assert_eq!(server.read_pid_file(), Some(old));

    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);

    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    // The new process writes the pid file before it reports ready, and the old one exits
    // only after that.
    assert_eq!(server.read_pid_file(), Some(new));
    assert_eq!(server.get("/").expect("GET /"), hello(new, 2, "v1"));
}

#[test]
fn in_flight_request_finishes_on_the_old_process() {
    let mut server = Server::start(&examples().hello, &[]);
    let old = server.first_pid();

    let request = RawRequest::send(server.port(), "/sleep/3000");
    assert!(
        request.wait_accepted_by(old, TIMEOUT),
        "the old process did not accept the request"
    );
    let response = request.spawn_response();

    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);

    // Only the old process holds this connection: had it exited (or been forced to close)
    // before answering, the read would end in an end of stream or a reset.
    let response = response
        .join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("the in-flight request failed: {e}"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, format!("slept 3000 ms in pid {old}\n"));

    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    assert_eq!(server.read_pid_file(), Some(new));
    assert_eq!(server.get("/").expect("GET /"), hello(new, 2, "v1"));
}

#[test]
fn sighup_runs_the_replaced_binary() {
    let dir = TempDir::new("hot-swap");
    let binary = dir.join("hello");
    replace_with_copy(&binary, &examples().hello);
    let mut server = Server::start_in(dir, &binary, &[]);
    let old = server.first_pid();
    assert_eq!(server.get("/").expect("GET /"), hello(old, 1, "v1"));

    replace_with_copy(&binary, &examples().hello_v2);
    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);

    // Until the new process reports ready, the old one still accepts connections from the
    // shared listening socket; once it has exited, only the new release answers.
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    assert_eq!(server.get("/").expect("GET /"), hello(new, 2, "v2"));
}
