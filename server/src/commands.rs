//! Small operator commands.

use std::process::ExitCode;

use crate::cli::{Cli, ImageCommand};

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

/// `crispd image import|export`: works on the store directly, so it takes the state
/// lock first and refuses while a daemon runs.
pub fn image(cli: &Cli, command: &ImageCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = cli.load_config()?.config;
    let _lock = crate::daemon::lock_state_dir(&config.state)?;
    let store = storage::Store::open(&config.root)?;
    match command {
        ImageCommand::Import { file, name } => {
            let archive =
                std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let images =
                image::import_layout(&store, std::io::BufReader::new(archive), name.as_deref())?;
            for record in images {
                println!("imported {} {}", record.id, record.names.join(" "));
            }
        }
        ImageCommand::Export { image: spec, file } => {
            let record = image::find_image(&store, spec)?
                .ok_or_else(|| format!("no image {spec} in the store"))?;
            let name = record
                .names
                .iter()
                .find(|n| !n.contains('@'))
                .or_else(|| record.names.first())
                .cloned()
                .unwrap_or_else(|| spec.clone());
            let tmp = file.with_extension("partial");
            let out = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            let mut out = std::io::BufWriter::new(out);
            image::export_layout(&store, &[(record.clone(), name)], &mut out)?;
            let out = out.into_inner().map_err(|e| e.to_string())?;
            out.sync_all()?;
            std::fs::rename(&tmp, file)?;
            println!("exported {} to {}", record.id, file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
