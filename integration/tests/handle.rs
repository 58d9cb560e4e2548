//! Issue 14: `Handle::upgrade_and_wait`, the awaitable upgrade, from a request handler of the
//! old generation (`hello --admin-routes`: `POST /admin/upgrade`): it answers once the new
//! generation serves, with its pid, or with the reason the upgrade failed.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration::{
    examples, pid_alive, read_response, replace_with_copy, replace_with_script, wait_until,
    HttpResponse, Server, TempDir, TIMEOUT,
};

/// `POST /admin/upgrade` on `port`, strictly read.
fn post_upgrade(port: u16) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream
        .write_all(
            b"POST /admin/upgrade HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .expect("sending the request");
    read_response(&mut BufReader::new(stream)).expect("a complete response")
}

#[test]
fn awaitable_upgrade_answers_with_the_new_generation_or_the_reason() {
    let dir = TempDir::new("handle-upgrade");
    let binary = dir.join("hello");
    replace_with_copy(&binary, &examples().hello);
    let server = Server::start_in(dir, &binary, &["--admin-routes"]);
    let first = server.first_pid();

    let response = post_upgrade(server.port());
    assert_eq!(response.status, 200, "{}", response.body);
    let second = server.wait_for_new_pid(first, TIMEOUT);
    assert_eq!(
        response.body,
        format!("upgraded: generation 2 serves as pid {second}\n")
    );
    assert_eq!(server.get_pid(), Ok(second));
    assert!(
        wait_until(TIMEOUT, || !pid_alive(first)),
        "the old generation {first} did not exit after answering"
    );

    // A build that exits at start: the answer says so, and the serving generation stays.
    replace_with_script(&binary, "exit 3");
    let response = post_upgrade(server.port());
    assert_eq!(response.status, 409, "{}", response.body);
    assert!(
        response.body.contains("exit status: 3"),
        "the reason is missing: {}",
        response.body
    );
    assert_eq!(server.get_pid(), Ok(second));
    assert_eq!(server.read_pid_file(), Some(second));
}
