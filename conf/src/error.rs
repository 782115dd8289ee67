//! What can go wrong loading the configuration.

use std::path::PathBuf;

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or the drop-in directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid TOML, has an unknown key, or holds a bad value.
    #[error("{}", describe(path, *line, *column, key, message))]
    Invalid {
        /// The file that holds the problem.
        path: PathBuf,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// Dotted key path, empty when the problem is not in one key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The built-in defaults could not be represented (a bug in crisp).
    #[error("internal error building default configuration: {message}")]
    Internal {
        /// What the serializer said.
        message: String,
    },
}

fn describe(
    path: &std::path::Path,
    line: usize,
    column: usize,
    key: &str,
    message: &str,
) -> String {
    let mut out = path.display().to_string();
    if line > 0 {
        out.push_str(&format!(":{line}"));
        if column > 0 {
            out.push_str(&format!(":{column}"));
        }
    }
    if !key.is_empty() {
        out.push_str(&format!(": key `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}
