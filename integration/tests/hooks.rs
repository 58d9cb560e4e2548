//! Hooks: SIGUSR1 and SIGTSTP only run the user's hooks (the `reload` example re-reads its
//! configuration on SIGUSR1); every handled signal logs a `pre` and a `post` hook line.

use integration::{
    examples, pid_alive, process_state, replace_file, send_signal, wait_until, Server, TempDir,
    TIMEOUT,
};
use nix::sys::signal::Signal;

/// Waits for the `pre` and `post` hook lines of `signal` (e.g. `SIGUSR1`) for `pid` in
/// generation `generation`, and checks their order.
fn assert_hooks_ran(server: &Server, signal: &str, pid: i32, generation: u32) {
    let pre = format!("hook: pre {signal} pid={pid} generation={generation}");
    let post = format!("hook: post {signal} pid={pid} generation={generation}");
    assert!(
        server.wait_for_log(&post, 1, TIMEOUT),
        "no `{post}` log line"
    );
    let pre_at = server
        .log_position(&pre)
        .unwrap_or_else(|| panic!("no `{pre}` log line"));
    let post_at = server.log_position(&post).expect("seen above");
    assert!(pre_at < post_at, "`{post}` was logged before `{pre}`");
}

#[test]
fn sigusr1_and_sigtstp_run_hooks_only() {
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();
    let hello = (
        200,
        format!("hello from pid {pid}, generation 1, release v1\n"),
    );

    send_signal(pid, Signal::SIGUSR1);
    assert_hooks_ran(&server, "SIGUSR1", pid, 1);
    assert_eq!(server.get("/").expect("GET / after SIGUSR1"), hello);

    send_signal(pid, Signal::SIGTSTP);
    assert_hooks_ran(&server, "SIGTSTP", pid, 1);
    assert_ne!(process_state(pid), Some('T'), "SIGTSTP stopped the process");
    assert_eq!(server.get("/").expect("GET / after SIGTSTP"), hello);
    assert_ne!(process_state(pid), Some('T'), "SIGTSTP stopped the process");

    assert!(pid_alive(pid));
    assert_eq!(server.try_wait(), None);
    assert_eq!(server.read_pid_file(), Some(pid));
}

#[test]
fn sighup_and_sigterm_run_hooks() {
    let mut server = Server::start(&examples().hello, &[]);
    let old = server.first_pid();

    send_signal(old, Signal::SIGHUP);
    let new = server.wait_for_new_pid(old, TIMEOUT);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    assert_hooks_ran(&server, "SIGHUP", old, 1);

    send_signal(new, Signal::SIGTERM);
    assert_hooks_ran(&server, "SIGTERM", new, 2);
    assert!(
        wait_until(TIMEOUT, || !pid_alive(new)),
        "pid {new} did not exit after SIGTERM"
    );
}

#[test]
fn sigusr1_reloads_the_configuration() {
    let dir = TempDir::new("reload");
    let config = dir.join("greeting.conf");
    replace_file(&config, b"first\n", 0o644);
    let config_arg = config.to_str().expect("temporary paths are UTF-8");
    let mut server = Server::start_in(dir, &examples().reload, &["--config", config_arg]);
    let pid = server.first_pid();
    assert_eq!(
        server.get("/").expect("GET /"),
        (200, String::from("first\n"))
    );

    replace_file(&config, b"second\n", 0o644);
    send_signal(pid, Signal::SIGUSR1);
    let mut last = None;
    let reloaded = wait_until(TIMEOUT, || {
        let answer = server.get("/").ok();
        let done = answer == Some((200, String::from("second\n")));
        last = answer;
        done
    });
    assert!(
        reloaded,
        "GET / never answered the new greeting; last: {last:?}"
    );

    // Reloaded in place: same process, no upgrade.
    assert_eq!(server.try_wait(), None);
    assert!(pid_alive(pid));
    assert_eq!(server.read_pid_file(), Some(pid));
}
