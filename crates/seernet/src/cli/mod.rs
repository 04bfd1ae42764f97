//! Subcommands of the `seernet` binary, one module per area.

pub mod complexity;
pub mod net;
pub mod space;
