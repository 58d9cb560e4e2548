//! Debian's nginx (package `nginx-light`) as the reverse proxy in front of `hello` on a Unix
//! socket, configured with the README's guide "Behind nginx on a Unix socket": its `nginx`
//! block is read from `README.md` and used as it is, but for the socket path and the listen
//! address. Upstream keep-alive is on (`keepalive 32`, HTTP/1.1, no `Connection` header).
//!
//! Ten upgrades (SIGHUP to the pid in hello's pid file) under a keep-alive and a
//! connection-per-request client through nginx, each generation serving 200 requests per
//! client first; then one upgrade with no load, when nginx holds only idle upstream
//! connections: nginx closes them after its upstream `keepalive_timeout` (4 s), before the old
//! generation would (its idle close waits for the app's 5 s keep-alive timeout), so the old
//! generation never closes a connection nginx may be sending on.
//!
//! What an operator would not see on the client side is checked too: nginx silently retries
//! a request that failed on a cached upstream keep-alive connection, so besides "every client
//! request answered 200" the test requires that nginx's error log holds no upstream error and
//! that its access log shows exactly one upstream attempt, answered 200, per request.
//!
//! nginx runs in the foreground (`daemon off;`) as a child of the test, with every file in a
//! temporary directory. It listens on an ephemeral port without a race: nginx refuses port 0,
//! so the test binds `127.0.0.1:0` itself and hands the listening socket over with nginx's own
//! inheritance protocol (`NGINX="fd;"`, what its binary upgrade uses), while the
//! configuration says `listen 127.0.0.1:PORT`; nginx adopts the inherited socket that
//! matches the address instead of binding one.
//!
//! Permissions as the guide says: run as root (the CI does), nginx's workers are `www-data`,
//! the socket is created with mode 0660 (`--socket-mode 660`) in a set-group-id directory of
//! group `www-data`, so the socket file belongs to that group. Without root (or without a
//! `www-data` account) the workers run as the test's user (or root).

mod peer_support;

use std::fs;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Instant;

use integration::{
    examples, get, pid_alive, send_signal, wait_for, wait_until, LoadClient, Mode, Server, TempDir,
    TIMEOUT,
};
use nix::sys::signal::Signal;
use peer_support::{find_tool, readme_block, replace_once, skip, Peer};

const UPGRADES: usize = 10;

/// Requests each client makes through nginx to a generation before it is replaced.
const PER_GENERATION: u64 = 200;

/// The README section whose `nginx` block is the configuration under test.
const GUIDE: &str = "### Behind nginx on a Unix socket";

/// What nginx's error log must not contain.
const UPSTREAM_ERRORS: [&str; 7] = [
    "upstream",
    "connect() failed",
    "recv() failed",
    "prematurely closed",
    "[error]",
    "[crit]",
    "[alert]",
];

/// The numeric id of `name` in `/etc/passwd` or `/etc/group` (third field).
fn account_id(file: &str, name: &str) -> Option<u32> {
    fs::read_to_string(file).ok()?.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// How nginx's workers get to the socket: the `user` line of the configuration, and the
/// group the socket's directory hands down to the socket file (`None`: leave it).
fn worker_access() -> (&'static str, Option<u32>) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // The `user` directive needs root; the workers run as the test's user.
        return ("", None);
    }
    match (
        account_id("/etc/passwd", "www-data"),
        account_id("/etc/group", "www-data"),
    ) {
        (Some(_), Some(gid)) => ("user www-data;", Some(gid)),
        _ => {
            eprintln!("note: no www-data account; nginx's workers run as root");
            ("user root;", None)
        }
    }
}

/// nginx's configuration: the test's settings (foreground, every path in `dir`, an access log
/// of upstream attempts), then the README's block with the socket path and the listen address
/// replaced.
fn nginx_conf(dir: &Path, user: &str, socket: &Path, port: u16) -> String {
    let guide = readme_block(GUIDE, "nginx");
    let guide = replace_once(
        &guide,
        "server unix:/run/hello/hello.sock;",
        &format!("server unix:{};", socket.display()),
    );
    let guide = replace_once(&guide, "listen 80;", &format!("listen 127.0.0.1:{port};"));
    let d = dir.display();
    format!(
        "# The test's settings: in the foreground, every file in {d}.
daemon off;
{user}
worker_processes 2;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/error.log notice;
events {{
    worker_connections 1024;
}}
http {{
    # One line per request: its status and every upstream attempt's status and address.
    log_format attempts '$status $upstream_status $upstream_addr';
    access_log {d}/access.log attempts;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

# The README's guide ({GUIDE}).
{guide}}}
"
    )
}

/// Starts nginx on `127.0.0.1:PORT` (an ephemeral port, handed over as an inherited socket)
/// proxying to `socket`, and returns once a request through it is answered by `hello`.
fn start_nginx(nginx: &Path, user: &str, socket: &Path) -> (Peer, u16) {
    let dir = TempDir::new("peer-nginx");
    // The workers use the temporary paths in it whatever the test's umask (nginx makes them
    // and gives them to the workers' user).
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let conf = dir.join("nginx.conf");
    fs::write(&conf, nginx_conf(dir.path(), user, socket, port)).expect("write nginx.conf");

    let fd = listener.as_raw_fd();
    let mut command = Peer::command("nginx", nginx, &dir);
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .env("NGINX", format!("{fd};"));
    // SAFETY: the closure runs between fork and exec and only calls fcntl, which is
    // async-signal-safe; it clears close-on-exec on the listener (in the child's descriptor
    // table only) so that nginx inherits it.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut peer = Peer::spawn("nginx", command, dir, &["error.log", "access.log"]);
    // nginx holds its own copy now; connections made before it accepts wait in the queue.
    drop(listener);

    let mut last = String::from("no request made");
    let serving = wait_for(TIMEOUT, || {
        peer.assert_running();
        match get(port, "/") {
            Ok((200, body)) if body.starts_with("hello from pid ") => Some(()),
            Ok((status, body)) => {
                last = format!("{status} {body:?}");
                None
            }
            Err(e) => {
                last = e.to_string();
                None
            }
        }
    });
    assert!(
        serving.is_some(),
        "no request through nginx was answered by hello; last: {last}"
    );
    assert!(
        peer.read("error.log")
            .contains(&format!("using inherited sockets from \"{fd};\"")),
        "nginx did not adopt the socket it was handed"
    );
    (peer, port)
}

#[test]
fn nginx_proxies_to_the_unix_socket_across_upgrades_with_no_failed_request() {
    let Some(nginx) = find_tool("nginx") else {
        return skip("nginx", "nginx-light");
    };
    let hello = &examples().hello;
    let started = Instant::now();
    let (user, group) = worker_access();

    // The socket's directory: as `/run/hello` would be (`install -d -g www-data -m 2750`).
    let dir = TempDir::new("peer-nginx-hello");
    let run = dir.join("run");
    fs::create_dir(&run).expect("create the socket directory");
    if let Some(gid) = group {
        // The workers must reach the directory whatever the test's umask.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod 755");
        std::os::unix::fs::chown(&run, None, Some(gid)).expect("chgrp www-data");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o2750)).expect("chmod 2750");
    }
    let socket = run.join("hello.sock");
    let bind = format!("unix:{}", socket.display());
    // `Server` adds `--bind 127.0.0.1:0`, which nginx does not use.
    let mut server = Server::start_in(dir, hello, &["--bind", &bind, "--socket-mode", "660"]);
    let (mut nginx, port) = start_nginx(&nginx, user, &socket);

    let clients = [
        ("keep-alive", LoadClient::start(port, Mode::KeepAlive)),
        ("close", LoadClient::start(port, Mode::Close)),
    ];
    // Before each upgrade every client must have been answered by the current generation
    // and have made `PER_GENERATION` more requests since: each generation is replaced while
    // nginx reuses its upstream keep-alive connections to it.
    let served_by = |pid: i32| clients.iter().all(|(_, c)| c.stats().pids.contains(&pid));
    let successes = || clients.each_ref().map(|(_, c)| c.stats().successes);
    let mut current = server.first_pid();
    for upgrade in 1..=UPGRADES {
        assert!(
            wait_until(TIMEOUT, || served_by(current)),
            "before upgrade {upgrade}: not every client was answered by pid {current} through nginx"
        );
        let base = successes();
        assert!(
            wait_until(TIMEOUT, || successes()
                .iter()
                .zip(base)
                .all(|(now, then)| now - then >= PER_GENERATION)),
            "before upgrade {upgrade}: the clients made fewer than {PER_GENERATION} requests \
             each; {:?} since {base:?}",
            successes()
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
            assert!(status.success(), "the first process exited with {status}");
        }
        nginx.assert_running();
        current = next;
    }
    assert!(
        wait_until(TIMEOUT, || served_by(current)),
        "not every client was answered by the last pid {current} through nginx"
    );
    let mut requests = 0;
    let mut counts = Vec::new();
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_across_upgrades(format!("nginx {name}"), UPGRADES);
        requests += stats.successes;
        counts.push(format!(
            "{name} {} ok / {} failed, {} pids",
            stats.successes,
            stats.failures,
            stats.pids.len()
        ));
    }

    // One more upgrade with no load: nginx now holds only idle upstream connections to the
    // current generation. nginx closes them after its `keepalive_timeout` (4 s), before the
    // old generation's idle close (the app's 5 s keep-alive timeout) would: the drain must
    // end with every connection ended on nginx's side, none closed by the server.
    send_signal(current, Signal::SIGHUP);
    let next = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != current))
        .unwrap_or_else(|| panic!("idle upgrade: the pid file still names {current}"));
    assert!(
        wait_until(TIMEOUT, || !pid_alive(current)),
        "idle upgrade: old pid {current} did not exit"
    );
    let drain_end = format!(
        "pid {current} generation {}: drain ended after",
        UPGRADES + 1
    );
    let log = server.log();
    let drained = log
        .lines()
        .find(|line| line.contains(&drain_end))
        .unwrap_or_else(|| panic!("idle upgrade: no `{drain_end}` line in the log"));
    let idle_drain = drained[drained.find("drain ended").unwrap_or(0)..].to_owned();
    assert!(
        idle_drain.ends_with(" 0 idle closed, 0 cut") && !idle_drain.contains(": 0 connection(s)"),
        "idle upgrade: nginx held no idle upstream connection, or the server closed one: \
         {idle_drain}"
    );
    current = next;
    let clients = [
        ("keep-alive", LoadClient::start(port, Mode::KeepAlive)),
        ("close", LoadClient::start(port, Mode::Close)),
    ];
    assert!(
        wait_until(TIMEOUT, || clients
            .iter()
            .all(|(_, c)| c.stats().successes >= PER_GENERATION)),
        "after the idle upgrade: the clients made fewer than {PER_GENERATION} requests each"
    );
    for (name, client) in clients {
        let stats = client.stop();
        stats.assert_all_served_by(format!("nginx {name} after the idle upgrade"), current);
        requests += stats.successes;
    }

    // A graceful stop flushes and closes the logs.
    send_signal(nginx.pid(), Signal::SIGQUIT);
    let status = nginx.wait_exit(TIMEOUT);
    assert!(status.success(), "nginx exited with {status}");

    let error_log = nginx.read("error.log");
    let upstream_errors: Vec<&str> = error_log
        .lines()
        .filter(|line| UPSTREAM_ERRORS.iter().any(|p| line.contains(p)))
        .collect();
    assert!(
        upstream_errors.is_empty(),
        "nginx's error log has {} upstream errors:\n{}",
        upstream_errors.len(),
        upstream_errors.join("\n")
    );

    // `200 200 unix:PATH`: the client got 200 from the one and only upstream attempt.
    let single_attempt = format!("200 200 unix:{}", socket.display());
    let access_log = nginx.read("access.log");
    let lines: Vec<&str> = access_log.lines().collect();
    let other: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|line| *line != single_attempt)
        .collect();
    assert!(
        other.is_empty(),
        "{} of {} requests were not a single upstream attempt answered 200 (retried by \
         nginx, or failed); first: {:?}",
        other.len(),
        lines.len(),
        &other[..other.len().min(10)]
    );
    assert!(
        lines.len() as u64 >= requests,
        "nginx logged {} requests, the clients counted {requests} answers",
        lines.len()
    );
    println!(
        "nginx: {UPGRADES} upgrades under load and 1 idle, {requests} requests through nginx \
         answered 200, 0 failed (under load: {}); idle upgrade: {}; access log: {} requests, each one upstream attempt answered 200; error log: {} \
         lines, {} upstream errors; {:.1} s",
        counts.join(", "),
        idle_drain,
        lines.len(),
        error_log.lines().count(),
        upstream_errors.len(),
        started.elapsed().as_secs_f64()
    );
}
