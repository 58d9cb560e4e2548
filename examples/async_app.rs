//! An application with async setup, as real actix-web apps have: `#[actix_web::main]`, a
//! connection to a backend made before serving, and `.run().await`.
//!
//! The backend is any TCP service that speaks a one-line protocol: it answers `hello` with
//! `welcome NAME` and `ping` with `pong`. Each generation connects to it at start-up (its setup)
//! and fails the upgrade, with the reason in the old generation's log, when it cannot; the
//! routes talk to it over a small per-worker pool of connections.
//!
//! ```text
//! cargo run --example async_app -- --backend 127.0.0.1:7000 --pid-file /tmp/app.pid
//! curl localhost:8080/            # hello from pid 1234, generation 1, backend NAME: pong
//! kill -HUP $(cat /tmp/app.pid)   # the new generation connects again before it serves
//! ```
//!
//! With `--master`, the setup runs inside the runtime ([`actix_endless::Endless::with_setup`])
//! so that the master, which never serves, never connects.
#[path = "common/async_app.rs"]
mod app;
mod common;

#[actix_web::main]
async fn main() {
    common::init_logging();
    let (options, own) = common::Options::parse_with::<app::Own>(
        "An actix-endless application with async setup: connects to --backend before serving \
(again in every generation) and answers GET / through it.",
    );
    common::exit_on_error(app::serve(options, own).await);
}
