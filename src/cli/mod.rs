//! Subcommands. (Placeholder on the `devices` branch: the CLI branch owns
//! this file and `main.rs`.)

pub mod run;
