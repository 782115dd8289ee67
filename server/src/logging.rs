//! crisp's own logs: `tracing` to stderr, text or JSON, with a level that SIGHUP can change.

use std::io::IsTerminal;

use conf::{LogFormat, LogLevel};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Changes the log level of the running daemon.
pub struct LevelHandle(reload::Handle<EnvFilter, Registry>);

impl LevelHandle {
    /// Applies `level` from now on.
    pub fn set(&self, level: LogLevel) -> Result<(), String> {
        self.0
            .modify(|filter| *filter = filter_for(level))
            .map_err(|e| e.to_string())
    }
}

fn filter_for(level: LogLevel) -> EnvFilter {
    // Dependencies (h2, hyper, tower) are chatty at debug; keep them at warn.
    EnvFilter::new(format!(
        "warn,server={0},crispd={0},conf={0},storage={0},network={0},image={0},runtime_handlers={0}",
        level.as_str()
    ))
}

/// Installs the global subscriber; call once, before anything logs.
pub fn init(level: LogLevel, format: LogFormat) -> Result<LevelHandle, String> {
    let (filter, handle) = reload::Layer::new(filter_for(level));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(LevelHandle(handle))
}
