//! Reading the main file and its drop-ins, merging them over the defaults, and naming the
//! file, line and key of anything wrong.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::locate::{Located, key_at, locate_key};
use crate::schema::Config;
use crate::validate::validate;

/// The main configuration file when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crisp/crisp.toml";

/// Where the configuration came from, for `crispd config` and for reloads.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration: defaults, then the main file, then drop-ins by name.
    pub config: Config,
    /// The files applied, in order.
    pub sources: Vec<PathBuf>,
}

/// Which files to read.
#[derive(Debug, Clone)]
pub struct Source {
    /// The main file.
    pub main: PathBuf,
    /// Whether a missing main file is an error (it is when the operator named it).
    pub main_required: bool,
    /// Directory of `*.toml` drop-ins applied after the main file in name order.
    pub dropin_dir: PathBuf,
}

impl Source {
    /// The main file and its sibling `crisp.d` directory.
    pub fn new(main: impl Into<PathBuf>, main_required: bool) -> Self {
        let main = main.into();
        let dropin_dir = main
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("crisp.d");
        Self {
            main,
            main_required,
            dropin_dir,
        }
    }
}

/// Loads and validates the configuration.
pub fn load(source: &Source) -> Result<Loaded, ConfigError> {
    let mut files = Vec::new();
    match std::fs::read_to_string(&source.main) {
        Ok(text) => files.push((source.main.clone(), text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.main_required => {}
        Err(e) => {
            return Err(ConfigError::Read {
                path: source.main.clone(),
                source: e,
            });
        }
    }
    for path in dropins(&source.dropin_dir)? {
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            source: e,
        })?;
        files.push((path, text));
    }
    load_texts(&files)
}

/// Merges already-read files (path, contents) in order over the defaults.
pub fn load_texts(files: &[(PathBuf, String)]) -> Result<Loaded, ConfigError> {
    let mut merged =
        toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Internal {
            message: e.to_string(),
        })?;
    for (path, text) in files {
        // Each file on its own must fit the schema, so errors point into that file.
        let table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(path, text, &e, false))?;
        toml::from_str::<Config>(text).map_err(|e| parse_error(path, text, &e, true))?;
        merge(&mut merged, table);
    }
    let config: Config = merged.try_into().map_err(|e: toml::de::Error| {
        // Only reachable if two individually valid files combine into something
        // the schema rejects; name the last file.
        let path = files.last().map(|(p, _)| p.clone()).unwrap_or_default();
        ConfigError::Invalid {
            path,
            line: 0,
            column: 0,
            key: String::new(),
            message: e.message().to_owned(),
        }
    })?;
    if let Err(problem) = validate(&config) {
        let place = files
            .iter()
            .rev()
            .find_map(|(path, text)| locate_key(text, &problem.key).map(|at| (path.clone(), at)));
        let (path, Located { line, column }) = place.unwrap_or_default();
        return Err(ConfigError::Invalid {
            path,
            line,
            column,
            key: display_key(&problem.key),
            message: problem.message,
        });
    }
    Ok(Loaded {
        config,
        sources: files.iter().map(|(p, _)| p.clone()).collect(),
    })
}

/// `a.b."c.d"`: segments joined by dots, quoted where they hold dots themselves.
pub(crate) fn display_key(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| {
            if s.contains('.') || s.is_empty() {
                format!("\"{s}\"")
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn dropins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError::Read {
                path: dir.to_owned(),
                source: e,
            });
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConfigError::Read {
            path: dir.to_owned(),
            source: e,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Tables merge key by key; any other value (arrays included) replaces the earlier one.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The error `error` found in `text`, at its line and column and, where `text` is valid
/// TOML (the error is the schema's), naming the key there. The key is not looked for in
/// text that is not TOML: toml_edit 0.23 panics on some such documents (`==AA\n[.`, found
/// by the `config_toml` fuzz target).
fn parse_error(path: &Path, text: &str, error: &toml::de::Error, is_toml: bool) -> ConfigError {
    let (line, column, key) = match error.span() {
        Some(span) => {
            let at = Located::of_offset(text, span.start);
            let key = if is_toml {
                key_at(text, span.start).unwrap_or_default()
            } else {
                String::new()
            };
            (at.line, at.column, key)
        }
        None => (0, 0, String::new()),
    };
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column,
        key,
        message: error.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
        list.iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn no_files_means_defaults() {
        let loaded = load_texts(&[]).expect("defaults are valid");
        assert_eq!(loaded.config, Config::default());
        assert!(loaded.sources.is_empty());
    }

    #[test]
    fn drop_ins_merge_tables_and_replace_arrays() {
        let loaded = load_texts(&files(&[
            ("/etc/crisp/crisp.toml", "[cni]\nplugin_dirs = [\"/a\", \"/b\"]\n[runtimes.runc]\nruntime_args = [\"--debug\"]\n"),
            ("/etc/crisp/crisp.d/10.toml", "[cni]\nplugin_dirs = [\"/c\"]\n[runtimes.runsc]\npath = \"/usr/bin/runsc\"\n"),
        ]))
        .expect("valid");
        let c = loaded.config;
        assert_eq!(c.cni.plugin_dirs, [PathBuf::from("/c")]);
        assert_eq!(
            c.cni.conf_dir,
            PathBuf::from("/etc/cni/net.d"),
            "untouched keys keep defaults"
        );
        assert_eq!(
            c.runtimes["runc"].path,
            PathBuf::from("runc"),
            "default kept under partial table"
        );
        assert_eq!(c.runtimes["runc"].runtime_args, ["--debug"]);
        assert_eq!(c.runtimes["runsc"].path, PathBuf::from("/usr/bin/runsc"));
    }

    #[test]
    fn type_errors_name_line_and_key() {
        let err = load_texts(&files(&[(
            "/f.toml",
            "root = \"/r\"\n[image]\nmax_concurrent_downloads = \"many\"\n",
        )]))
        .expect_err("string for integer");
        match err {
            ConfigError::Invalid {
                path, line, key, ..
            } => {
                assert_eq!(path, PathBuf::from("/f.toml"));
                assert_eq!(line, 3);
                assert_eq!(key, "image.max_concurrent_downloads");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_durations_and_syntax_are_located() {
        let err = load_texts(&files(&[("/f.toml", "[image]\npull_timeout = \"soon\"\n")]))
            .expect_err("bad");
        let text = err.to_string();
        assert!(text.starts_with("/f.toml:2"), "{text}");
        assert!(
            text.contains("image.pull_timeout") && text.contains("soon"),
            "{text}"
        );

        let err = load_texts(&files(&[("/f.toml", "a = = 1\n")])).expect_err("syntax");
        assert!(err.to_string().starts_with("/f.toml:1"), "{err}");
    }

    #[test]
    fn syntax_that_trips_toml_edit_is_an_error_not_a_panic() {
        let err = load_texts(&files(&[("/f.toml", "==AA\n[.")])).expect_err("syntax");
        assert!(err.to_string().starts_with("/f.toml:1"), "{err}");
    }

    #[test]
    fn validation_points_at_the_file_that_set_the_key() {
        let err = load_texts(&files(&[
            ("/main.toml", "state = \"/run/crisp\"\n"),
            ("/d/10.toml", "\n\nstate = \"run/crisp\"\n"),
        ]))
        .expect_err("relative path");
        let text = err.to_string();
        assert!(text.starts_with("/d/10.toml:3"), "{text}");
        assert!(
            text.contains("key `state`") && text.contains("absolute"),
            "{text}"
        );
    }

    #[test]
    fn mirror_hosts_with_dots_are_quoted_and_located() {
        let err = load_texts(&files(&[(
            "/f.toml",
            "[registry.mirrors.\"docker.io\"]\nendpoints = [\"127.0.0.1:5000\"]\n",
        )]))
        .expect_err("no scheme");
        let text = err.to_string();
        assert!(text.starts_with("/f.toml:2"), "{text}");
        assert!(
            text.contains("registry.mirrors.\"docker.io\".endpoints"),
            "{text}"
        );
    }

    #[test]
    fn microvm_handlers_need_a_kernel() {
        let err = load_texts(&files(&[(
            "/f.toml",
            "[runtimes.vm]\ntype = \"microvm\"\npath = \"qemu-system-x86_64\"\naccelerator = \"tcg\"\n",
        )]))
        .expect_err("no kernel");
        assert!(err.to_string().contains("runtimes.vm.kernel"), "{err}");
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let config = Config::default();
        let text = config.to_toml().expect("serialises");
        let again = load_texts(&files(&[("/f.toml", &text)])).expect("reloads");
        assert_eq!(again.config, config);
    }

    #[test]
    fn the_shipped_example_is_valid_and_matches_the_defaults() {
        let text = include_str!("../crisp.toml");
        let loaded = load_texts(&files(&[("conf/crisp.toml", text)])).expect("example is valid");
        assert_eq!(loaded.config, Config::default());
    }
}
