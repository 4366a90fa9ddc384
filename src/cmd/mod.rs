//! One module per subcommand: parse → configure → call a crate.

pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod demo;
pub(crate) mod server;
pub(crate) mod signals;
pub(crate) mod submit;
pub(crate) mod tui;
pub(crate) mod up;
pub(crate) mod worker;
