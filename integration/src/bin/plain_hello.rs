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

use std::{io, process::ExitCode};

use integration::hello_args::{self, HelloArgs};

use actix_web::{web, App, HttpResponse, HttpServer};

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
    let usage = "usage: plain_hello [--bind ADDR]... [--workers N] [--addr-file PATH]";
    let args = match hello_args::parse(std::env::args().skip(1), usage, false) {
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
async fn serve(args: HelloArgs) -> io::Result<()> {
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
        hello_args::write_addr_file(path, &server.addrs())?;
    }
    server.run().await
}
