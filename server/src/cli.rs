//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// crisp: a Kubernetes container runtime (CRI v1).
#[derive(Debug, Parser)]
#[command(name = "crispd", version, about)]
pub struct Cli {
    /// Main configuration file; drop-ins are read from `crisp.d/` beside it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level, overriding the configuration (error, warn, info, debug, trace).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<conf::LogLevel>,
    /// What to do; without a command, run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective configuration (defaults, file and drop-ins) as TOML.
    Config,
    /// Check host prerequisites; exits non-zero when crisp cannot run here.
    Check,
    /// Move images in and out as OCI image-layout archives (crispd must be stopped).
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `crispd image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load every image of an OCI layout archive (tar) into the image store.
    Import {
        /// The archive.
        file: PathBuf,
        /// Name for the image when the archive names none (single-image archives).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write an image (by name or ID) as an OCI layout archive.
    Export {
        /// The image.
        image: String,
        /// The archive to write.
        file: PathBuf,
    },
}

impl Cli {
    /// Where the configuration comes from. A file named on the command line must exist;
    /// the default one may be absent (built-in defaults then apply).
    pub fn config_source(&self) -> conf::Source {
        match &self.config {
            Some(path) => conf::Source::new(path, true),
            None => conf::Source::new(conf::DEFAULT_CONFIG_PATH, false),
        }
    }

    /// Loads the configuration, applying command-line overrides.
    pub fn load_config(&self) -> Result<conf::Loaded, conf::ConfigError> {
        let mut loaded = conf::load(&self.config_source())?;
        if let Some(level) = self.log_level {
            loaded.config.log_level = level;
        }
        Ok(loaded)
    }
}
