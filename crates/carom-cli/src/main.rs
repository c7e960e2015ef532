//! `carom`: drive the Carom daemon from the command line.
//!
//! [`args`] is what it accepts, [`commands`] what each command asks the daemon, [`render`]
//! what it prints for people (pure, and tested), [`terminal`] printing and passphrase input.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool"
)]

mod args;
mod commands;
mod render;
mod terminal;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("carom: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("carom: {message}");
            ExitCode::FAILURE
        }
    }
}
