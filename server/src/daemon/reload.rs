//! SIGHUP: re-read the configuration and apply what can change while running.
//!
//! Live: log level, registry mirrors, insecure registries and credentials, pinned images.
//! Everything else (paths, socket, handlers, cgroup driver, ...) needs a restart; a
//! changed value there is reported and left as it was.

use conf::{Config, LogLevel};

use crate::logging::LevelHandle;
use crate::state::Daemon;

/// Reloads, logging every change applied and every change ignored.
pub fn reload(
    daemon: &Daemon,
    source: &conf::Source,
    level_override: Option<LogLevel>,
    levels: &LevelHandle,
) {
    let loaded = match conf::load(source) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    let current = daemon.config();
    let (next, changes) = apply_live(&current, loaded.config, level_override);
    if let Some(level) = changes.log_level
        && let Err(e) = levels.set(level)
    {
        tracing::error!(error = %e, "cannot change log level");
    }
    for change in &changes.applied {
        tracing::info!(setting = change.as_str(), "reload: applied");
    }
    for key in &changes.needs_restart {
        tracing::warn!(
            setting = key.as_str(),
            "reload: changed in the file but needs a restart; not applied"
        );
    }
    if changes.applied.is_empty() {
        tracing::info!("reload: no live setting changed");
    }
    daemon.set_config(next);
}

/// What a reload did.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Settings taken over from the file, described.
    pub applied: Vec<String>,
    /// Settings that differ but wait for a restart.
    pub needs_restart: Vec<String>,
    /// The new log level, if it changed.
    pub log_level: Option<LogLevel>,
}

/// The running configuration with the file's live settings taken over.
pub fn apply_live(
    current: &Config,
    file: Config,
    level_override: Option<LogLevel>,
) -> (Config, Changes) {
    let mut next = current.clone();
    let mut changes = Changes::default();
    let level = level_override.unwrap_or(file.log_level);
    if level != current.log_level {
        changes.applied.push(format!(
            "log_level: {} -> {}",
            current.log_level.as_str(),
            level.as_str()
        ));
        changes.log_level = Some(level);
        next.log_level = level;
    }
    if file.registry.mirrors != current.registry.mirrors {
        changes.applied.push(format!(
            "registry.mirrors: now for {:?}",
            file.registry.mirrors.keys().collect::<Vec<_>>()
        ));
    }
    if file.registry.insecure != current.registry.insecure {
        changes.applied.push(format!(
            "registry.insecure: now {:?}",
            file.registry.insecure
        ));
    }
    if file.registry.auths != current.registry.auths {
        changes.applied.push(format!(
            "registry.auths: now for {:?}",
            file.registry.auths.keys().collect::<Vec<_>>()
        ));
    }
    next.registry = file.registry.clone();
    if file.pinned_images != current.pinned_images {
        changes
            .applied
            .push(format!("pinned_images: now {:?}", file.pinned_images));
        next.pinned_images = file.pinned_images.clone();
    }

    // Compare the rest by blanking the live parts on both sides.
    let restart_only = |c: &Config| {
        let mut c = c.clone();
        c.log_level = LogLevel::Info;
        c.registry = Default::default();
        c.pinned_images = Vec::new();
        c
    };
    let (a, b) = (restart_only(current), restart_only(&file));
    if a != b {
        changes.needs_restart = differing_keys(&a, &b);
    }
    (next, changes)
}

fn differing_keys(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(configuration)".to_owned()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_settings_apply_and_others_wait() {
        let current = Config::default();
        let mut file = Config {
            log_level: LogLevel::Debug,
            pinned_images: vec!["registry.k8s.io/pause:3.10".to_owned()],
            root: "/srv/crisp".into(),
            ..Config::default()
        };
        file.registry.insecure = vec!["10.0.0.1:5000".to_owned()];
        let (next, changes) = apply_live(&current, file, None);
        assert_eq!(next.log_level, LogLevel::Debug);
        assert_eq!(next.pinned_images.len(), 1);
        assert_eq!(next.registry.insecure, ["10.0.0.1:5000"]);
        assert_eq!(next.root, current.root, "root needs a restart");
        assert_eq!(changes.needs_restart, ["root"]);
        assert_eq!(changes.applied.len(), 3);
    }

    #[test]
    fn command_line_level_wins_over_the_file() {
        let current = Config::default();
        let file = Config {
            log_level: LogLevel::Trace,
            ..Config::default()
        };
        let (next, changes) = apply_live(&current, file, Some(LogLevel::Info));
        assert_eq!(next.log_level, LogLevel::Info);
        assert!(changes.applied.is_empty());
    }
}
