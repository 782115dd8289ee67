//! Small operator commands.

use std::process::ExitCode;

use crate::cli::Cli;

/// `crispd config`: the effective configuration as TOML, credentials redacted.
pub fn print_config(cli: &Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let loaded = cli.load_config()?;
    let sources: Vec<String> = loaded
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if sources.is_empty() {
        println!("# effective configuration: built-in defaults (no file found)");
    } else {
        println!(
            "# effective configuration: defaults, then {}",
            sources.join(", ")
        );
    }
    print!("{}", loaded.config.to_toml()?);
    Ok(ExitCode::SUCCESS)
}
