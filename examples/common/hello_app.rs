//! The `hello` application, shared by the `hello` and `hello_v2` examples.

use std::time::Duration;

use actix_web::{web, App, HttpResponse};

use crate::common::{self, Options};

/// What `--help` says about `hello` and `hello_v2`.
const ABOUT: &str = "The actix-endless demo server: answers GET / with its pid, generation and \
release; `kill -HUP` swaps in a new build with no refused connection.";

/// Runs the demo, answering as `release`.
pub fn main(release: &'static str) {
    common::control_client();
    common::init_logging();
    let options = Options::parse(ABOUT);
    let endless = actix_endless::Endless::new(move || App::new().configure(routes(release)));
    if options.admin_routes {
        let _ = HANDLE.set(endless.handle());
    }
    match common::bind_all(endless, &options) {
        Ok(endless) => common::exit_on_error(common::configure(endless, &options).run_blocking()),
        Err(e) => common::exit_on_error(Err(e)),
    }
}

/// The demo's routes, answering as `release`.
pub fn routes(release: &'static str) -> impl Fn(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(release))
            .route("/", web::get().to(greet))
            .route("/pid", web::get().to(pid))
            .route("/sleep/{ms}", web::get().to(sleep))
            .route("/ws", web::get().to(crate::streams::ws))
            .route("/events", web::get().to(crate::streams::events))
            .route("/admin/upgrade", web::post().to(admin_upgrade));
    }
}

/// The runtime's handle, for `POST /admin/upgrade` (set with `--admin-routes` only).
static HANDLE: std::sync::OnceLock<actix_endless::Handle> = std::sync::OnceLock::new();

/// `POST /admin/upgrade` (with `--admin-routes`): upgrades and answers once the new generation
/// serves, or with the reason it failed. An example of [`actix_endless::Handle`]; a real
/// service would put it behind authentication, or use the control socket.
async fn admin_upgrade() -> HttpResponse {
    let Some(handle) = HANDLE.get() else {
        return HttpResponse::NotFound().finish();
    };
    match handle.upgrade_and_wait().await {
        Ok(done) => HttpResponse::Ok().body(format!(
            "upgraded: generation {} serves as pid {}\n",
            done.generation, done.pid
        )),
        Err(e) => HttpResponse::Conflict().body(format!("upgrade failed: {e}\n")),
    }
}

async fn greet(release: web::Data<&'static str>) -> HttpResponse {
    HttpResponse::Ok().body(format!(
        "hello from pid {}, generation {}, release {}\n",
        std::process::id(),
        actix_endless::generation(),
        release.get_ref()
    ))
}

async fn pid() -> HttpResponse {
    HttpResponse::Ok().body(std::process::id().to_string())
}

async fn sleep(ms: web::Path<u64>) -> HttpResponse {
    let ms = ms.into_inner();
    actix_rt::time::sleep(Duration::from_millis(ms)).await;
    HttpResponse::Ok().body(format!("slept {ms} ms in pid {}\n", std::process::id()))
}
