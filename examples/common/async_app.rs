//! The `async_app` application, shared by the `async_app` (`#[actix_web::main]`) and
//! `async_app_tokio` (`#[tokio::main]`) examples.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use actix_rt::net::TcpStream;
use actix_web::{web, App, HttpResponse};

use crate::common;

/// The flags of this example besides the common ones.
#[derive(Debug, clap::Args)]
pub struct Own {
    /// The backend to connect to, HOST:PORT.
    #[arg(long, value_name = "ADDR", env = "ENDLESS_BACKEND")]
    backend: String,

    /// Fail the setup while this file exists (for tests: a forced setup error).
    #[arg(long, value_name = "PATH", env = "ENDLESS_FAIL_SETUP_IF")]
    fail_setup_if: Option<PathBuf>,

    /// Append this process's pid to this file each time the setup runs (for tests).
    #[arg(long, value_name = "PATH", env = "ENDLESS_SETUP_TRACE")]
    setup_trace: Option<PathBuf>,
}

/// What the setup learned: where the backend is and what it calls itself.
struct Backend {
    addr: String,
    name: String,
}

pub async fn serve(options: common::Options, own: Own) -> io::Result<()> {
    if options.master {
        // The master never serves: the setup runs in each worker only.
        let endless = actix_endless::Endless::with_setup(
            move || setup(own),
            |backend: &web::Data<Backend>| App::new().configure(routes(backend.clone())),
        );
        let endless = common::bind_all(endless, &options)?;
        return common::configure(endless, &options).run().await;
    }
    // The drop-in shape: setup in `main`, then the same chain as `HttpServer`.
    let backend = setup(own).await.map_err(actix_endless::setup_failed)?;
    let endless =
        actix_endless::Endless::new(move || App::new().configure(routes(backend.clone())));
    let endless = common::bind_all(endless, &options)?;
    common::configure(endless, &options).run().await
}

/// Connects to the backend and checks that it answers; runs once per serving process.
async fn setup(own: Own) -> io::Result<web::Data<Backend>> {
    if let Some(path) = &own.setup_trace {
        trace_setup(path)?;
    }
    if let Some(path) = own.fail_setup_if.as_deref().filter(|p| p.exists()) {
        return Err(io::Error::other(format!(
            "forced by {} (--fail-setup-if)",
            path.display()
        )));
    }
    let mut connection = TcpStream::connect(&own.backend)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("backend {}: {e}", own.backend)))?;
    let greeting = exchange(&mut connection, "hello").await?;
    let name = greeting
        .strip_prefix("welcome ")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("backend {} greeted with {greeting:?}", own.backend),
            )
        })?
        .to_owned();
    log::info!("connected to backend {name} at {}", own.backend);
    Ok(web::Data::new(Backend {
        addr: own.backend,
        name,
    }))
}

/// Appends this process's pid to `path`, one line per call.
fn trace_setup(path: &Path) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{}", std::process::id())
}

/// The routes, with the backend the setup connected to.
fn routes(backend: web::Data<Backend>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(backend)
            // Built per worker thread: each worker has its own connections.
            .app_data(web::Data::new(Pool::default()))
            .route("/", web::get().to(greet))
            .route("/pid", web::get().to(pid));
    }
}

async fn greet(backend: web::Data<Backend>, pool: web::Data<Pool>) -> HttpResponse {
    match pool.ping(&backend.addr).await {
        Ok(answer) => HttpResponse::Ok().body(format!(
            "hello from pid {}, generation {}, backend {}: {answer}\n",
            std::process::id(),
            actix_endless::generation(),
            backend.name
        )),
        Err(e) => HttpResponse::BadGateway().body(format!("backend {}: {e}\n", backend.addr)),
    }
}

async fn pid() -> HttpResponse {
    HttpResponse::Ok().body(std::process::id().to_string())
}

/// One worker's idle connections to the backend. A request takes one (or opens one), uses it
/// and puts it back, so no borrow is held across an `.await`.
#[derive(Default)]
struct Pool {
    idle: RefCell<Vec<TcpStream>>,
}

impl Pool {
    async fn ping(&self, addr: &str) -> io::Result<String> {
        let taken = self.idle.borrow_mut().pop();
        let mut connection = match taken {
            Some(connection) => connection,
            None => TcpStream::connect(addr).await?,
        };
        let answer = exchange(&mut connection, "ping").await?;
        self.idle.borrow_mut().push(connection);
        Ok(answer)
    }
}

/// Sends `line` and reads one line back.
async fn exchange(connection: &mut TcpStream, line: &str) -> io::Result<String> {
    let message = format!("{line}\n");
    let mut sent = 0;
    while sent < message.len() {
        connection.writable().await?;
        match connection.try_write(&message.as_bytes()[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.ends_with(b"\n") {
        connection.readable().await?;
        match connection.try_read(&mut buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection",
                ))
            }
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if answer.len() > 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the backend's answer is too long",
            ));
        }
    }
    Ok(String::from_utf8_lossy(&answer).trim_end().to_owned())
}
