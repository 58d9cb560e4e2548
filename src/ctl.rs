//! A client of the control socket ([`crate::Endless::control_socket`]), for deploy scripts,
//! `systemctl reload` and tools: ask for an upgrade and learn whether it took.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! match actix_endless::ctl::upgrade("/run/app/control.sock", Duration::from_secs(30), |line| {
//!     println!("{line}")
//! }) {
//!     Ok(done) => println!("generation {} serves as pid {}", done.generation, done.pid),
//!     Err(e) => eprintln!("upgrade failed: {e}"),
//! }
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};

/// The new generation that serves after an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgraded {
    /// Its pid.
    pub pid: u32,
    /// Its generation.
    pub generation: u64,
}

/// Asks for an upgrade and waits, at most `timeout`, for its outcome; `progress` gets every
/// line the server sends (JSON objects: `spawned`, `ready`, `draining`, `drained`, then the
/// outcome). An upgrade that failed is [`Error::UpgradeFailed`] with the server's reason.
pub fn upgrade(
    path: impl AsRef<Path>,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Upgraded> {
    let last = exchange(path.as_ref(), "upgrade", timeout, &mut progress)?;
    let number = |key: &str| last.get(key).and_then(Value::as_u64);
    match (number("pid"), number("generation")) {
        (Some(pid), Some(generation)) => Ok(Upgraded {
            pid: pid as u32,
            generation,
        }),
        _ => Err(Error::UpgradeFailed {
            reason: format!("unexpected answer {last}"),
        }),
    }
}

/// The server's status, one JSON object (pid, generation, state, mode, connections, requests
/// in flight, upgrades that took and failed, the last failure).
pub fn status(path: impl AsRef<Path>, timeout: Duration) -> Result<String> {
    let mut answer = None;
    exchange(path.as_ref(), "status", timeout, &mut |line| {
        answer = Some(line.to_owned())
    })?;
    answer.ok_or_else(|| Error::UpgradeFailed {
        reason: "no status".to_owned(),
    })
}

/// Asks for a graceful stop; returns once it began.
pub fn stop(path: impl AsRef<Path>, timeout: Duration) -> Result<()> {
    exchange(path.as_ref(), "stop", timeout, &mut |_| {}).map(drop)
}

/// Sends `command`, passes every answer line to `each`, and returns the final one (the first
/// with a `result`, or any line for `status`).
fn exchange(
    path: &Path,
    command: &str,
    timeout: Duration,
    each: &mut dyn FnMut(&str),
) -> Result<Value> {
    let io = |context| move |source| Error::Io { context, source };
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(path).map_err(io("connecting to the control socket"))?;
    stream
        .write_all(format!("{{\"command\":\"{command}\"}}\n").as_bytes())
        .map_err(io("writing to the control socket"))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io("control socket"))?);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Io {
                context: "waiting for the control socket",
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no outcome within {timeout:?}"),
                ),
            });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(io("control socket"))?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                return Err(Error::UpgradeFailed {
                    reason: "the server closed the control connection without an outcome"
                        .to_owned(),
                })
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(io("reading the control socket")(e)),
        }
        let line = line.trim_end();
        each(line);
        let value: Value = serde_json::from_str(line).map_err(|e| Error::UpgradeFailed {
            reason: format!("not JSON from the control socket ({e}): {line}"),
        })?;
        match value.get("result").and_then(Value::as_str) {
            Some("ok") => return Ok(value),
            Some(_) => {
                let reason = value
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
                    .to_owned();
                return Err(Error::UpgradeFailed { reason });
            }
            None if command == "status" => return Ok(value),
            None => {}
        }
    }
}
