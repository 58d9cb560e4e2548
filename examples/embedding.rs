//! The README's "Embedding" snippet, compiled: an actix-web application's `main` with its
//! async setup, moved from `HttpServer` to actix-endless. `make test` checks that the README
//! shows this `main` verbatim (`integration/tests/async_app.rs`).
//!
//! ```text
//! DATABASE_URL=app cargo run --example embedding   # serves on 0.0.0.0:8080
//! ```

use actix_web::{web, App, HttpResponse};

/// The application's shared state, made asynchronously at start-up (a pool, in a real app).
struct AppState {
    url: String,
}

impl AppState {
    async fn connect(url: &str) -> std::io::Result<AppState> {
        actix_rt::task::yield_now().await;
        Ok(AppState {
            url: url.to_owned(),
        })
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/",
        web::get().to(|state: web::Data<AppState>| async move {
            HttpResponse::Ok().body(format!("connected to {}\n", state.url))
        }),
    );
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    let state = web::Data::new(AppState::connect(&url).await?);
    actix_endless::Endless::new(move || App::new().app_data(state.clone()).configure(routes))
        .workers(4)
        .pid_file("/run/app/app.pid")
        .bind(("0.0.0.0", 8080))?
        .run()
        .await
}
