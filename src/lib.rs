//! Zero-downtime restarts for actix-web.
//!
//! (crate docs are written below, in the README pass)

#![warn(missing_docs)]

mod builder;
mod child;
pub mod drain;
mod error;
mod hooks;
pub mod listeners;
mod pidfile;
mod runtime;
mod signals;
mod sys;

pub use builder::{Endless, HammerTime, Handle};
pub use error::{Error, Result};
pub use hooks::{HookStage, ServingEvent, SignalEvent, UpgradeEvent};
pub use runtime::generation;
pub use signals::Signal;
