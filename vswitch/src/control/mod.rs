//! The control plane: configuration, the API, the controller, persistence and metrics.

pub mod api;
pub mod config;
pub mod hostnet;
pub mod server;
pub mod store;
pub mod switch;

pub use config::Config;
pub use switch::{ControlError, Switch};
