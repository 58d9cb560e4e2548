//! The examples' command line: `--help`, `--version`, durations with units, clap's errors, and
//! the `ENDLESS_*` environment fallbacks.

mod deploy_support;

use std::fs::{self, File};
use std::process::{Command, ExitStatus};

use deploy_support::Proc;
use integration::{examples, get, pid_alive, send_signal, wait_until, TempDir, TIMEOUT};
use nix::sys::signal::Signal;

/// The version of `actix-endless` (the root package), which the examples print.
fn crate_version() -> &'static str {
    include_str!("../../Cargo.toml")
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("the root Cargo.toml has a version line")
}

/// A command for `hello` with its output under `dir` and none of the `ENDLESS_*` variables of
/// the test's own environment.
fn hello_command(dir: &TempDir) -> Command {
    let mut command = Proc::command(&examples().hello, dir);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ENDLESS_") {
            command.env_remove(name);
        }
    }
    command
}

/// What a short run printed, and how it ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `hello` with `args` and `envs` until it exits (within [`TIMEOUT`]; a server that
/// starts instead is killed when the guard drops).
fn run_hello(label: &str, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let dir = TempDir::new(label);
    let create = |name: &str| {
        File::create(dir.join(name)).unwrap_or_else(|e| panic!("cannot create {name}: {e}"))
    };
    let (stdout, stderr) = (create("stdout"), create("stderr"));
    let mut command = hello_command(&dir);
    // The directory on the command line lets the guard recognise the process.
    command
        .args(args)
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .envs(envs.iter().copied())
        .stdout(stdout)
        .stderr(stderr);
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut process = Proc::spawn(command, dir);
    let status = process.wait_exit(TIMEOUT);
    let read = |path| fs::read_to_string(path).unwrap_or_default();
    Run {
        status,
        stdout: read(stdout),
        stderr: read(stderr),
    }
}

#[test]
fn help_lists_the_options_and_the_duration_units() {
    let run = run_hello("cli-help", &["--help"], &[]);
    assert_eq!(run.status.code(), Some(0), "stderr: {}", run.stderr);
    for needle in [
        "--bind",
        "--pid-file",
        "--hammer-time",
        "--upgrade-timeout",
        "--ready-delay",
        "--ready-fail",
        "250ms",
        "30s",
        "1m30s",
        "milliseconds",
        "ENDLESS_BIND",
        "ENDLESS_PID_FILE",
    ] {
        assert!(
            run.stdout.contains(needle),
            "--help does not mention {needle}:\n{}",
            run.stdout
        );
    }
}

#[test]
fn version_prints_the_crate_version() {
    let run = run_hello("cli-version", &["--version"], &[]);
    assert_eq!(run.status.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout.trim(), format!("hello {}", crate_version()));
}

#[test]
fn an_invalid_duration_is_a_usage_error_naming_the_flag() {
    let check = |flag: &str, args: &[&str], envs: &[(&str, &str)]| {
        let run = run_hello("cli-invalid", args, envs);
        assert_eq!(
            run.status.code(),
            Some(2),
            "{args:?} {envs:?}: stderr: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(flag) && run.stderr.contains("invalid value"),
            "{args:?} {envs:?}: the error does not name {flag}: {}",
            run.stderr
        );
    };
    check("--hammer-time", &["--hammer-time", "5 parsecs"], &[]);
    check("--upgrade-timeout", &["--upgrade-timeout", "1.5s"], &[]);
    check("--upgrade-timeout", &["--upgrade-timeout", "1m30"], &[]);
    // From the environment, the error names the flag too.
    check("--hammer-time", &[], &[("ENDLESS_HAMMER_TIME", "soon")]);
}

#[test]
fn durations_with_units_and_the_pid_file_from_the_environment() {
    let dir = TempDir::new("cli-serve");
    let pid_file = dir.join("pid");
    let mut command = hello_command(&dir);
    command
        .args(["--bind", "127.0.0.1:0", "--addr-file"])
        .arg(dir.join("addr"))
        .args(["--hammer-time", "2s", "--upgrade-timeout", "1500ms"])
        // Only in the environment: the command line has no --pid-file.
        .env("ENDLESS_PID_FILE", &pid_file);
    let mut server = Proc::spawn(command, dir);
    let first = server.pid();
    let addrs = server.wait_until_serving(first, TIMEOUT);
    let port = addrs[0].port();
    assert_eq!(
        get(port, "/").expect("GET /"),
        (
            200,
            format!("hello from pid {first}, generation 1, release v1\n")
        )
    );

    // An upgrade shows the upgrade timeout: 1500ms is 1.5 s, not 1500 s or 1.5 ms.
    send_signal(first, Signal::SIGHUP);
    assert!(
        server.wait_for_log("waiting up to 1.5s for it to report ready", 1, TIMEOUT),
        "the upgrade did not wait 1.5 s"
    );
    assert_eq!(
        server.wait_exit(TIMEOUT).code(),
        Some(0),
        "the old generation"
    );
    // The new generation writes the pid file named in the environment it inherited.
    let mut second = None;
    assert!(
        wait_until(TIMEOUT, || {
            second = server.read_pid_file().filter(|&pid| pid != first);
            second.is_some()
        }),
        "the new generation did not write {}",
        pid_file.display()
    );
    let second = second.expect("checked above");
    assert_eq!(
        get(port, "/").expect("GET / after the upgrade"),
        (
            200,
            format!("hello from pid {second}, generation 2, release v1\n")
        )
    );

    // A stop shows the hammer time: 2s.
    send_signal(second, Signal::SIGTERM);
    assert!(
        server.wait_for_log("(hammer time 2s)", 2, TIMEOUT),
        "the drains did not use a 2 s hammer time"
    );
    assert!(
        wait_until(TIMEOUT, || !pid_alive(second)),
        "pid {second} did not exit after SIGTERM"
    );
    assert!(!pid_file.exists(), "the pid file was not removed on stop");
}
