//! `crispd`: the crisp daemon and its operator commands.

use std::process::ExitCode;

use clap::Parser;

use server::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None => server::daemon::run(&cli),
        Some(Command::Config) => server::commands::print_config(&cli),
        Some(Command::Check) => server::check::run(&cli),
        Some(Command::Image(command)) => server::commands::image(&cli, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crispd: {e}");
            ExitCode::FAILURE
        }
    }
}
