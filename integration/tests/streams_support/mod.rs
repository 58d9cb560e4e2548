//! Clients for the long-lived responses of the `hello` example (`GET /ws`, `GET /events`),
//! strict about how they end, and helpers to follow generations and their exits.
//!
//! - [`Ws`] is a WebSocket client (tungstenite over a plain [`TcpStream`] with read and write
//!   timeouts): it reads the greeting, checks an echo, then waits for the close frame. An end
//!   of stream, a reset or a timeout before a close frame is an abnormal end.
//! - [`Sse`] is a server-sent-events client over a hand-written HTTP/1.1 reader that decodes
//!   the chunked body itself: a stream ends cleanly only with a `shutdown` event followed by
//!   the zero-length chunk and the empty trailer.
//! - [`Client`] runs one of them in a thread that reconnects once each time its stream is
//!   closed, up to a number of connections, and records every connection.
//! - [`become_subreaper`] and [`reap`] give the test the exit status of every generation: an
//!   upgraded generation is a child of the one before, so once that one exits it is
//!   reparented to the test process, which can then wait for it.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use integration::{wait_for, wait_until, Server, HTTP_TIMEOUT};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

/// Read timeout of a WebSocket: it is silent while open, so this bounds how long a test may
/// keep one open without an upgrade (the tests keep them open a few seconds at most).
pub const WS_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Read timeout of an event stream: a `tick` comes every 100 ms, so this much silence is a
/// failure.
pub const SSE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The WebSocket close code "going away".
pub const AWAY: u16 = 1001;

/// A process and generation, as the streams name them: `pid 123 generation 2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Who {
    /// The serving process.
    pub pid: i32,
    /// Its generation.
    pub generation: u64,
}

impl Who {
    /// Parses `pid P generation G`.
    pub fn parse(text: &str) -> Option<Who> {
        let rest = text.strip_prefix("pid ")?;
        let (pid, rest) = rest.split_once(' ')?;
        let generation = rest.strip_prefix("generation ")?;
        Some(Who {
            pid: pid.parse().ok()?,
            generation: generation.trim().parse().ok()?,
        })
    }
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} generation {}", self.pid, self.generation)
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn connect(port: u16, read_timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&local(port), HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn describe_io(e: &io::Error) -> String {
    format!("{e} ({:?})", e.kind())
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// An open WebSocket to `GET /ws`, greeted by `who`.
pub struct Ws {
    socket: WebSocket<TcpStream>,
    /// The process that greeted it.
    pub who: Who,
    /// The end, when it came before the echo probe's answer.
    early_end: Option<End>,
}

/// How a stream ended, with the moment the client saw it.
#[derive(Clone, Debug)]
pub struct End {
    /// WebSocket: the close code and reason. Event stream: no code, and the data of the
    /// `shutdown` event as the reason. `Err` for an abnormal end.
    pub outcome: Result<(Option<u16>, String), String>,
    /// `tick` events read (event streams only).
    pub ticks: usize,
    /// When the end (close frame, or chunked terminator, or error) was read.
    pub at: Instant,
}

/// The client side of the opening handshake, written by hand so that a refused handshake
/// shows the server's response head: `101`, `Connection: upgrade`, `Upgrade: websocket` and
/// the right `Sec-WebSocket-Accept`, or an error quoting the head.
fn handshake(stream: &mut TcpStream) -> Result<(), String> {
    let key = tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("writing the handshake: {}", describe_io(&e)))?;
    // Byte by byte, so that nothing after the head (the greeting) is consumed here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "end of stream in the handshake response after {:?}",
                    String::from_utf8_lossy(&head)
                ))
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => {
                return Err(format!(
                    "reading the handshake response: {} after {:?}",
                    describe_io(&e),
                    String::from_utf8_lossy(&head)
                ))
            }
        }
        if head.len() > 8192 {
            return Err("handshake response head longer than 8 KiB".to_owned());
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status_ok = lines
        .next()
        .is_some_and(|status| status.starts_with("HTTP/1.1 101 "));
    let (mut upgrade, mut websocket, mut accept) = (false, false, false);
    let expected_accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" => {
                upgrade = value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
            }
            "upgrade" => websocket = value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-accept" => accept = value == expected_accept,
            _ => {}
        }
    }
    if status_ok && upgrade && websocket && accept {
        Ok(())
    } else {
        Err(format!("handshake refused (status 101: {status_ok}, connection upgrade: {upgrade}, upgrade websocket: {websocket}, accept key: {accept}); response head: {head:?}"))
    }
}

impl Ws {
    /// Connects, completes the handshake, reads the greeting and checks that a text message
    /// is echoed.
    pub fn open(port: u16) -> Result<Ws, String> {
        let mut stream =
            connect(port, WS_READ_TIMEOUT).map_err(|e| format!("connect: {}", describe_io(&e)))?;
        handshake(&mut stream)?;
        let mut socket = WebSocket::from_raw_socket(stream, Role::Client, None);
        let greeting = match socket.read() {
            Ok(Message::Text(text)) => text.as_str().to_owned(),
            other => return Err(format!("expected the greeting, read {other:?}")),
        };
        let who = greeting
            .strip_prefix("hello from ")
            .and_then(Who::parse)
            .ok_or_else(|| format!("malformed greeting {greeting:?}"))?;
        let probe = format!("echo to {who}");
        socket
            .send(Message::text(probe.clone()))
            .map_err(|e| format!("{who}: sending the echo probe: {e}"))?;
        let mut ws = Ws {
            socket,
            who,
            early_end: None,
        };
        match ws.socket.read() {
            Ok(Message::Text(text)) if text.as_str() == probe => {}
            // Greeted, then closed before the echo (the process started draining meanwhile):
            // opened all the same, and already ended.
            Ok(Message::Close(frame)) => ws.early_end = Some(ws.closed(Ok(Message::Close(frame)))),
            other => return Err(format!("{who}: expected the echo, read {other:?}")),
        }
        Ok(ws)
    }

    /// Sends a text message and checks it is echoed (the session still serves).
    pub fn echo(&mut self, text: &str) -> Result<(), String> {
        self.socket
            .send(Message::text(text.to_owned()))
            .map_err(|e| format!("{}: sending {text:?}: {e}", self.who))?;
        match self.socket.read() {
            Ok(Message::Text(echo)) if echo.as_str() == text => Ok(()),
            other => Err(format!(
                "{}: expected the echo of {text:?}, read {other:?}",
                self.who
            )),
        }
    }

    /// Blocks until the server closes: `Ok((Some(code), reason))` once a close frame is read.
    /// Anything before a close frame (end of stream, reset, timeout, another message) is an
    /// abnormal end. After the close frame, the client answers it (tungstenite does) and
    /// drops the connection.
    pub fn wait_close(mut self) -> End {
        if let Some(end) = self.early_end.take() {
            return end;
        }
        let read = self.socket.read();
        self.closed(read)
    }

    /// The end told by `read`, the message read where a close frame was expected.
    fn closed(&mut self, read: tungstenite::Result<Message>) -> End {
        let outcome = match read {
            Ok(Message::Close(Some(frame))) => Ok((
                Some(u16::from(frame.code)),
                frame.reason.as_str().to_owned(),
            )),
            Ok(Message::Close(None)) => Err("close frame without a code".to_owned()),
            Ok(other) => Err(format!("unexpected message {other:?} instead of a close")),
            Err(e) => Err(format!("no close frame: {e}")),
        };
        let at = Instant::now();
        if outcome.is_ok() {
            // Send the closing handshake's answer; the server may already have gone.
            let _ = self.socket.flush();
        }
        End {
            outcome,
            ticks: 0,
            at,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------------

/// An open event stream `GET /events`, whose `open` event named `who`.
pub struct Sse {
    reader: BufReader<TcpStream>,
    /// Body bytes decoded but not yet split into events.
    pending: String,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    /// The zero-length chunk and the trailer have been read.
    finished: bool,
    /// The process named by the `open` event.
    pub who: Who,
}

/// One event: its `event:` name and `data:` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field (empty if none).
    pub name: String,
    /// The `data:` field (empty if none).
    pub data: String,
}

fn read_crlf_line(reader: &mut impl BufRead, what: &str) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(format!("end of stream before the {what}")),
        Ok(_) if !line.ends_with("\r\n") => Err(format!("truncated {what}: {line:?}")),
        Ok(_) => {
            line.truncate(line.len() - 2);
            Ok(line)
        }
        Err(e) => Err(format!("reading the {what}: {}", describe_io(&e))),
    }
}

impl Sse {
    /// Connects, sends `GET /events`, checks the head (200, chunked, `text/event-stream`) and
    /// reads the `open` event.
    pub fn open(port: u16) -> Result<Sse, String> {
        let mut stream =
            connect(port, SSE_READ_TIMEOUT).map_err(|e| format!("connect: {}", describe_io(&e)))?;
        stream
            .write_all(
                b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
            )
            .map_err(|e| format!("writing the request: {}", describe_io(&e)))?;
        let mut reader = BufReader::new(stream);
        let status = read_crlf_line(&mut reader, "status line")?;
        if !status.starts_with("HTTP/1.1 200 ") {
            return Err(format!("status line {status:?}"));
        }
        let (mut chunked, mut event_stream) = (false, false);
        loop {
            let line = read_crlf_line(&mut reader, "headers")?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("malformed header {line:?}"))?;
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "transfer-encoding" => chunked = value == "chunked",
                "content-type" => event_stream = value.starts_with("text/event-stream"),
                "content-length" => {
                    return Err(format!("content-length {value} on an event stream"))
                }
                _ => {}
            }
        }
        if !chunked || !event_stream {
            return Err(format!(
                "expected a chunked text/event-stream (chunked: {chunked}, event stream: {event_stream})"
            ));
        }
        let mut sse = Sse {
            reader,
            pending: String::new(),
            chunk_left: 0,
            finished: false,
            who: Who {
                pid: 0,
                generation: 0,
            },
        };
        let open = sse
            .next_event()?
            .ok_or("the stream ended before the open event")?;
        if open.name != "open" {
            return Err(format!("first event {open:?}, not open"));
        }
        sse.who = Who::parse(&open.data).ok_or_else(|| format!("malformed open event {open:?}"))?;
        Ok(sse)
    }

    /// Reads more of the chunked body into `pending`; `Ok(false)` once the terminating
    /// zero-length chunk and the (empty) trailer have been read.
    fn read_body(&mut self) -> Result<bool, String> {
        if self.finished {
            return Ok(false);
        }
        if self.chunk_left == 0 {
            let line = read_crlf_line(&mut self.reader, "chunk size")?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("malformed chunk size line {line:?}"))?;
            if size == 0 {
                // The trailer: header lines, then an empty line.
                loop {
                    if read_crlf_line(&mut self.reader, "chunked trailer")?.is_empty() {
                        break;
                    }
                }
                self.finished = true;
                return Ok(false);
            }
            self.chunk_left = size;
        }
        let want = self.chunk_left.min(8192);
        let mut buf = vec![0; want];
        let got = self
            .reader
            .read(&mut buf)
            .map_err(|e| format!("reading a chunk: {}", describe_io(&e)))?;
        if got == 0 {
            return Err(format!(
                "end of stream inside a chunk ({} bytes missing)",
                self.chunk_left
            ));
        }
        self.pending.push_str(&String::from_utf8_lossy(&buf[..got]));
        self.chunk_left -= got;
        if self.chunk_left == 0 {
            let crlf = read_crlf_line(&mut self.reader, "end of a chunk")?;
            if !crlf.is_empty() {
                return Err(format!("chunk followed by {crlf:?}, not CRLF"));
            }
        }
        Ok(true)
    }

    /// The next event, or `None` once the body has ended cleanly (terminating chunk read). An
    /// end of the body in the middle of an event is an error.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut event = Event {
                    name: String::new(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event.name = name.to_owned();
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data = data.to_owned();
                    }
                }
                return Ok(Some(event));
            }
            if !self.read_body()? {
                if !self.pending.is_empty() {
                    return Err(format!("body ended inside an event: {:?}", self.pending));
                }
                return Ok(None);
            }
        }
    }

    /// Reads until the stream ends, counting `tick` events in `ticks` as they arrive. A clean
    /// end is a `shutdown` event (whose data is the reason) followed by the end of the chunked
    /// body; anything else is an error.
    pub fn read_to_end(mut self, ticks: &AtomicUsize) -> End {
        let who = self.who;
        let mut count = 0;
        let mut shutdown: Option<String> = None;
        let outcome = loop {
            match self.next_event() {
                Ok(Some(event)) if shutdown.is_some() => {
                    break Err(format!("{who}: event {event:?} after the shutdown event"))
                }
                Ok(Some(event)) if event.name == "tick" => {
                    count += 1;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Some(event)) if event.name == "shutdown" => shutdown = Some(event.data),
                Ok(Some(event)) => break Err(format!("{who}: unexpected event {event:?}")),
                Ok(None) => match shutdown.take() {
                    Some(data) => break Ok((None, data)),
                    None => break Err(format!("{who}: the body ended without a shutdown event")),
                },
                Err(e) => {
                    let seen = if shutdown.is_some() {
                        " after the shutdown event"
                    } else {
                        ""
                    };
                    break Err(format!("{who}: {e}{seen} ({count} ticks read)"));
                }
            }
        };
        End {
            outcome,
            ticks: count,
            at: Instant::now(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reconnecting clients
// ---------------------------------------------------------------------------------------------

/// Which stream a [`Client`] opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET /ws`.
    WebSocket,
    /// `GET /events`.
    Events,
}

/// One connection a [`Client`] made: who served it and how it ended.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Which stream.
    pub kind: Kind,
    /// The client's number.
    pub client: usize,
    /// The connection's rank for its client (0 for the first).
    pub index: usize,
    /// Who greeted it, or why it could not be opened.
    pub who: Result<Who, String>,
    /// How it ended (absent when it could not be opened).
    pub end: Option<End>,
    /// When the client started opening it.
    pub opened_at: Instant,
}

impl Connection {
    /// The reason a clean end carries for `who`: the close reason of a WebSocket, the data of
    /// the `shutdown` event of an event stream.
    pub fn expected_end(&self, who: Who) -> (Option<u16>, String) {
        match self.kind {
            Kind::WebSocket => (Some(AWAY), format!("{who} is draining")),
            Kind::Events => (None, who.to_string()),
        }
    }

    /// `Ok` if it opened and ended cleanly, told so by the process that greeted it.
    pub fn check_clean(&self) -> Result<Who, String> {
        let label = format!(
            "{:?} client {} connection {}",
            self.kind, self.client, self.index
        );
        let who = self
            .who
            .clone()
            .map_err(|e| format!("{label}: could not open: {e}"))?;
        let end = self
            .end
            .as_ref()
            .ok_or_else(|| format!("{label} ({who}): never ended"))?;
        let got = end
            .outcome
            .clone()
            .map_err(|e| format!("{label} ({who}): abnormal end: {e}"))?;
        if got != self.expected_end(who) {
            return Err(format!(
                "{label} ({who}): ended with {got:?}, expected {:?}",
                self.expected_end(who)
            ));
        }
        Ok(who)
    }
}

/// What a running [`Client`] has done so far, for the test to wait on.
#[derive(Debug)]
pub struct Progress {
    /// `opened[i]`: clients whose connection of rank `i` has been opened (greeted).
    pub opened: Vec<AtomicUsize>,
    /// Connections that could not be opened.
    pub failed: AtomicUsize,
    /// Why, for the first few.
    pub errors: std::sync::Mutex<Vec<String>>,
    /// Clients that have finished.
    pub done: AtomicUsize,
    /// `tick` events read by every event stream.
    pub ticks: AtomicUsize,
}

impl Progress {
    /// For clients making up to `connections` connections each.
    pub fn new(connections: usize) -> Arc<Progress> {
        Arc::new(Progress {
            opened: (0..connections).map(|_| AtomicUsize::new(0)).collect(),
            failed: AtomicUsize::new(0),
            errors: std::sync::Mutex::new(Vec::new()),
            done: AtomicUsize::new(0),
            ticks: AtomicUsize::new(0),
        })
    }

    /// Clients whose connection of rank `index` has been opened.
    pub fn opened(&self, index: usize) -> usize {
        self.opened[index].load(Ordering::SeqCst)
    }
}

/// A thread holding one stream open at a time: when the server ends it, the client reconnects
/// at once (no retry: a connection that cannot be opened ends the client), up to
/// `connections` connections.
pub struct Client {
    thread: JoinHandle<Vec<Connection>>,
}

impl Client {
    /// Starts client number `client`.
    pub fn start(
        kind: Kind,
        client: usize,
        port: u16,
        connections: usize,
        progress: Arc<Progress>,
    ) -> Client {
        let start = Instant::now();
        let thread = thread::spawn(move || {
            let mut made = Vec::new();
            for index in 0..connections {
                let mut connection = Connection {
                    kind,
                    client,
                    index,
                    who: Err(String::new()),
                    end: None,
                    opened_at: Instant::now(),
                };
                let opened = match kind {
                    Kind::WebSocket => Ws::open(port).map(|ws| {
                        let who = ws.who;
                        (
                            who,
                            Box::new(move |_: &AtomicUsize| ws.wait_close())
                                as Box<dyn FnOnce(&AtomicUsize) -> End>,
                        )
                    }),
                    Kind::Events => Sse::open(port).map(|sse| {
                        let who = sse.who;
                        (
                            who,
                            Box::new(move |ticks: &AtomicUsize| sse.read_to_end(ticks))
                                as Box<dyn FnOnce(&AtomicUsize) -> End>,
                        )
                    }),
                };
                match opened {
                    Ok((who, wait_end)) => {
                        connection.who = Ok(who);
                        progress.opened[index].fetch_add(1, Ordering::SeqCst);
                        let end = wait_end(&progress.ticks);
                        let clean = end.outcome.is_ok();
                        connection.end = Some(end);
                        made.push(connection);
                        if !clean {
                            break;
                        }
                    }
                    Err(e) => {
                        let mut errors = progress.errors.lock().unwrap_or_else(|p| p.into_inner());
                        if errors.len() < 10 {
                            errors.push(format!(
                                "{kind:?} client {client} connection {index} at {:?}: {e}",
                                start.elapsed()
                            ));
                        }
                        drop(errors);
                        connection.who = Err(e);
                        progress.failed.fetch_add(1, Ordering::SeqCst);
                        made.push(connection);
                        break;
                    }
                }
            }
            progress.done.fetch_add(1, Ordering::SeqCst);
            made
        });
        Client { thread }
    }

    /// Waits for the client to finish (bounded by the read timeouts) and returns what it did.
    pub fn join(self) -> Vec<Connection> {
        self.thread.join().expect("stream client thread panicked")
    }
}

/// Starts `count` clients of `kind`, numbered from `first`.
pub fn start_clients(
    kind: Kind,
    first: usize,
    count: usize,
    port: u16,
    connections: usize,
    progress: &Arc<Progress>,
) -> Vec<Client> {
    (first..first + count)
        .map(|n| Client::start(kind, n, port, connections, Arc::clone(progress)))
        .collect()
}

/// Waits until every one of `count` clients has either opened its connection of rank `index`
/// or stopped because a connection could not be opened (it never reconnects then), so that a
/// test can go on and report every failure at the end.
pub fn wait_settled(
    progress: &Progress,
    index: usize,
    count: usize,
    timeout: Duration,
) -> Result<(), String> {
    let settled = || progress.opened(index) + progress.failed.load(Ordering::SeqCst);
    if wait_until(timeout, || settled() >= count) {
        Ok(())
    } else {
        Err(format!(
            "only {} of {count} connections of rank {index} opened ({} failed) within {timeout:?}",
            progress.opened(index),
            progress.failed.load(Ordering::SeqCst)
        ))
    }
}

/// Waits until `count` clients have opened their connection of rank `index`, failing early if
/// a connection could not be opened.
pub fn wait_opened(
    progress: &Progress,
    index: usize,
    count: usize,
    timeout: Duration,
) -> Result<(), String> {
    let ok = wait_for(timeout, || {
        if progress.failed.load(Ordering::SeqCst) > 0 {
            return Some(false);
        }
        (progress.opened(index) >= count).then_some(true)
    });
    match ok {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "a connection could not be opened ({} of {count} of rank {index} opened):\n{}",
            progress.opened(index),
            progress
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .join("\n")
        )),
        None => Err(format!(
            "only {} of {count} connections of rank {index} opened within {timeout:?}",
            progress.opened(index)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Generations
// ---------------------------------------------------------------------------------------------

/// Makes this test process a child subreaper, so that a generation whose parent (the
/// generation before) exited is reparented to it and [`reap`] can read its exit status.
pub fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("cannot become a child subreaper");
    });
}

/// What [`reap`] answers for a process that is not a child of the test: a generation whose
/// parent (the generation before) still ran when it exited was reaped by that parent.
pub const NOT_OUR_CHILD: &str = "not a child of the test";

/// The exit status of `pid`: `Ok(code)` for an exit, `Err` (described) for a death by signal
/// or if it is not a child of this process (see [`become_subreaper`]). The server's first
/// process is waited for through `server`, which owns it.
pub fn reap(server: &mut Server, pid: i32, timeout: Duration) -> Result<i32, String> {
    if pid == server.first_pid() {
        let status = server.wait_exit(timeout);
        return status
            .code()
            .ok_or_else(|| format!("pid {pid} ended with {status}"));
    }
    let status = wait_for(timeout, || {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => None,
            Ok(WaitStatus::Exited(_, code)) => Some(Ok(code)),
            Ok(other) => Some(Err(format!("pid {pid} ended with {other:?}"))),
            Err(nix::errno::Errno::ECHILD) => Some(Err(NOT_OUR_CHILD.to_owned())),
            Err(e) => Some(Err(format!("waitpid({pid}): {e}"))),
        }
    });
    status.unwrap_or_else(|| Err(format!("pid {pid} did not exit within {timeout:?}")))
}

/// Polls the pid file until it names a pid other than `old`; returns it and when it was seen.
pub fn wait_new_pid_file(server: &Server, old: i32, timeout: Duration) -> Option<(i32, Instant)> {
    wait_for(timeout, || {
        server
            .read_pid_file()
            .filter(|&pid| pid != old)
            .map(|pid| (pid, Instant::now()))
    })
}

/// The counts of the `drain ended` line of `pid` in the log: (ended on their own, idle
/// closed, cut), if it is there.
pub fn drain_counts(server: &Server, pid: i32) -> Option<(usize, usize, usize)> {
    let prefix = format!("pid {pid} generation ");
    let log = server.log();
    let line = log
        .lines()
        .find(|line| line.contains(&prefix) && line.contains(": drain ended after "))?;
    let counts = line.rsplit_once(": ")?.1;
    let numbers: Vec<usize> = counts
        .split(", ")
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    match numbers[..] {
        [own, idle, cut] => Some((own, idle, cut)),
        _ => None,
    }
}

/// The log lines that mention `needle`, for failure messages.
pub fn log_lines(server: &Server, needle: &str) -> String {
    server
        .log()
        .lines()
        .filter(|line| line.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}
