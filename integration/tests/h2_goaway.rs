//! HTTP/2 across upgrades: `hello_tls` negotiates `h2` (ALPN), `hello` serves h2c on a
//! `--bind h2c:ADDR` listener, and a draining generation sends
//! each of its h2 connections a GOAWAY, so that clients finish the streams they opened, open
//! no new one there, and reconnect to the new generation. Without the GOAWAY a busy h2
//! connection never becomes idle: the old generation would keep it until hammer time (60 s
//! here) and cut the streams open then.
//!
//! The client is the `h2` crate (what hyper uses) over `tokio-rustls`, as a real h2 client
//! behaves: a request it could not send because the connection is going away is sent on a new
//! connection (never counted), and every request it did send must get a complete 200 response.
//! Connect and handshake errors count as failures too. (h2load is not used here: it honours a
//! GOAWAY but neither reconnects nor retries the requests it had queued when the GOAWAY
//! arrived, which nghttp2 then refuses to send and h2load counts as failed; see README.)

mod tls_support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use integration::{
    examples, pid_alive, send_signal, wait_for, wait_until, Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tls_support::{client_config, CertFiles, TestCert, SERVER_NAME};

/// Concurrent h2 connections of the load, and streams in flight on each.
const CONNECTIONS: usize = 4;
const STREAMS: usize = 8;
/// Upgrades under load.
const UPGRADES: usize = 10;
/// How long a draining generation may take to exit after its successor is ready: its clients
/// only need to finish the streams in flight (hammer time is 60 s).
const EXIT_WITHIN: Duration = Duration::from_secs(10);
/// How long a generation whose only connection is an idle h2 one may take to exit: well
/// under the 5 s after which a drain closes idle connections itself, so only a GOAWAY (the
/// client then closes the connection) gets it out in time.
const IDLE_EXIT_WITHIN: Duration = Duration::from_secs(3);
/// A response slower than this counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the client reaches the server.
#[derive(Clone)]
enum Transport {
    /// TLS with ALPN `h2`, trusting the test certificate.
    Tls(Arc<ClientConfig>),
    /// h2c: HTTP/2 with prior knowledge on plain TCP.
    H2c,
}

impl Transport {
    /// The URI of the requests (the server answers any path the same).
    fn uri(&self) -> &'static str {
        match self {
            Transport::Tls(_) => "https://localhost/",
            Transport::H2c => "http://localhost/",
        }
    }
}

/// Starts `hello_tls` with a fresh certificate; returns it, the address and the transport.
fn start() -> (Server, SocketAddr, Transport) {
    let dir = TempDir::new("h2-goaway");
    let cert = TestCert::generate("h2");
    let files = CertFiles::in_dir(dir.path());
    files.install(&cert);
    let server = Server::start_in(dir, &examples().hello_tls, &files.args());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
    // Offering only h2: a server that does not negotiate it fails the test.
    let mut config = client_config(&[&cert]);
    config.alpn_protocols = vec![b"h2".to_vec()];
    (server, addr, Transport::Tls(Arc::new(config)))
}

/// Starts `hello` with a second listener for h2c (`--bind h2c:127.0.0.1:0`, the address
/// file's second line); returns it, the h2c address and the transport.
fn start_h2c() -> (Server, SocketAddr, Transport) {
    let server = Server::start(&examples().hello, &["--bind", "h2c:127.0.0.1:0"]);
    let addrs = std::fs::read_to_string(server.addr_file()).expect("an address file");
    let addr = addrs
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("no second address in the address file: {addrs:?}"));
    (server, addr, Transport::H2c)
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    /// Complete 200 responses, by the pid that answered.
    ok_by_pid: BTreeMap<i32, u64>,
    /// Sent requests without a complete 200 response, and connections that failed.
    failures: Vec<String>,
    /// Connections made.
    connections: u64,
    /// Connections on which the server said GOAWAY.
    told_to_go: u64,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.ok_by_pid.values().sum()
    }
}

/// An h2 connection (for TLS: with ALPN `h2`), after the h2 handshake; its driver runs as a
/// task until the connection ends.
async fn connect(
    addr: SocketAddr,
    transport: &Transport,
) -> Result<h2::client::SendRequest<bytes::Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let config = match transport {
        Transport::H2c => {
            let (send, connection) = h2::client::handshake(tcp)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(connection);
            return Ok(send);
        }
        Transport::Tls(config) => config.clone(),
    };
    let name = ServerName::try_from(SERVER_NAME).expect("a valid name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server did not negotiate h2".into());
    }
    let (send, connection) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(send)
}

/// How a request ended, when nothing failed.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A complete 200 response from this pid.
    Answered(i32),
    /// Not sent: the server had said GOAWAY on this connection.
    SentAway,
}

/// Why a request could not be sent: a GOAWAY from the server is the expected way to be moved;
/// a connection that ended otherwise (a close, a reset) is a failure.
fn not_sent(e: h2::Error) -> Result<Outcome, String> {
    if e.is_go_away() && e.is_remote() {
        Ok(Outcome::SentAway)
    } else {
        Err(format!("the connection ended without a GOAWAY: {e}"))
    }
}

/// One request on `send`; `Err` for a request that was sent and got no complete 200
/// response, or a connection that ended without a GOAWAY.
async fn request(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    uri: &str,
) -> Result<Outcome, String> {
    *send = match send.clone().ready().await {
        Ok(ready) => ready,
        Err(e) => return not_sent(e),
    };
    let request = http::Request::get(uri).body(()).expect("a valid request");
    let response = match send.send_request(request, true) {
        Ok((response, _)) => response,
        Err(e) => return not_sent(e),
    };
    let complete = async {
        let response = response.await.map_err(|e| format!("response: {e}"))?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("body: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        text.strip_prefix("hello from pid ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|pid| pid.parse().ok())
            .map(Outcome::Answered)
            .ok_or(format!("not a hello body: {text:?}"))
    };
    tokio::time::timeout(RESPONSE_TIMEOUT, complete)
        .await
        .unwrap_or_else(|_| Err(format!("no complete response within {RESPONSE_TIMEOUT:?}")))
}

/// One client connection at a time, with [`STREAMS`] requests in flight on it, until `stop`;
/// a new connection whenever the server sends the current one away.
async fn client(
    addr: SocketAddr,
    transport: Transport,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let send = match connect(addr, &transport).await {
            Ok(send) => send,
            Err(e) => {
                tally.lock().unwrap().failures.push(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tally.lock().unwrap().connections += 1;
        let streams: Vec<_> = (0..STREAMS)
            .map(|_| {
                let (mut send, stop, tally) = (send.clone(), stop.clone(), tally.clone());
                let uri = transport.uri();
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let outcome = request(&mut send, uri).await;
                        let mut tally = tally.lock().unwrap();
                        match outcome {
                            Ok(Outcome::Answered(pid)) => {
                                *tally.ok_by_pid.entry(pid).or_default() += 1
                            }
                            Ok(Outcome::SentAway) => return true,
                            Err(e) => {
                                tally.failures.push(e);
                                return false;
                            }
                        }
                    }
                    false
                })
            })
            .collect();
        drop(send);
        let mut sent_away = false;
        for stream in streams {
            sent_away |= stream.await.unwrap_or(false);
        }
        if sent_away {
            tally.lock().unwrap().told_to_go += 1;
        }
    }
}

/// The load: [`CONNECTIONS`] clients on a runtime of their own thread.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, transport: Transport) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (s, t) = (stop.clone(), tally.clone());
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let clients: Vec<_> = (0..CONNECTIONS)
                    .map(|_| tokio::spawn(client(addr, transport.clone(), s.clone(), t.clone())))
                    .collect();
                for c in clients {
                    let _ = c.await;
                }
            });
        });
        Load {
            stop,
            tally,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> u64 {
        self.tally.lock().unwrap().ok()
    }

    /// Waits until `more` further responses arrived.
    fn wait_for_more(&self, more: u64) {
        let target = self.ok() + more;
        assert!(
            wait_until(TIMEOUT, || self.ok() >= target),
            "fewer than {more} more responses within {TIMEOUT:?}: {:?}",
            self.tally.lock().unwrap()
        );
    }

    /// Stops the clients (each finishes the requests it has in flight) and returns the tally.
    fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the load thread panicked");
        }
        std::mem::take(&mut self.tally.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SIGHUPs the generation in the pid file; returns (old, new) once the new one wrote its pid.
fn upgrade(server: &Server) -> (i32, i32) {
    let old = server.read_pid_file().expect("a pid file");
    send_signal(old, Signal::SIGHUP);
    let new = wait_for(TIMEOUT, || server.read_pid_file().filter(|pid| *pid != old))
        .unwrap_or_else(|| panic!("no new generation after SIGHUP to {old}"));
    (old, new)
}

/// Waits until `pid` has exited, within [`EXIT_WITHIN`] of `since`.
fn assert_exits_promptly(pid: i32, since: Instant, server: &Server) {
    let exited = wait_until(EXIT_WITHIN, || !pid_alive(pid));
    assert!(
        exited,
        "old generation {pid} still runs {:?} after its successor was ready (hammer time is \
         60 s: its h2 connections were not sent away); log:\n{}",
        since.elapsed(),
        server.log()
    );
}

/// [`CONNECTIONS`] h2 clients with [`STREAMS`] streams each across [`UPGRADES`] upgrades:
/// nothing fails, each old generation exits within [`EXIT_WITHIN`], every generation serves,
/// every client is sent away by a GOAWAY at each upgrade, and every drain cuts nothing.
fn streams_cross_upgrades(server: Server, addr: SocketAddr, transport: Transport) {
    let load = Load::start(addr, transport);
    load.wait_for_more(200);
    let mut pids = vec![server.first_pid()];
    for _ in 0..UPGRADES {
        let (old, new) = upgrade(&server);
        let ready = Instant::now();
        assert_exits_promptly(old, ready, &server);
        pids.push(new);
        load.wait_for_more(100);
    }
    let tally = load.stop();
    assert!(
        tally.failures.is_empty(),
        "{} failed request(s) or connection(s), first: {:?}; {} responses",
        tally.failures.len(),
        tally.failures.iter().take(5).collect::<Vec<_>>(),
        tally.ok()
    );
    // Every generation served, and the clients moved with each upgrade: at least one new
    // connection per client per upgrade, each after a GOAWAY.
    for pid in &pids {
        assert!(
            tally.ok_by_pid.get(pid).is_some_and(|n| *n > 0),
            "generation pid {pid} served nothing: {:?}",
            tally.ok_by_pid
        );
    }
    assert!(
        tally.told_to_go >= (UPGRADES * CONNECTIONS) as u64,
        "only {} connection(s) were sent away by a GOAWAY in {UPGRADES} upgrades of {CONNECTIONS} \
         connections: {tally:?}",
        tally.told_to_go
    );
    assert_eq!(
        server.log_count(", 0 cut"),
        UPGRADES,
        "every drain ends with nothing cut; log:\n{}",
        server.log()
    );
}

#[test]
fn h2_streams_cross_ten_upgrades_with_no_failure() {
    let (server, addr, transport) = start();
    streams_cross_upgrades(server, addr, transport);
}

#[test]
fn h2c_streams_cross_ten_upgrades_with_no_failure() {
    let (server, addr, transport) = start_h2c();
    streams_cross_upgrades(server, addr, transport);
}

#[test]
fn an_idle_h2_connection_is_sent_away_and_its_generation_exits() {
    let (server, addr, transport) = start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut send = runtime
        .block_on(connect(addr, &transport))
        .expect("an h2 connection");
    let first = runtime.block_on(request(&mut send, transport.uri()));
    assert_eq!(first, Ok(Outcome::Answered(server.first_pid())));
    // Idle from now on: nothing the server writes would carry the frame. The connection's
    // driver runs while this thread sleeps in `block_on`, so wait there for the old
    // generation to exit: it can only once this connection is gone.
    let (old, _new) = upgrade(&server);
    let ready = Instant::now();
    let exited = runtime.block_on(async {
        tokio::time::timeout(IDLE_EXIT_WITHIN, async {
            while pid_alive(old) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    });
    assert!(
        exited,
        "old generation {old} still runs {:?} after its successor was ready: the idle h2 \
         connection was not sent away; log:\n{}",
        ready.elapsed(),
        server.log()
    );
    // The connection was sent away by a GOAWAY: it refuses new streams with that reason.
    let after = runtime.block_on(request(&mut send, transport.uri()));
    assert_eq!(after, Ok(Outcome::SentAway));
}
