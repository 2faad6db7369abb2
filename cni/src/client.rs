//! vswitchd's API client, as the plugin uses it: the shared client from `vswitch-api`.

pub use vswitch_api::client::{Client as Vswitch, ClientError};
