//! The probe of the timeline (see `timeline.rs`): sequential HTTP/1.1 clients in the bench
//! process that time every request and record every failure, which wrk cannot do per request.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{Failure, ProbeKind, ProbeSample};

/// Probe request timeout (connect, write, read), wrk's default.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one request per client per this period.
const PROBE_PERIOD: Duration = Duration::from_millis(2);
/// The probe clients.
const PROBE_CLIENTS: [ProbeKind; 4] = [
    ProbeKind::KeepAlive,
    ProbeKind::KeepAlive,
    ProbeKind::Close,
    ProbeKind::Close,
];

/// The probe clients of a row, running on their own threads until [`Probe::finish`] or
/// their deadline.
pub struct Probe {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<ProbeSample>>>,
}

impl Probe {
    /// Starts the clients against `addr`; `t0` is wrk's start, and they stop by themselves
    /// at `t0 + duration`.
    pub fn start(addr: SocketAddr, t0: Instant, duration: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = PROBE_CLIENTS
            .iter()
            .filter_map(|&kind| {
                let stop = stop.clone();
                thread::Builder::new()
                    .name("probe".into())
                    .spawn(move || probe_loop(kind, addr, t0, t0 + duration, &stop))
                    .ok()
            })
            .collect();
        Probe { stop, threads }
    }

    /// Stops the clients and returns their requests in start order.
    pub fn finish(self) -> Vec<ProbeSample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<ProbeSample> = self
            .threads
            .into_iter()
            .filter_map(|h| h.join().ok())
            .flatten()
            .collect();
        all.sort_by_key(|s| s.at);
        all
    }
}

/// One client: sequential requests, one per [`PROBE_PERIOD`] at most, until `end`.
fn probe_loop(
    kind: ProbeKind,
    addr: SocketAddr,
    t0: Instant,
    end: Instant,
    stop: &AtomicBool,
) -> Vec<ProbeSample> {
    let mut out = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now < next {
            thread::sleep(next - now);
            continue;
        }
        next = now + PROBE_PERIOD;
        let start = Instant::now();
        let result = match kind {
            ProbeKind::KeepAlive => {
                let r = keep_alive_request(&mut conn, addr);
                if r.is_err() {
                    conn = None;
                }
                r
            }
            ProbeKind::Close => close_request(addr),
        };
        out.push(ProbeSample {
            kind,
            at: start.saturating_duration_since(t0),
            latency: start.elapsed(),
            failure: result.err(),
        });
    }
    out
}

/// Connects with the probe's timeouts.
fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| io_failure(&e, Failure::Connect))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|_| Failure::Connect)?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))
        .map_err(|_| Failure::Connect)?;
    Ok(s)
}

/// One request on the reused connection (opened first if there is none).
fn keep_alive_request(conn: &mut Option<TcpStream>, addr: SocketAddr) -> Result<(), Failure> {
    if conn.is_none() {
        *conn = Some(connect(addr)?);
    }
    let s = conn.as_mut().ok_or(Failure::Connect)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| io_failure(&e, Failure::Write))?;
    let close = read_response(s)?;
    if close {
        *conn = None;
    }
    Ok(())
}

/// One request on a fresh connection with `Connection: close`.
fn close_request(addr: SocketAddr) -> Result<(), Failure> {
    let mut s = connect(addr)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| io_failure(&e, Failure::Write))?;
    read_response(&mut s).map(|_| ())
}

/// Reads one response (headers and a Content-Length body). `Ok(true)` if the server
/// closes the connection after it.
fn read_response(s: &mut TcpStream) -> Result<bool, Failure> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut head: Option<Head> = None;
    loop {
        if let Some(h) = head {
            if h.body.is_some_and(|n| buf.len() >= h.len + n) {
                return if h.status > 399 {
                    Err(Failure::Status)
                } else {
                    Ok(h.close)
                };
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::Timeout);
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| io_failure(&e, Failure::Read))?;
        if n == 0 {
            // EOF: complete only for a body delimited by the close.
            return match head {
                Some(h) if h.body.is_none() && h.status <= 399 => Ok(true),
                Some(h) if h.body.is_none() => Err(Failure::Status),
                _ => Err(Failure::Read),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            head = parse_head(&buf)?;
        }
        if buf.len() > 1 << 20 {
            return Err(Failure::Status);
        }
    }
}

/// A parsed response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    /// Bytes up to and including the blank line.
    len: usize,
    status: u16,
    /// Content-Length.
    body: Option<usize>,
    /// `Connection: close`.
    close: bool,
}

/// Parses a response head once complete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| Failure::Status)?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(Failure::Status)?;
    let (mut length, mut close) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| Failure::Status)?);
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    Ok(Some(Head {
        len: end + 4,
        status,
        body: length,
        close,
    }))
}

/// Maps an I/O error: timeouts are [`Failure::Timeout`], the rest `other`.
fn io_failure(e: &std::io::Error, other: Failure) -> Failure {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure::Timeout,
        _ => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nHello world!";
        let head = |len, status, body, close| {
            Ok(Some(Head {
                len,
                status,
                body,
                close,
            }))
        };
        assert_eq!(parse_head(ok), head(39, 200, Some(12), false));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le"), Ok(None));
        let close = b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_head(close), head(close.len(), 503, None, true));
        assert_eq!(parse_head(b"SSH-2.0\r\n\r\n"), Err(Failure::Status));
    }
}
