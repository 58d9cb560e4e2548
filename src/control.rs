//! The control socket: a Unix socket on which deploy scripts ask for an upgrade and read its
//! outcome, ask for the status, or stop the service, in JSON lines.
//!
//! One request line per connection, at most [`MAX_LINE`] bytes, within [`READ_TIMEOUT`]: a
//! JSON object with a `command` (`{"command":"upgrade"}`), or the bare word. The answer is one
//! JSON object per line; the last one has a `result` (`ok`, `failed`, `error` or `refused`).
//! Only the socket's owner (this process's effective uid) and root may use it: the socket is
//! created with mode 0600 and every peer's credentials are checked.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::listeners::{Listener, Socket};
use crate::sys;

/// The name the control socket goes by in `LISTEN_FDNAMES` when it is handed over.
pub(crate) const FD_NAME: &str = "actix-endless-control";
/// The longest request line.
const MAX_LINE: usize = 4096;
/// How long a client has to send its request line, and to read each answer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How many clients are served at once; more are told to retry.
const MAX_CLIENTS: usize = 128;
/// How often the accept loop checks whether it should stop.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// What a client asked for. Each carries where the answer lines go; dropping it without a
/// final line tells the client the process went away.
#[derive(Debug)]
pub(crate) enum Request {
    /// One status object.
    Status(Sender<Value>),
    /// An upgrade: progress objects, then the outcome.
    Upgrade(Sender<Value>),
    /// A graceful stop: one object once it began.
    Stop(Sender<Value>),
}

/// The control socket at `path`: the one handed over by the previous generation (taken out of
/// `inherited`), or a new one with mode 0600.
pub(crate) fn take_or_bind(inherited: &mut Vec<Listener>, path: &Path) -> Result<Listener> {
    if let Some(i) = inherited.iter().position(|l| l.name == FD_NAME) {
        let listener = inherited.remove(i);
        if matches!(listener.socket, Socket::Unix(_)) {
            return Ok(listener);
        }
        log::warn!("the inherited {FD_NAME} socket is not a Unix socket; binding a new one");
    }
    let socket = sys::bind_unix(path, 64, Some(0o600)).map_err(|source| Error::Bind {
        addr: format!("control socket {}", path.display()),
        source,
    })?;
    Ok(Listener {
        name: FD_NAME.to_owned(),
        socket: Socket::Unix(socket),
        serve: crate::listeners::Serve::default(),
    })
}

/// Stops the accept loop when dropped (the process hands the socket over or exits).
pub(crate) struct Serving(Arc<AtomicBool>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A process's control socket, and whether it answers on it now.
pub(crate) type ControlSlot = Option<(Listener, Option<Serving>)>;

/// Starts answering on the control socket in `slot` (if there is one and nothing answers on
/// it yet), passing each request to `forward`.
pub(crate) fn start_answering(
    slot: &mut ControlSlot,
    forward: impl Fn(Request) + Send + Sync + 'static,
) -> io::Result<()> {
    let Some((listener, serving @ None)) = slot else {
        return Ok(());
    };
    let Ok(Socket::Unix(socket)) = listener.socket.try_clone() else {
        return Ok(());
    };
    *serving = Some(serve(socket, forward)?);
    Ok(())
}

/// Serves `listener` on a thread of its own, passing each request to `forward`.
pub(crate) fn serve(
    listener: UnixListener,
    forward: impl Fn(Request) + Send + Sync + 'static,
) -> io::Result<Serving> {
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let forward = Arc::new(forward);
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("actix-endless-control-socket".into())
        .spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let _ = sys::wait_readable(listener.as_fd(), ACCEPT_POLL);
                        continue;
                    }
                    Err(e) => {
                        log::warn!("control socket: accept failed: {e}");
                        std::thread::sleep(ACCEPT_POLL);
                        continue;
                    }
                };
                let forward = forward.clone();
                let clients = clients.clone();
                if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::SeqCst);
                    let _ = answer(&stream, &failure("error", "too many clients; retry"));
                    continue;
                }
                let spawned = std::thread::Builder::new()
                    .name("actix-endless-control-client".into())
                    .spawn(move || {
                        client(stream, &*forward);
                        clients.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    log::warn!("control socket: no thread for a client");
                }
            }
        })?;
    Ok(Serving(stop))
}

/// Serves one client: its credentials, its request line, the answers.
fn client(stream: UnixStream, forward: &dyn Fn(Request)) {
    if let Err(why) = allowed(&stream) {
        log::warn!("control socket: {why}");
        let _ = answer(&stream, &failure("refused", &why));
        return;
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let command = match read_request(&stream) {
        Ok(command) => command,
        Err(why) => {
            let _ = answer(&stream, &failure("error", &why));
            return;
        }
    };
    let (tx, rx) = channel();
    let request = match command.as_str() {
        "status" => Request::Status(tx),
        "upgrade" => Request::Upgrade(tx),
        "stop" => Request::Stop(tx),
        other => {
            let why = format!("unknown command {other:?} (status, upgrade, stop)");
            let _ = answer(&stream, &failure("error", &why));
            return;
        }
    };
    log::info!("control socket: {command} requested");
    forward(request);
    relay(&stream, rx);
}

/// Writes every answer until the final one (with a `result`) or until the process drops the
/// request (it went away).
fn relay(stream: &UnixStream, rx: Receiver<Value>) {
    for value in rx {
        let last = value.get("result").is_some();
        if answer(stream, &value).is_err() || last {
            return;
        }
    }
    let _ = answer(
        stream,
        &failure("failed", "the process ended before it answered"),
    );
}

/// Only this process's user and root may use the socket.
fn allowed(stream: &UnixStream) -> Result<(), String> {
    let uid = sys::peer_uid(stream.as_fd()).map_err(|e| format!("peer credentials: {e}"))?;
    let own = sys::effective_uid();
    if uid == own || uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} refused: only uid {own} (the owner) and root may use this socket"
        ))
    }
}

/// Reads the request line and returns its command.
fn read_request(stream: &UnixStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_LINE as u64 + 1));
    match reader.read_until(b'\n', &mut line) {
        Ok(0) => return Err("no request".to_owned()),
        Ok(_) => {}
        Err(e) => return Err(format!("reading the request: {e}")),
    }
    if line.len() > MAX_LINE {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    if line.last() != Some(&b'\n') {
        return Err("request line not terminated by a newline".to_owned());
    }
    let text = std::str::from_utf8(&line)
        .map_err(|_| "request is not UTF-8".to_owned())?
        .trim();
    command_of(text)
}

/// The command of a request: `{"command":"NAME"}` or the bare word.
fn command_of(text: &str) -> Result<String, String> {
    if !text.starts_with('{') {
        return match text {
            word if !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase()) => {
                Ok(word.to_owned())
            }
            _ => Err(format!(
                "not a request: {:?}",
                text.chars().take(64).collect::<String>()
            )),
        };
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("command").and_then(Value::as_str) {
        Some(command) => Ok(command.to_owned()),
        None => Err("no \"command\" string in the request".to_owned()),
    }
}

fn answer(mut stream: &UnixStream, value: &Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

/// The clients waiting for the outcome of one upgrade.
#[derive(Debug, Default)]
pub(crate) struct Watchers(Vec<Sender<Value>>);

impl Watchers {
    /// Watchers of an upgrade asked for by `client` (none for a signal or a handle).
    pub(crate) fn of(client: Option<Sender<Value>>) -> Watchers {
        Watchers(client.into_iter().collect())
    }

    /// A progress event: `{"event": name, ...fields}`.
    pub(crate) fn event(&self, name: &str, fields: Value) {
        let mut value = json!({ "event": name });
        if let (Some(all), Value::Object(more)) = (value.as_object_mut(), fields) {
            all.extend(more);
        }
        for watcher in &self.0 {
            let _ = watcher.send(value.clone());
        }
    }

    /// The upgrade took: `pid` of `generation` serves.
    pub(crate) fn ok(&mut self, pid: u32, generation: u64) {
        self.finish(json!({ "result": "ok", "pid": pid, "generation": generation }));
    }

    /// The upgrade failed, and why; the process that answers serves on.
    pub(crate) fn failed(&mut self, reason: &str) {
        self.finish(failure("failed", reason));
    }

    fn finish(&mut self, value: Value) {
        for watcher in std::mem::take(&mut self.0) {
            let _ = watcher.send(value.clone());
        }
    }
}

/// Reads an upgrade's answers until the new generation serves (its `ready` event), or until
/// the failure: what a [`crate::Handle`] awaits. (Waiting for the `ok` that follows the old
/// generation's drain would deadlock when the caller is a request of the old generation.)
pub(crate) fn outcome(answers: Receiver<Value>) -> Result<crate::ctl::Upgraded> {
    let mut generation = None;
    for value in answers {
        let number = |key: &str| value.get(key).and_then(Value::as_u64);
        match value.get("event").and_then(Value::as_str) {
            Some("spawned") => generation = number("generation"),
            Some("ready") => {
                if let (Some(pid), Some(generation)) = (number("pid"), generation) {
                    return Ok(crate::ctl::Upgraded {
                        pid: pid as u32,
                        generation,
                    });
                }
            }
            _ => {}
        }
        match value.get("result").and_then(Value::as_str) {
            None => continue,
            Some("ok") => {
                if let (Some(pid), Some(generation)) = (number("pid"), number("generation")) {
                    return Ok(crate::ctl::Upgraded {
                        pid: pid as u32,
                        generation,
                    });
                }
            }
            Some(_) => {}
        }
        let reason = value
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(Error::UpgradeFailed {
            reason: reason.to_owned(),
        });
    }
    Err(Error::UpgradeFailed {
        reason: "the process ended before the outcome".to_owned(),
    })
}

/// A final answer that is not a success.
pub(crate) fn failure(result: &str, reason: &str) -> Value {
    json!({ "result": result, "reason": reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_json_or_a_bare_word() {
        let table = [
            ("status", Ok("status")),
            ("{\"command\":\"upgrade\"}", Ok("upgrade")),
            ("{\"command\": \"stop\", \"extra\": 1}", Ok("stop")),
            ("{\"command\": 3}", Err("no \"command\"")),
            ("{not json", Err("not JSON")),
            ("", Err("not a request")),
            ("rm -rf /", Err("not a request")),
        ];
        for (text, expected) in table {
            match (command_of(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: {got:?} instead of {want:?}"),
            }
        }
    }
}
