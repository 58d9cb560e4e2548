//! The restart benchmark's Rust peer: a hyper 1 "hello" server upgraded with Cloudflare's
//! [ecdysis](https://crates.io/crates/ecdysis) and drained with hyper-util's
//! `GracefulShutdown`, the way those two crates are meant to be combined.
//!
//! ```text
//! ecdysis_hello [--bind ADDR] [--workers N] [--addr-file PATH] [--pid-file PATH]
//! ```
//!
//! * `--bind ADDR`: TCP address (default `127.0.0.1:8080`); port 0 picks a free port once, and
//!   every later generation serves that same port (see below).
//! * `--workers N`: tokio worker threads (default: the number of CPUs).
//! * `--addr-file PATH`: the bound address is written here atomically once listening.
//! * `--pid-file PATH`: ecdysis's pid file, rewritten by each generation when it is ready.
//!
//! Route: `GET /` (any path) -> 200 `hello from pid {pid}, generation {n}, release v1\n`,
//! the body of the `hello` example and `plain_hello` (same length), with the same headers
//! (`content-length` and `date`, no `content-type`), HTTP/1.1 with keep-alive.
//!
//! Signals, all handled by ecdysis (`TokioEcdysisBuilder`):
//! * `SIGHUP`: upgrade. ecdysis fork-execs this binary with the same arguments, hands it the
//!   listening socket, and waits until the new process calls `ready()` (which rewrites the pid
//!   file). Then it stops the old process's listener stream; the old process stops accepting
//!   and drains with `GracefulShutdown` (idle keep-alive connections are closed at once, busy
//!   ones after their current response), then exits. If the new process fails before it is
//!   ready the old one goes on serving.
//! * `SIGTERM`, `SIGINT`: stop accepting, drain the same way, exit.
//!
//! The drain is bounded by 30 s; connections still open then are cut.
//!
//! ecdysis finds an inherited socket by its address, and the child is started with the
//! parent's arguments, so with `--bind 127.0.0.1:0` the child could not know the port. The
//! first process therefore publishes the address it bound in `ECDYSIS_HELLO_BIND` (the child
//! inherits the environment, as ecdysis's own example does with its reload counter); a process
//! that finds it set asks ecdysis for that address. The first process binds before ecdysis
//! asks for the socket, and hands it over in ecdysis's socket-building closure.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    process::ExitCode,
    time::{Duration, Instant},
};

use ecdysis::tokio_ecdysis::{SignalKind, StopOnShutdown, StoppableStream, TokioEcdysisBuilder};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use integration::hello_args::{self, HelloArgs};
use tokio_stream::{wrappers::TcpListenerStream, StreamExt};

/// The address the first generation bound, for the later ones.
const BIND_ENV: &str = "ECDYSIS_HELLO_BIND";
/// The generation number, 1 for the first process.
const GENERATION_ENV: &str = "ECDYSIS_HELLO_GENERATION";
/// Longest drain before the remaining connections are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let usage = "usage: ecdysis_hello [--bind ADDR] [--workers N] [--addr-file PATH] \
                 [--pid-file PATH]";
    let args = match hello_args::parse(std::env::args().skip(1), usage, true) {
        Ok(args) if args.binds.len() > 1 => {
            eprintln!("ecdysis_hello: one --bind only");
            return ExitCode::from(2);
        }
        Ok(args) => args,
        Err(msg) => {
            eprintln!("ecdysis_hello: {msg}");
            return ExitCode::from(2);
        }
    };
    // The environment is changed here, before the runtime starts any thread.
    let generation = std::env::var(GENERATION_ENV)
        .ok()
        .and_then(|g| g.parse::<u64>().ok())
        .map_or(1, |g| g + 1);
    std::env::set_var(GENERATION_ENV, generation.to_string());
    let (addr, first) = match std::env::var(BIND_ENV).ok().and_then(|a| a.parse().ok()) {
        Some(addr) => (addr, None),
        None => match TcpListener::bind(&args.binds[0]).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((addr, listener)) => {
                std::env::set_var(BIND_ENV, addr.to_string());
                (addr, Some(listener))
            }
            Err(e) => {
                eprintln!("ecdysis_hello: bind {}: {e}", args.binds[0]);
                return ExitCode::FAILURE;
            }
        },
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        rt.worker_threads(n);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ecdysis_hello: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(serve(&args, addr, first, generation));
    // Connections cut at the drain deadline are dropped with the runtime, without waiting.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecdysis_hello: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Listens (or inherits the socket), serves until ecdysis reports an upgrade or a stop, then
/// drains.
async fn serve(
    args: &HelloArgs,
    addr: SocketAddr,
    mut first: Option<TcpListener>,
    generation: u64,
) -> Result<(), String> {
    let pid = std::process::id();
    let tag = format!("pid {pid} generation {generation}");
    let mut builder =
        TokioEcdysisBuilder::new(SignalKind::hangup()).map_err(|e| format!("ecdysis: {e}"))?;
    for sig in [SignalKind::terminate(), SignalKind::interrupt()] {
        builder
            .stop_on_signal(sig)
            .map_err(|e| format!("ecdysis stop signal: {e}"))?;
    }
    if let Some(p) = &args.pid_file {
        builder.set_pid_file(p);
    }
    // The closure runs only when ecdysis has no inherited socket for `addr`.
    let listener = builder
        .build_listen_tcp(StopOnShutdown::Yes, addr, |socket, addr| {
            match first.take() {
                Some(bound) => Ok(bound),
                None => {
                    socket.set_reuse_address(true)?;
                    socket.bind(&addr.into())?;
                    socket.listen(1024)?;
                    Ok(socket.into())
                }
            }
        })
        .map_err(|e| format!("listen on {addr}: {e}"))?;
    if let Some(path) = &args.addr_file {
        hello_args::write_addr_file(path, &[addr])
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let inherited = builder.is_child();
    let accept = tokio::spawn(accept_loop(listener, generation));
    let (_ecdysis, upgrade) = builder.ready().map_err(|e| format!("ecdysis ready: {e}"))?;
    eprintln!(
        "ecdysis_hello: {tag}: ready on {addr}{}",
        if inherited { " (inherited socket)" } else { "" }
    );

    let exit = upgrade.await;
    let t0 = Instant::now();
    // ecdysis has stopped the listener stream (after an upgrade: once the new process was
    // ready); the accept loop ends and hands over the connections it watches.
    let graceful = accept.await.map_err(|e| format!("accept loop: {e}"))?;
    let open = graceful.count();
    eprintln!("ecdysis_hello: {tag}: {exit:?}; draining {open} connection(s)");
    match tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await {
        Ok(()) => eprintln!(
            "ecdysis_hello: {tag}: drained in {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        ),
        Err(_) => eprintln!("ecdysis_hello: {tag}: drain cut after {DRAIN_TIMEOUT:?}"),
    }
    exit.map(|_| ()).map_err(|e| format!("ecdysis: {e}"))
}

/// Accepts until ecdysis stops the stream; every connection is served by hyper's HTTP/1
/// server with keep-alive and watched by the returned `GracefulShutdown`.
async fn accept_loop(
    mut listener: StoppableStream<TcpListenerStream>,
    generation: u64,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    while let Some(accepted) = listener.next().await {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("ecdysis_hello: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // As actix-web does for TCP streams.
        let _ = stream.set_nodelay(true);
        let conn = http1::Builder::new().keep_alive(true).serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| hello(req, generation)),
        );
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that goes away mid-request is not this server's error.
            let _ = watched.await;
        });
    }
    graceful
}

/// `GET /`: the `hello` example's body.
async fn hello<B>(_req: Request<B>, generation: u64) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from(format!(
        "hello from pid {}, generation {generation}, release v1\n",
        std::process::id()
    )))))
}
