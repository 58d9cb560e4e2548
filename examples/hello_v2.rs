//! The `hello` demo built as another release ("v2"), for hot-swap tests and demos.

mod common;
#[path = "common/hello_app.rs"]
mod hello_app;
#[path = "common/streams.rs"]
mod streams;

fn main() {
    hello_app::main("v2")
}
