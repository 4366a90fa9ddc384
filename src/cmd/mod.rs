//! One module per subcommand: parse → configure → call a crate.

pub(crate) mod demo;
