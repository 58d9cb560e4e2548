//! Zero-downtime restarts for actix-web servers, the way Go's `endless`, `grace` and
//! `tableflip` do it for net/http and nginx does it for its own binary.
//!
//! Replace the binary on disk, send `SIGHUP`, and the running process starts the new binary,
//! hands it the listening sockets, waits until it serves, then stops accepting and drains: no
//! connection is refused and no request fails.
//!
//! # Quick start
//!
//! The same chain as `HttpServer`, inside `#[actix_web::main]`:
//!
//! ```no_run
//! use actix_web::{web, App, HttpResponse};
//! use std::time::Duration;
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     actix_endless::Endless::new(|| {
//!         App::new().route("/", web::get().to(|| async { HttpResponse::Ok().body("hi\n") }))
//!     })
//!     .pid_file("app.pid")
//!     .hammer_time(Duration::from_secs(30))
//!     .workers(4)
//!     .bind(("127.0.0.1", 8080))?
//!     .run()
//!     .await
//! }
//! ```
//!
//! [`Endless::run`] runs on the caller's runtime (an actix `System`, or `#[tokio::main]` as
//! actix-web allows); a synchronous `main` calls [`Endless::run_blocking`] instead.
//!
//! Deploy: replace the binary, then `kill -HUP $(cat app.pid)`.
//!
//! # Signals
//!
//! | signal | action |
//! |---|---|
//! | `SIGHUP` | upgrade: start the executable again with the sockets; once it reports ready, stop accepting and drain |
//! | `SIGINT`, `SIGTERM`, `SIGQUIT` | graceful stop: stop accepting, finish in-flight requests, bounded by hammer time; a second one forces the close |
//! | `SIGUSR2` | hammer time: close every connection now |
//! | `SIGUSR1`, `SIGTSTP` | user hooks only (`SIGTSTP` does not stop the process) |
//!
//! Every signal runs the [`HookStage::Pre`] hooks before the runtime acts and the
//! [`HookStage::Post`] hooks after; see [`Endless::hook`]. A [`Handle`] does the same from code.
//!
//! # How an upgrade works
//!
//! 1. The old process spawns the executable resolved at start-up (same argv, environment and
//!    working directory, as the shell named it in `$PWD`, so a switched `current` link is
//!    followed) with `std::process::Command`, in a process group of its own. The listening
//!    sockets become fds 3.. as in systemd's socket passing (`LISTEN_FDS`, `LISTEN_PID`,
//!    `LISTEN_FDNAMES`), followed by the write end of a readiness pipe
//!    (`ACTIX_ENDLESS_READY_FD`).
//! 2. The new process adopts the sockets (validating each) instead of binding, runs its
//!    readiness gate ([`Endless::ready_when`]) if any, starts its workers, writes the pid file,
//!    then writes one byte on the pipe.
//! 3. The old process stops accepting; every response it still sends carries
//!    `Connection: close`; once its connections are gone (or only idle ones are left, or hammer
//!    time passes) it exits. If the new process dies while it is still the newest serving
//!    generation and the old one drains, the old one resumes accepting. A new process that
//!    has itself handed over to a newer one, or was asked to stop, says so on the pipe first,
//!    so the old one never comes back after an upgrade or a stop.
//! 4. If the new process cannot start, exits, fails its readiness gate or stays silent past
//!    the upgrade timeout, it gets `SIGTERM` and a second to end, then its whole process group
//!    is killed and it is reaped; the old process rewrites the pid file and serves on. A later
//!    `SIGHUP` can try again.
//!
//! The same code adopts sockets passed by systemd socket activation at first start.
//!
//! # Setup runs again in every generation
//!
//! The new process runs `main` from the start: whatever `main` does before
//! [`Endless::run`] (reading configuration, connecting to a database) runs again in it, before
//! it reports ready. If that setup fails (an error, a panic, an exit) before the new
//! generation reports ready, the upgrade fails and the old generation serves on. Its log says
//! why: the exit status, or the error itself when `main` passes it through [`setup_failed`]
//! (`.map_err(actix_endless::setup_failed)?`). [`Endless::with_setup`] runs async setup
//! inside the runtime instead, which reports its errors the same way, and never runs it in a
//! stable-pid master ([`ProcessMode::Master`]), which does not serve. A check that must pass
//! after setup, just before serving, is a readiness gate: [`Endless::ready_when`].
//!
//! # Limitations
//!
//! - Linux only: it uses `close_range`, `SO_ACCEPTCONN`, `PR_SET_CHILD_SUBREAPER` and, to end
//!   a drain exactly when nothing is left, `/proc/self/fd` and `/proc/self/fdinfo` (without
//!   `/proc` a drain waits 50 ms after pausing instead). It is tested only there.
//! - One runtime per process: signals are process-wide. [`Endless::run`] fails with
//!   [`Error::AlreadyRunning`] if another runs.
//! - In [`ProcessMode::Master`], the master runs `main` too, up to [`Endless::run`], where it
//!   becomes the master instead of serving: setup written in `main` before that runs in the
//!   master as well. Put setup that must not run there (pools, migrations) in
//!   [`Endless::with_setup`].
//! - The pid changes on every upgrade. Supervisors that track a pid (supervisord, runit, a
//!   container whose PID 1 is the server) need the process to be started so that it tolerates
//!   that (systemd: `Type=notify` with `NotifyAccess=all`, or a wrapper).
//! - Standard signals do not queue: two identical signals sent back to back may be handled
//!   once. Upgrades are serialised anyway; a `SIGHUP` during an upgrade or a drain is ignored.
//! - An idle keep-alive connection is closed during a drain once no request has been in
//!   flight for [`Endless::idle_close_after`], by default the keep-alive timeout: no sooner
//!   than normal operation would, so a proxy that closes its idle upstream connections sooner
//!   never sends on one being closed, and an old generation with idle clients lingers that
//!   long. A client that keeps idle connections longer than the server can send on one at the
//!   moment it closes, as with any HTTP/1.1 server; clients retry idempotent requests then
//!   (RFC 9112 §9.3.1). Load generators such as wrk keep their connections busy and get
//!   `Connection: close` instead.
//! - `HttpServer::on_connect`, `bind`/`listen` and its signal handling belong to the runtime;
//!   use [`Endless::on_connect`] and [`Endless::bind`] (a `bind` or `listen` inside
//!   [`Endless::configure`] is a start-up error; see there for what cannot be detected).
//! - Hooks run on the control thread; a slow hook delays the handling of later signals.
//! - In [`ProcessMode::Master`], a worker stopped directly (`SIGTERM` to the worker, not the
//!   master) is restarted by the master like any worker that ended on its own; stop the
//!   service through the master.
//! - In [`ProcessMode::Reexec`], a new generation that dies right after it reported ready is
//!   replaced by the old one only while the old one is still draining (usually a few
//!   milliseconds after the hand-over, up to the longest request in flight); once the old
//!   one has exited nobody serves, and a supervisor has to restart the service.
//!   [`ProcessMode::Master`] restarts a worker that dies at any time.
//! - A worker of a master gets `SIGTERM` when the master dies (`PR_SET_PDEATHSIG`), drains
//!   and exits, so a restarted service can bind again; a worker only forwards an upgrade
//!   request to its master while the master is still its parent.
//! - The control socket's `status` counts the upgrades asked of the process that answers:
//!   in re-exec mode each generation starts again from zero. The commit window
//!   ([`Endless::commit_after`]) applies to re-exec mode; a master replaces a worker that dies
//!   at any time. [`Handle::upgrade_and_wait`] resolves when the new generation reports ready,
//!   before a commit window ends.
//! - Long-lived responses (WebSockets, server-sent events) end at a drain only if their
//!   handlers await [`Draining`]; otherwise they keep the old generation until hammer time.
//! - HTTP/2 (TLS with ALPN `h2`, or h2c) gets a GOAWAY from the runtime when a drain begins,
//!   since actix-http 3.20 sends none; clients that ignore it keep their connection busy
//!   until hammer time. TLS and h2c listeners are served by the runtime's own actix server,
//!   not `HttpServer` (which cannot wrap a connection's stream): [`Endless::configure`] tunes
//!   only the `bind` and `bind_uds` listeners, and a process with both kinds runs a set of
//!   worker threads for each. Settings made on the builder apply to both.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod child;
mod config;
mod control;
pub mod ctl;
mod decide;
mod drain;
mod draining;
mod error;
mod event;
#[cfg(any(feature = "rustls", feature = "http2"))]
mod goaway;
mod hooks;
mod listeners;
mod master;
mod notify;
#[cfg(any(feature = "rustls", feature = "http2"))]
mod own_server;
mod pidfile;
mod reexec;
mod report;
mod runtime;
mod server;
mod signals;
mod sys;

pub use builder::{Endless, Handle, SetupFactory};
pub use config::{HammerTime, ProcessMode};
pub use drain::AppFactory;
pub use draining::{draining, Draining};
pub use error::{Error, Result};
pub use hooks::{
    DrainEnd, DrainReason, DrainStart, HookStage, ServingEvent, SignalEvent, UpgradeEvent,
};
pub use runtime::{generation, setup_failed};
pub use signals::Signal;

/// Types that appear in public signatures but are rarely named by users, like actix-web's
/// `dev` module: the server type [`Endless::configure`] hands over and what it is made of.
pub mod dev {
    pub use crate::drain::{Counted, CountedBody, DrainApp, DrainService, Server};
}
