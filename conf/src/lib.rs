//! crisp's configuration: the TOML schema, built-in defaults, drop-in merging and validation.
//!
//! Owns: turning `/etc/crisp/crisp.toml` plus `/etc/crisp/crisp.d/*.toml` (applied in name
//! order; tables merge key by key, other values replace) into one validated [`Config`].
//! crisp runs with no file at all: every key has a default.
//!
//! Does not own: applying the configuration. `server` builds each domain crate's own
//! options from a [`Config`] in one place.
//!
//! Invariants: a [`Config`] returned by [`load`] has absolute paths, a default handler that
//! exists, and sane limits. Unknown keys and bad values are errors naming file, line and key.
//!
//! Trusts: nothing it reads; every file is validated before use.

mod error;
mod load;
mod locate;
mod schema;
mod validate;

pub use error::ConfigError;
pub use load::{DEFAULT_CONFIG_PATH, Loaded, Source, load, load_texts};
pub use schema::{
    Accelerator, AuthConfig, CgroupDriver, CniConfig, Config, DEFAULT_RUNTIME, GUEST_IMAGE_COMMAND,
    GUEST_IMAGE_DIR, HandlerType, ImageConfig, LogFormat, LogLevel, MetricsConfig, MirrorConfig,
    NriConfig, RegistryConfig, RuntimeHandlerConfig, StreamingConfig,
};

impl Config {
    /// The effective configuration as TOML, credentials redacted (`crispd config`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(&self.redacted()).map_err(|e| ConfigError::Internal {
            message: e.to_string(),
        })
    }
}
