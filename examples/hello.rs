//! The demo server: greets with its pid and generation; `kill -HUP` swaps in a new build.
//!
//! ```text
//! cargo run --example hello -- --bind 127.0.0.1:8080 --pid-file /tmp/hello.pid
//! curl localhost:8080/            # hello from pid 1234, generation 1, release v1
//! kill -HUP $(cat /tmp/hello.pid) # new process, same socket, no refused connection
//! ```

mod common;
#[path = "common/hello_app.rs"]
mod hello_app;
#[path = "common/streams.rs"]
mod streams;

fn main() {
    hello_app::main("v1")
}
