//! The `async_app` example under `#[tokio::main]` instead of `#[actix_web::main]`: actix-web,
//! and so this runtime, also runs on a plain Tokio runtime, upgrades included.

#[path = "common/async_app.rs"]
mod app;
mod common;

#[tokio::main]
async fn main() {
    common::init_logging();
    let (options, own) = common::Options::parse_with::<app::Own>(
        "An actix-endless application with async setup: connects to --backend before serving \
(again in every generation) and answers GET / through it.",
    );
    common::exit_on_error(app::serve(options, own).await);
}
