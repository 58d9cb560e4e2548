//! A plain actix-web "hello" server without actix-endless.
//!
//! It is the baseline of the restart benchmark (`restart_bench`): the "naive" rows restart it
//! the usual way (SIGTERM, wait for exit, start again on the same port) and the steady-state
//! comparison measures the cost of actix-endless against it.
//!
//! ```text
//! plain_hello [--bind ADDR]... [--workers N] [--addr-file PATH]
//! ```
//!
//! * `--bind ADDR`: TCP address, repeatable; default `127.0.0.1:8080`.
//! * `--workers N`: actix worker threads (default: actix default).
//! * `--addr-file PATH`: after binding, the bound addresses are written here atomically (write
//!   a temporary file, then rename), one per line, e.g. `127.0.0.1:41234\n`.
//!
//! Route: `GET /` -> 200 `hello from pid {pid}, generation 1, release v1\n`: the same
//! handler as the `hello` example's (same extractor, same formatting, same body length), so
//! that the steady-state comparison measures the crate and not a difference in the handlers.
//!
//! Signals are actix's defaults: SIGINT/SIGTERM stop gracefully, SIGQUIT stops at once.

use std::{fs, io, net::SocketAddr, path::PathBuf, process::ExitCode};

use actix_web::{web, App, HttpResponse, HttpServer};

/// Parsed command line.
struct Args {
    binds: Vec<String>,
    workers: Option<usize>,
    addr_file: Option<PathBuf>,
}

/// Parses the command line; `Err` holds a message for the user.
fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        binds: Vec::new(),
        workers: None,
        addr_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => args.binds.push(value()?),
            "--workers" => {
                let v = value()?;
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--workers: not a positive integer: {v}"))?;
                args.workers = Some(n);
            }
            "--addr-file" => args.addr_file = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                return Err(
                    "usage: plain_hello [--bind ADDR]... [--workers N] [--addr-file PATH]".into(),
                )
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    if args.binds.is_empty() {
        args.binds.push("127.0.0.1:8080".into());
    }
    Ok(args)
}

/// Writes `addrs` to `path` atomically: a sibling temporary file renamed over `path`.
fn write_addr_file(path: &PathBuf, addrs: &[SocketAddr]) -> io::Result<()> {
    let text: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    let mut tmp = path.clone().into_os_string();
    tmp.push(format!(".tmp.{}", std::process::id()));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// `GET /`, written like the `hello` example's handler (there the generation comes from
/// `actix_endless::generation()`; without the crate there is only generation 1).
async fn index(release: web::Data<&'static str>) -> HttpResponse {
    HttpResponse::Ok().body(format!(
        "hello from pid {}, generation {}, release {}\n",
        std::process::id(),
        1,
        release.get_ref()
    ))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("plain_hello: {msg}");
            return ExitCode::from(2);
        }
    };
    match actix_rt::System::new().block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plain_hello: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Binds, publishes the addresses, then serves until a stop signal.
async fn serve(args: Args) -> io::Result<()> {
    let mut server = HttpServer::new(|| {
        App::new()
            .app_data(web::Data::new("v1"))
            .route("/", web::get().to(index))
    });
    if let Some(n) = args.workers {
        server = server.workers(n);
    }
    for addr in &args.binds {
        server = server.bind(addr)?;
    }
    // The sockets are listening from here on: connections queue in the backlog until the
    // workers accept them, so publishing the address now is safe.
    if let Some(path) = &args.addr_file {
        write_addr_file(path, &server.addrs())?;
    }
    server.run().await
}
