//! Issue 14: the example systemd units as systemd would run them, without systemd as PID 1.
//!
//! - `systemd-analyze verify` accepts every unit in `examples/systemd/` (with the binary path
//!   pointed at the built example);
//! - `hello.service`'s `ExecReload=` (the control-socket client) exits 0 once the new
//!   generation serves and 1, with the reason, when the upgrade fails, so `systemctl reload`
//!   reports the outcome;
//! - `hello-notify-reload.service` (`Type=notify-reload`): systemd sends `ReloadSignal=` and
//!   waits for `RELOADING=1` (with `MONOTONIC_USEC=`) then `READY=1`, which the library sends
//!   from the old and the new generation, on the notification socket the tests bind.

mod deploy_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use deploy_support::{NotifySocket, Proc};
use integration::{
    examples, pid_alive, replace_with_copy, replace_with_script, send_signal, wait_until, Server,
    TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;

/// Where the units live.
fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/systemd")
        .join(name)
}

fn unit(name: &str) -> String {
    std::fs::read_to_string(unit_path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// The value of `key=` in `unit` (the last one, as systemd reads it).
fn setting<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

/// A unit command line with the installed paths replaced: the binary by `binary`,
/// `/run/hello` by `run_dir`.
fn command_line(line: &str, binary: &Path, run_dir: &Path) -> Vec<String> {
    line.split_whitespace()
        .map(|word| {
            word.replace("/usr/local/bin/hello", &binary.display().to_string())
                .replace("/run/hello", &run_dir.display().to_string())
        })
        .collect()
}

/// `ExecStart=`'s arguments without the ones `Server` supplies itself (`--bind`,
/// `--pid-file`: it binds port 0 and keeps the pid file in its directory).
fn start_args(words: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    let mut words = words.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "--bind" || word == "--pid-file" {
            words.next();
        } else {
            args.push(word.clone());
        }
    }
    args
}

/// Runs `words` (a unit's command), with a deadline; returns (exit code, stdout, stderr).
fn run(words: &[String]) -> (Option<i32>, String, String) {
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {words:?}: {e}"));
    let pid = child.id() as i32;
    let done = wait_until(Duration::from_secs(90), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        send_signal(pid, Signal::SIGKILL);
    }
    let output = child.wait_with_output().expect("collecting the output");
    assert!(done, "{words:?} did not finish within 90 s");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn example_units_pass_systemd_analyze_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIP: systemd-analyze is not installed (Debian's systemd package has it)");
        return;
    };
    let dir = TempDir::new("units-verify");
    let names = [
        "hello.socket",
        "hello.service",
        "hello-notify-reload.service",
    ];
    for name in names {
        let text = unit(name).replace(
            "/usr/local/bin/hello",
            &examples().hello.display().to_string(),
        );
        std::fs::write(dir.join(name), text).expect("writing the unit");
    }
    let version = Command::new(analyze)
        .arg("--version")
        .output()
        .expect("systemd-analyze --version");
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a systemd version number");
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(names.map(|n| dir.join(n)))
        .output()
        .expect("running systemd-analyze verify");
    let report = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "verify failed:\n{report}");
    // Type=notify-reload and ReloadSignal= are systemd 253's; an older systemd-analyze (as on
    // Debian 12) reports exactly those two and nothing else.
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|line| {
            !(version < 253
                && line.contains("hello-notify-reload.service")
                && (line.contains("notify-reload") || line.contains("ReloadSignal")))
        })
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(
        unexpected.is_empty(),
        "systemd {version} reports:\n{}",
        unexpected.join("\n")
    );
}

#[test]
fn exec_reload_reports_whether_the_upgrade_took() {
    let service = unit("hello.service");
    let dir = TempDir::new("units-exec-reload");
    let binary = dir.join("hello");
    let real = dir.join("hello.real");
    replace_with_copy(&binary, &examples().hello);
    replace_with_copy(&real, &examples().hello);
    let run_dir = dir.path().to_owned();
    let start = command_line(setting(&service, "ExecStart"), &binary, &run_dir);
    let reload = command_line(setting(&service, "ExecReload"), &real, &run_dir);
    assert!(
        reload.iter().any(|w| w == "upgrade"),
        "ExecReload= does not use the control-socket client: {reload:?}"
    );
    let args = start_args(&start);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_in(dir, &binary, &args);
    let first = server.first_pid();

    let (code, stdout, stderr) = run(&reload);
    assert_eq!(code, Some(0), "ExecReload failed:\n{stdout}\n{stderr}");
    let second = server.wait_for_new_pid(first, TIMEOUT);
    assert!(
        stdout.contains(&format!("serves as pid {second}")),
        "ExecReload did not name the new generation {second}:\n{stdout}"
    );
    assert_eq!(server.read_pid_file(), Some(second));
    assert_eq!(server.get_pid(), Ok(second));
    assert!(
        wait_until(TIMEOUT, || !pid_alive(first)),
        "{first} did not exit"
    );

    // A build that cannot start: `systemctl reload` fails, with the reason.
    replace_with_script(&binary, "exit 3");
    let (code, stdout, stderr) = run(&reload);
    assert_eq!(
        code,
        Some(1),
        "ExecReload of a broken build:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("exit status: 3"),
        "the reason is not on stderr: {stderr}"
    );
    assert_eq!(
        server.get_pid(),
        Ok(second),
        "the serving generation changed"
    );
    assert_eq!(server.read_pid_file(), Some(second));
}

#[test]
fn notify_reload_unit_gets_reloading_then_ready() {
    let service = unit("hello-notify-reload.service");
    assert_eq!(setting(&service, "Type"), "notify-reload");
    assert_eq!(setting(&service, "NotifyAccess"), "all");
    let reload_signal = match setting(&service, "ReloadSignal") {
        "SIGHUP" => Signal::SIGHUP,
        other => panic!("the library upgrades on SIGHUP, not {other}"),
    };
    let dir = TempDir::new("units-notify-reload");
    let socket = NotifySocket::bind_path(&dir.join("notify.sock"));
    let binary = dir.join("hello");
    replace_with_copy(&binary, &examples().hello);
    let start = command_line(setting(&service, "ExecStart"), &binary, dir.path());
    let args = start_args(&start);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = Proc::command(&binary, &dir);
    command
        .args(["--bind", "127.0.0.1:0", "--pid-file"])
        .arg(dir.join("pid"))
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .args(&args)
        .env("NOTIFY_SOCKET", socket.env_value());
    let server = Proc::spawn(command, dir);
    let first = server.pid();
    let ready = socket.expect(TIMEOUT, "READY=1 at start");
    assert_eq!(ready.get("READY"), Some("1"));
    assert_eq!(ready.get("MAINPID"), Some(first.to_string().as_str()));

    // What systemd does on `systemctl reload`: ReloadSignal= to the main pid, then wait for
    // RELOADING=1 and a later READY=1.
    send_signal(first, reload_signal);
    let reloading = socket.expect(TIMEOUT, "RELOADING=1 after the reload signal");
    assert_eq!(reloading.pid, first);
    assert_eq!(reloading.get("RELOADING"), Some("1"));
    assert!(reloading.get("MONOTONIC_USEC").is_some(), "{reloading:?}");
    let ready = socket.expect(TIMEOUT, "READY=1 that ends the reload");
    let second: i32 = ready
        .get("MAINPID")
        .and_then(|p| p.parse().ok())
        .expect("MAINPID= with READY=1");
    assert_ne!(second, first, "the reload did not start a new generation");
    assert_eq!(ready.pid, second, "READY=1 must come from the new main pid");
    assert!(
        wait_until(TIMEOUT, || !pid_alive(first)),
        "{first} did not exit"
    );
}
