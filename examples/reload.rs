//! Configuration hot reload: `kill -USR1` re-reads the config file into shared state (no
//! re-exec); `kill -HUP` re-execs, and so reloads everything.
//!
//! ```text
//! echo hello > /tmp/greeting
//! cargo run --example reload -- --config /tmp/greeting --pid-file /tmp/reload.pid
//! echo bonjour > /tmp/greeting && kill -USR1 $(cat /tmp/reload.pid)
//! ```

mod common;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use actix_endless::{HookStage, Signal};
use actix_web::{web, App, HttpResponse};

fn read_greeting(path: &PathBuf) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// The flags of this example besides the common ones.
#[derive(Debug, clap::Args)]
struct Own {
    /// File holding the greeting; re-read on SIGUSR1.
    #[arg(long, value_name = "PATH", env = "ENDLESS_CONFIG")]
    config: PathBuf,
}

fn main() {
    common::init_logging();
    let (options, Own { config }) = Options::parse_with::<Own>(
        "Configuration hot reload: answers GET / with the greeting of --config; `kill -USR1` \
re-reads the file, `kill -HUP` re-execs.",
    );
    let greeting = match read_greeting(&config) {
        Ok(text) => Arc::new(RwLock::new(text)),
        Err(e) => {
            log::error!("cannot read {}: {e}", config.display());
            return common::exit_on_error(Err(e));
        }
    };
    let shared = web::Data::from(greeting.clone());
    let endless = actix_endless::Endless::new(move || {
        App::new()
            .app_data(shared.clone())
            .route("/", web::get().to(greet))
    })
    .hook(Signal::Usr1, HookStage::Pre, move |_| {
        match read_greeting(&config) {
            Ok(text) => {
                log::info!("reloaded {}: {text:?}", config.display());
                *greeting.write().unwrap_or_else(|e| e.into_inner()) = text;
            }
            Err(e) => log::error!(
                "cannot reload {}: {e}; keeping the old greeting",
                config.display()
            ),
        }
    });
    match common::bind_all(endless, &options) {
        Ok(endless) => common::exit_on_error(common::configure(endless, &options).run_blocking()),
        Err(e) => common::exit_on_error(Err(e)),
    }
}

use common::Options;

async fn greet(greeting: web::Data<RwLock<String>>) -> HttpResponse {
    let text = greeting.read().unwrap_or_else(|e| e.into_inner()).clone();
    HttpResponse::Ok().body(format!("{text}\n"))
}
