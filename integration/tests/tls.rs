//! TLS certificate rotation with `hello_tls`: the certificate and key are read when each
//! generation starts, so replacing the files and sending SIGHUP rotates them with no failed
//! handshake, and a broken new certificate makes the upgrade fail cleanly while the old
//! process serves on with the old certificate.
//!
//! The certificates are generated here with `rcgen`; the client is a small HTTPS/1.1 client
//! written with `rustls` directly over [`TcpStream`], which trusts every certificate of the
//! test and reports which one the server presented. Like the support crate's `LoadClient`, it
//! never retries, so every failed connection, handshake or request is seen and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use integration::{
    children_of, examples, replace_file, send_signal, wait_for, wait_until, Server, TempDir,
    HTTP_TIMEOUT, TIMEOUT,
};
use nix::sys::signal::Signal;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// What the library logs when an upgrade fails.
const UPGRADE_FAILED: &str = "upgrade failed";

/// What `hello_tls` logs when it cannot load its certificate or key.
const CANNOT_LOAD: &str = "cannot load the TLS certificate";

mod tls_support;

use tls_support::{client_config, CertFiles, TestCert, SERVER_NAME};

/// Starts `hello_tls` in `dir`, whose `cert.pem` and `key.pem` hold `cert`.
fn start_tls_server(dir: TempDir, cert: &TestCert) -> (Server, CertFiles) {
    let files = CertFiles::in_dir(dir.path());
    files.install(cert);
    let server = Server::start_in(dir, &examples().hello_tls, &files.args());
    (server, files)
}

// ---------------------------------------------------------------------------------------------
// A strict HTTPS client
// ---------------------------------------------------------------------------------------------

/// A response read over TLS, with the certificate the server presented.
#[derive(Debug)]
struct HttpsResponse {
    status: u16,
    body: String,
    /// The DER of the peer's end-entity certificate.
    peer_cert: CertificateDer<'static>,
}

impl HttpsResponse {
    /// The pid of a `hello from pid {pid}, ...` body.
    fn hello_pid(&self) -> Option<i32> {
        self.body
            .strip_prefix("hello from pid ")?
            .split(',')
            .next()?
            .parse()
            .ok()
    }
}

/// An HTTPS/1.1 client for `https://localhost:{port}/` that trusts exactly the test
/// certificates it is given and makes one new connection, with a full handshake, per request.
#[derive(Clone)]
struct HttpsClient {
    port: u16,
    config: Arc<ClientConfig>,
    /// The trusted certificates, to name the one a server presented.
    names: Arc<Vec<(CertificateDer<'static>, &'static str)>>,
}

impl HttpsClient {
    fn new(port: u16, trusted: &[&TestCert]) -> HttpsClient {
        let mut config = client_config(trusted);
        // A resumed session skips the certificate: every connection must show the certificate
        // its server loaded, so resumption is off.
        config.resumption = Resumption::disabled();
        HttpsClient {
            port,
            config: Arc::new(config),
            names: Arc::new(
                trusted
                    .iter()
                    .map(|cert| (cert.der.clone(), cert.name))
                    .collect(),
            ),
        }
    }

    /// The name of the test certificate `der`, or `unknown`.
    fn cert_name(&self, der: &CertificateDer<'_>) -> &'static str {
        self.names
            .iter()
            .find(|(known, _)| known == der)
            .map_or("unknown", |(_, name)| name)
    }

    /// `GET path` with `Connection: close` on a new connection. Any failure (connect,
    /// handshake, I/O, timeout, malformed or incomplete response) is an `Err` naming the
    /// step that failed; a non-200 status is not an error.
    fn get(&self, path: &str) -> Result<HttpsResponse, String> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut socket = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)
            .map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
        socket
            .set_read_timeout(Some(HTTP_TIMEOUT))
            .and_then(|()| socket.set_write_timeout(Some(HTTP_TIMEOUT)))
            .and_then(|()| socket.set_nodelay(true))
            .map_err(|e| format!("socket options: {e}"))?;

        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        let mut conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| format!("client connection: {e}"))?;
        conn.complete_io(&mut socket)
            .map_err(|e| format!("handshake: {e} ({:?})", e.kind()))?;
        if conn.is_handshaking() {
            return Err("handshake: the server stopped before it completed".to_owned());
        }
        let peer_cert = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("handshake: the server presented no certificate")?
            .clone()
            .into_owned();

        let mut stream = StreamOwned::new(conn, socket);
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(|e| format!("writing the request: {e} ({:?})", e.kind()))?;
        let (status, body) = read_response(&mut BufReader::new(stream))?;
        Ok(HttpsResponse {
            status,
            body,
            peer_cert,
        })
    }
}

/// Reads one line ending in CRLF, without it.
fn read_line(reader: &mut impl BufRead, what: &str) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(format!("end of stream before the {what}")),
        Ok(_) => line
            .strip_suffix("\r\n")
            .map(str::to_owned)
            .ok_or_else(|| format!("truncated {what}: {line:?}")),
        Err(e) => Err(format!("reading the {what}: {e} ({:?})", e.kind())),
    }
}

/// Reads one HTTP/1.x response with a `Content-Length` body: `(status, body)`.
///
/// The body is read by length rather than to the end of the stream, so a server that closes
/// the TCP connection without a TLS `close_notify` does not count as a failure.
fn read_response(reader: &mut impl BufRead) -> Result<(u16, String), String> {
    let status_line = read_line(reader, "status line")?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let mut length = None;
    loop {
        let line = read_line(reader, "headers")?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header {line:?}"))?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("malformed content-length {value:?}"))?,
            );
        }
    }
    let length = length.ok_or("response without content-length")?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("reading a {length}-byte body: {e} ({:?})", e.kind()))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of `GET /` for `hello_tls`.
fn hello(pid: i32, generation: u32) -> String {
    format!("hello from pid {pid}, generation {generation}, release tls\n")
}

/// `GET /` must answer 200 from `pid` in `generation` with certificate `cert`.
fn assert_served(client: &HttpsClient, pid: i32, generation: u32, cert: &TestCert) {
    let response = client
        .get("/")
        .unwrap_or_else(|e| panic!("GET / failed: {e}"));
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, hello(pid, generation).as_str())
    );
    assert_eq!(
        client.cert_name(&response.peer_cert),
        cert.name,
        "pid {pid} presented the wrong certificate"
    );
}

/// Polls `GET /` until a pid other than `old` answers, records it for cleanup and returns
/// the response. Failed requests are retried here; the [`HttpsLoad`] counts failures.
fn wait_for_new_generation(server: &Server, client: &HttpsClient, old: i32) -> HttpsResponse {
    let mut last = String::from("no request made");
    wait_for(TIMEOUT, || match client.get("/") {
        Ok(response) => {
            let pid = response.hello_pid();
            if let Some(pid) = pid {
                server.record_pid(pid);
            }
            if pid.is_some_and(|pid| pid != old) {
                return Some(response);
            }
            last = format!("{} {:?}", response.status, response.body);
            None
        }
        Err(error) => {
            last = error;
            None
        }
    })
    .unwrap_or_else(|| {
        panic!("no pid other than {old} answered within {TIMEOUT:?}; last answer: {last}")
    })
}

// ---------------------------------------------------------------------------------------------
// Load: HTTPS requests in a loop, counting failures
// ---------------------------------------------------------------------------------------------

/// What an [`HttpsLoad`] has seen so far.
#[derive(Clone, Debug, Default)]
struct HttpsStats {
    /// Requests answered `200` with a `hello from pid N, ...` body.
    successes: u64,
    /// Everything else: connect, handshake or I/O errors, timeouts, other answers.
    failures: u64,
    /// The first [`HttpsStats::MAX_ERRORS`] failures, with the time since the load started.
    errors: Vec<String>,
    /// For every pid that answered, the names of the certificates its connections showed.
    certs_by_pid: BTreeMap<i32, BTreeSet<&'static str>>,
}

impl HttpsStats {
    const MAX_ERRORS: usize = 10;

    /// Asserts that no request failed and that the pids answered with exactly `expected`
    /// certificates: `(pid, certificate name)` pairs.
    fn assert_clean(&self, expected: &[(i32, &str)]) {
        assert_eq!(
            self.failures,
            0,
            "{} of {} HTTPS requests failed; first errors:\n{}",
            self.failures,
            self.failures + self.successes,
            self.errors.join("\n")
        );
        let expected: BTreeMap<i32, BTreeSet<&str>> = expected
            .iter()
            .map(|&(pid, cert)| (pid, [cert].into()))
            .collect();
        assert_eq!(
            self.certs_by_pid, expected,
            "the pids that answered and the certificates they presented"
        );
    }
}

/// A thread sending `GET /` over a new TLS connection per request, as fast as it can, until
/// stopped; no retries.
struct HttpsLoad {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<HttpsStats>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsLoad {
    fn start(client: &HttpsClient) -> HttpsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(HttpsStats::default()));
        let thread = thread::spawn({
            let (client, stop, stats) = (client.clone(), Arc::clone(&stop), Arc::clone(&stats));
            move || run_load(&client, &stop, &stats)
        });
        HttpsLoad {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// A copy of the statistics so far.
    fn stats(&self) -> HttpsStats {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until at least `count` more requests have succeeded.
    ///
    /// # Panics
    ///
    /// If they have not within [`TIMEOUT`].
    fn wait_for_successes(&self, count: u64) {
        let before = self.stats().successes;
        assert!(
            wait_until(TIMEOUT, || self.stats().successes >= before + count),
            "the HTTPS load made fewer than {count} successful requests within {TIMEOUT:?}: {:?}",
            self.stats()
        );
    }

    /// Stops after the current request and returns the final statistics.
    fn stop(mut self) -> HttpsStats {
        self.shut_down();
        self.stats()
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("HTTPS load thread panicked");
        }
    }
}

impl Drop for HttpsLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_load(client: &HttpsClient, stop: &AtomicBool, stats: &Mutex<HttpsStats>) {
    let started = Instant::now();
    let mut requests: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        requests += 1;
        let result =
            client
                .get("/")
                .and_then(|response| match (response.status, response.hello_pid()) {
                    (200, Some(pid)) => Ok((pid, client.cert_name(&response.peer_cert))),
                    (status, _) => {
                        Err(format!("unexpected response {status}: {:?}", response.body))
                    }
                });
        let mut stats = stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok((pid, cert)) => {
                stats.successes += 1;
                stats.certs_by_pid.entry(pid).or_default().insert(cert);
            }
            Err(error) => {
                stats.failures += 1;
                if stats.errors.len() < HttpsStats::MAX_ERRORS {
                    stats.errors.push(format!(
                        "request #{requests} at {:.3}s: {error}",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// SIGHUPs `old` and waits until the new generation answers with `cert` and `old` has exited
/// with status 0; returns the new pid.
fn upgrade(server: &mut Server, client: &HttpsClient, old: i32, cert: &TestCert) -> i32 {
    send_signal(old, Signal::SIGHUP);
    let response = wait_for_new_generation(server, client, old);
    let new = response.hello_pid().expect("a hello body");
    assert_eq!(
        client.cert_name(&response.peer_cert),
        cert.name,
        "the new generation (pid {new}) presented the wrong certificate"
    );
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "old process exited with {status}");
    assert_eq!(server.read_pid_file(), Some(new));
    new
}

#[test]
fn sighup_rotates_the_certificate() {
    let (cert_a, cert_b) = (TestCert::generate("A"), TestCert::generate("B"));
    let (mut server, files) = start_tls_server(TempDir::new("tls-rotate"), &cert_a);
    let client = HttpsClient::new(server.port(), &[&cert_a, &cert_b]);
    let old = server.first_pid();
    assert_served(&client, old, 1, &cert_a);

    let load = HttpsLoad::start(&client);
    load.wait_for_successes(10);

    files.install(&cert_b);
    let new = upgrade(&mut server, &client, old, &cert_b);

    // The old process has exited: a few more requests, all to the new generation.
    load.wait_for_successes(10);
    load.stop().assert_clean(&[(old, "A"), (new, "B")]);
    assert_served(&client, new, 2, &cert_b);
}

#[test]
fn broken_certificate_fails_the_upgrade_cleanly() {
    let (cert_a, cert_b) = (TestCert::generate("A"), TestCert::generate("B"));
    let (mut server, files) = start_tls_server(TempDir::new("tls-broken"), &cert_a);
    let client = HttpsClient::new(server.port(), &[&cert_a, &cert_b]);
    let old = server.first_pid();
    assert_served(&client, old, 1, &cert_a);

    let load = HttpsLoad::start(&client);
    load.wait_for_successes(10);

    // The new generation cannot load this certificate and exits 1: the upgrade fails.
    replace_file(&files.cert, b"not a certificate\n", 0o644);
    send_signal(old, Signal::SIGHUP);
    assert!(
        server.wait_for_log(UPGRADE_FAILED, 1, TIMEOUT),
        "`{UPGRADE_FAILED}` was not logged"
    );
    assert!(
        server.log_contains(CANNOT_LOAD),
        "the new generation did not log `{CANNOT_LOAD}`"
    );
    let mut children = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            children = children_of(old);
            children.is_empty()
        }),
        "the failed upgrade left children (pid, state) of {old}: {children:?}"
    );

    // The old process serves on, with the certificate it loaded.
    load.wait_for_successes(10);
    load.stats().assert_clean(&[(old, "A")]);
    assert_eq!(server.try_wait(), None, "the old process exited");
    assert_eq!(server.read_pid_file(), Some(old));
    assert_served(&client, old, 1, &cert_a);

    // With a valid certificate back, the next upgrade succeeds and rotates it.
    files.install(&cert_b);
    let new = upgrade(&mut server, &client, old, &cert_b);
    load.wait_for_successes(10);
    load.stop().assert_clean(&[(old, "A"), (new, "B")]);
    // The failed attempt did not use up a generation number.
    assert_served(&client, new, 2, &cert_b);
}

#[test]
fn tls_handshake_timeout_closes_a_silent_connection() {
    let cert = TestCert::generate("A");
    let dir = TempDir::new("tls-handshake-timeout");
    let files = CertFiles::in_dir(dir.path());
    files.install(&cert);
    let mut args = files.args().to_vec();
    args.extend(["--tls-handshake-timeout", "300ms"]);
    let server = Server::start_in(dir, &examples().hello_tls, &args);
    // A client that connects and never starts the handshake: the server closes the connection
    // after 300 ms (actix-tls's default would be 3 s).
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port())).expect("connect");
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("a read timeout");
    let start = Instant::now();
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut stream, &mut byte);
    let waited = start.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut),
        "expected the server to close the connection, got {read:?} after {waited:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(250)
            && waited < std::time::Duration::from_secs(2),
        "the silent connection was closed after {waited:?}, not after the 300 ms handshake timeout"
    );
    // Served as usual otherwise.
    let client = HttpsClient::new(server.port(), &[&cert]);
    assert_served(&client, server.first_pid(), 1, &cert);
}
