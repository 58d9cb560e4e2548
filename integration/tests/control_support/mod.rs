//! Support shared by the control-socket tests (`tests/control_socket.rs`,
//! `tests/commit_window.rs`, issue 14).
//!
//! - [`ControlServer`]: a `hello` server with a control socket in its temporary directory,
//!   running from its own replaceable copy of the binary;
//! - [`run_ctl`]: runs the client (`hello upgrade|status|stop --control-socket PATH`) as a
//!   separate process, with a deadline, and keeps each stdout line with the time it arrived;
//!   the process is SIGKILLed by pid if the deadline passes or the test fails;
//! - [`exchange`]: a raw request on the control socket over [`UnixStream`];
//! - [`field`]: a field of one of the server's flat JSON lines (the crate does not depend on a
//!   JSON parser);
//! - [`fd_count`], [`vm_rss_kib`]: what a process holds, from `/proc`;
//! - [`assert_only_in_flight_requests_failed`]: the bound on failures when a process holding
//!   connections dies.
//!
//! Each test target uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration::{examples, wait_for, LoadStats, Server, TempDir};

use crate::fault_support::{link_binary, no_stray_fds};

/// A `hello` server with `--control-socket DIR/ctl`, running from `DIR/hello`, a copy the test
/// may replace (so that an upgrade executes something else).
pub struct ControlServer {
    pub server: Server,
    /// The binary upgrades execute.
    pub binary: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
}

impl ControlServer {
    /// Starts `DIR/hello --control-socket DIR/ctl` followed by `args`; `DIR` gets mode 0755
    /// (so that another user may reach the socket, which then refuses by its own means).
    pub fn start(label: &str, args: &[&str]) -> ControlServer {
        no_stray_fds();
        let dir = TempDir::new(label);
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod 0755 the server directory");
        let binary = dir.join("hello");
        link_binary(&binary, &examples().hello);
        let socket = dir.join("ctl");
        let socket_arg = socket.to_string_lossy().into_owned();
        let mut all = vec!["--control-socket", socket_arg.as_str()];
        all.extend_from_slice(args);
        let server = Server::start_in(dir, &binary, &all);
        ControlServer {
            server,
            binary,
            socket,
        }
    }

    /// Makes upgrades execute the real `hello` with `flags` added (after the inherited
    /// command line, so that they win).
    pub fn upgrade_with_flags(&self, flags: &str) {
        let hello = examples().hello.display().to_string();
        integration::replace_with_script(&self.binary, &format!("exec '{hello}' \"$@\" {flags}"));
    }

    /// Makes upgrades execute the real `hello` again.
    pub fn restore_binary(&self) {
        link_binary(&self.binary, &examples().hello);
    }

    /// `hello CMD --control-socket DIR/ctl` as the test's own user.
    pub fn ctl(&self, command: &str, limit: Duration) -> Ctl {
        run_ctl(&[], command, &self.socket, &[], limit)
    }
}

/// What a client run printed and how it ended.
#[derive(Debug)]
pub struct Ctl {
    pub status: ExitStatus,
    /// Each stdout line, with the time since the client was started.
    pub lines: Vec<(Duration, String)>,
    pub stderr: String,
    /// From start to exit.
    pub elapsed: Duration,
    /// When the client was started.
    pub started: Instant,
}

impl Ctl {
    /// The stdout lines alone.
    pub fn stdout(&self) -> Vec<&str> {
        self.lines.iter().map(|(_, line)| line.as_str()).collect()
    }

    /// The exit code (panics if it was killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("the client was killed: {self:?}"))
    }

    /// The first stdout line whose `event` is `name`, and when it arrived.
    pub fn event(&self, name: &str) -> Option<(Duration, &str)> {
        self.lines
            .iter()
            .find(|(_, line)| field(line, "event").as_deref() == Some(name))
            .map(|(at, line)| (*at, line.as_str()))
    }

    /// The first stdout line with a `result`, and when it arrived.
    pub fn outcome(&self) -> Option<(Duration, &str)> {
        self.lines
            .iter()
            .find(|(_, line)| field(line, "result").is_some())
            .map(|(at, line)| (*at, line.as_str()))
    }

    /// The kinds of the JSON lines in order: the `event` name, or `result:VALUE`.
    pub fn kinds(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|(_, line)| {
                field(line, "event")
                    .or_else(|| field(line, "result").map(|r| format!("result:{r}")))
            })
            .collect()
    }
}

/// Kills a child process by its pid, and reaps it, unless it has been reaped already.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `prefix... HELLO command --control-socket socket extra...` (the real `hello` binary;
/// `prefix` is, say, `setpriv ...`), and waits at most `limit` for it to exit.
///
/// # Panics
///
/// If it cannot be started or has not exited within `limit` (it is SIGKILLed then).
pub fn run_ctl(
    prefix: &[&str],
    command: &str,
    socket: &Path,
    extra: &[&str],
    limit: Duration,
) -> Ctl {
    let hello = &examples().hello;
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(hello);
            cmd
        }
        None => Command::new(hello),
    };
    cmd.arg(command)
        .arg("--control-socket")
        .arg(socket)
        .args(extra)
        .env_remove("ENDLESS_CONTROL_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the client {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let mut guard = ChildGuard(Some(child));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out_thread = thread::spawn({
        let lines = Arc::clone(&lines);
        move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((started.elapsed(), line));
            }
        }
    });
    let err_thread = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let child = guard.0.as_mut().expect("set above");
    let status = wait_for(limit, || child.try_wait().expect("waitpid on the client"));
    let elapsed = started.elapsed();
    let Some(status) = status else {
        drop(guard);
        let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        panic!("`hello {command}` did not exit within {limit:?}; it printed {lines:?}");
    };
    guard.0 = None;
    out_thread.join().expect("stdout reader");
    let stderr = err_thread.join().expect("stderr reader");
    let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ctl {
        status,
        lines,
        stderr,
        elapsed,
        started,
    }
}

/// Runs [`run_ctl`] in a new thread.
pub fn spawn_ctl(command: &'static str, socket: PathBuf, limit: Duration) -> JoinHandle<Ctl> {
    thread::spawn(move || run_ctl(&[], command, &socket, &[], limit))
}

/// How a raw exchange on the control socket ended.
#[derive(Debug)]
pub struct Exchange {
    /// The lines read (without their newline).
    pub lines: Vec<String>,
    /// `eof`, or the error that ended reading (its kind).
    pub end: String,
}

/// Connects to `socket`, writes `request` (write errors are ignored: the server may close
/// first), optionally shuts the writing side down, and reads lines until the end of stream, an
/// error, or `read_timeout` of silence.
pub fn exchange(socket: &Path, request: &[u8], shutdown: bool, read_timeout: Duration) -> Exchange {
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("set_read_timeout");
    stream
        .set_write_timeout(Some(read_timeout))
        .expect("set_write_timeout");
    let _ = stream.write_all(request);
    if shutdown {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    read_all_lines(stream)
}

/// Reads lines until the end of stream or an error.
pub fn read_all_lines(stream: UnixStream) -> Exchange {
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                return Exchange {
                    lines,
                    end: "eof".to_owned(),
                }
            }
            Ok(_) => lines.push(line.trim_end_matches('\n').to_owned()),
            Err(e) => {
                return Exchange {
                    lines,
                    end: format!("{:?}", e.kind()),
                }
            }
        }
    }
}

/// One `{"command":"status"}` exchange on a new connection: the status line.
pub fn status_line(socket: &Path, timeout: Duration) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"{\"command\":\"status\"}\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e} ({:?})", e.kind()))?;
    if !line.ends_with('\n') {
        return Err(format!("no complete line: {line:?}"));
    }
    Ok(line.trim_end().to_owned())
}

/// The value of `key` in a flat JSON object line: a string's content (escapes kept as they
/// are, but for `\"`), or the raw text of a number, `null`, `true`, `false` or array.
pub fn field(line: &str, key: &str) -> Option<String> {
    let marker = format!("\"{key}\":");
    let start = line.find(&marker)? + marker.len();
    let rest = line[start..].trim_start();
    if let Some(body) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '"' => value.push('"'),
                    other => {
                        value.push('\\');
                        value.push(other);
                    }
                },
                '"' => return Some(value),
                c => value.push(c),
            }
        }
        return None;
    }
    let mut depth = 0usize;
    let end = rest
        .char_indices()
        .find(|&(_, c)| match c {
            '[' | '{' => {
                depth += 1;
                false
            }
            ']' | '}' if depth > 0 => {
                depth -= 1;
                false
            }
            ',' | '}' => depth == 0,
            _ => false,
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].trim().to_owned())
}

/// [`field`] as a number.
pub fn field_i64(line: &str, key: &str) -> Option<i64> {
    field(line, key)?.parse().ok()
}

/// How many descriptors `pid` has open.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
}

/// What each descriptor of `pid` points at, for a failure message.
pub fn fd_listing(pid: i32) -> Vec<String> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut listing: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| {
            let target = fs::read_link(entry.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", entry.file_name().to_string_lossy())
        })
        .collect();
    listing.sort();
    listing
}

/// `VmRSS` of `pid` in KiB, from `/proc/PID/status`.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Milliseconds since the Unix epoch of a log line's timestamp (`[2026-12-03T12:57:18.728Z ...`,
/// as `env_logger` writes it with `format_timestamp_millis`).
pub fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.strip_prefix('[')?.get(..24)?;
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, milli) = (
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
        number(20..23)?,
    );
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs * 1000 + milli).ok()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// The time of an error line of a [`LoadStats`] (`... at 1.234s ...`), in seconds since the
/// client started.
pub fn error_time(error: &str) -> f64 {
    error
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in the error {error:?}"))
}

/// Asserts that a sequential load client lost at most the one request it had in flight when
/// a process holding its connection died at `death` (client time, seconds): every failure is
/// a connection cut short (reset or end of stream) no earlier than the death, never a refused
/// or failed connect. (The `faults_upgrade.rs` bound, for a death the test did not cause.)
pub fn assert_only_in_flight_requests_failed(name: &str, stats: &LoadStats, death: f64) {
    assert!(stats.successes > 0, "{name} client made no request");
    assert!(
        stats.failures <= 1,
        "{name} client: {} requests failed (at most the one in flight on the dead process \
         may):\n{}",
        stats.failures,
        stats.errors.join("\n")
    );
    for error in &stats.errors {
        assert!(
            error_time(error) + 0.001 >= death,
            "{name} client: a request failed at {:.3}s, before the crash at {death:.3}s: {error}",
            error_time(error)
        );
        assert!(
            !error.contains("connect:"),
            "{name} client: a connection was refused or failed: {error}"
        );
        assert!(
            error.contains("reset") || error.contains("end of stream"),
            "{name} client: the failure was not a connection cut by the crash: {error}"
        );
    }
}
