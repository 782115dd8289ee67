//! Finding the network configuration: the first valid file by name in the CNI directory,
//! as the CNI spec and kubelet-era runtimes (containerd, CRI-O) do.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::CniError;

/// A usable CNI network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// The network name.
    pub name: String,
    /// The CNI spec version the list declares.
    pub cni_version: String,
    /// Plugin configurations in chain order (each has a `type`).
    pub plugins: Vec<Value>,
    /// The list as parsed (a single-plugin `.conf` is turned into a list).
    pub raw: Value,
}

impl NetworkConfig {
    /// The plugin types, in chain order.
    pub fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
    }
}

/// Where plugin binaries are looked up.
#[derive(Debug, Clone)]
pub struct PluginSearch<'a> {
    /// Directories searched in order.
    pub dirs: &'a [PathBuf],
}

impl PluginSearch<'_> {
    /// The path of a plugin binary, if one of the directories has it.
    pub fn find(&self, plugin: &str) -> Option<PathBuf> {
        if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
            return None;
        }
        self.dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|candidate| is_executable(candidate))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first valid configuration (by file name) whose plugins all exist.
pub fn find_network_config(
    dir: &Path,
    plugins: &PluginSearch<'_>,
) -> Result<NetworkConfig, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::NotFound {
                dir: dir.to_owned(),
                rejected: Vec::new(),
            });
        }
        Err(source) => {
            return Err(CniError::ReadDir {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "conflist" | "conf" | "json"))
        })
        .collect();
    files.sort();
    let mut rejected = Vec::new();
    for path in files {
        match parse_file(&path).and_then(|config| check_plugins(config, plugins)) {
            Ok(config) => return Ok(config),
            Err(why) => rejected.push((path, why)),
        }
    }
    Err(CniError::NotFound {
        dir: dir.to_owned(),
        rejected,
    })
}

fn parse_file(path: &Path) -> Result<NetworkConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let is_list =
        path.extension().is_some_and(|e| e == "conflist") || value.get("plugins").is_some();
    parse_value(path, value, is_list)
}

fn parse_value(path: &Path, value: Value, is_list: bool) -> Result<NetworkConfig, String> {
    let obj = value.as_object().ok_or("not a JSON object")?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("no network `name`")?
        .to_owned();
    let cni_version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.4.0")
        .to_owned();
    if obj
        .get("disableCheck")
        .is_some_and(|v| !v.is_boolean() && !v.is_string())
    {
        return Err("`disableCheck` must be a boolean".to_owned());
    }
    let (plugins, raw) = if is_list {
        let plugins = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("a conflist needs a `plugins` array")?
            .clone();
        (plugins, value)
    } else {
        // A single-plugin .conf: wrap it in a list, as libcni's ConfListFromConf does.
        let list = serde_json::json!({
            "cniVersion": cni_version,
            "name": name,
            "plugins": [value.clone()],
        });
        (vec![value], list)
    };
    if plugins.is_empty() {
        return Err("`plugins` is empty".to_owned());
    }
    for (i, plugin) in plugins.iter().enumerate() {
        match plugin.get("type").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => {}
            _ => return Err(format!("plugin {i} has no `type`")),
        }
    }
    Ok(NetworkConfig {
        path: path.to_owned(),
        name,
        cni_version,
        plugins,
        raw,
    })
}

fn check_plugins(
    config: NetworkConfig,
    plugins: &PluginSearch<'_>,
) -> Result<NetworkConfig, String> {
    let missing: Vec<&str> = config
        .plugin_types()
        .filter(|t| plugins.find(t).is_none())
        .collect();
    if missing.is_empty() {
        Ok(config)
    } else {
        let dirs: Vec<String> = plugins
            .dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Err(format!(
            "plugin(s) {} not found in {}",
            missing.join(", "),
            dirs.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["bridge", "host-local", "loopback"] {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").expect("write plugin");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        dir
    }

    #[test]
    fn first_valid_file_by_name_wins() {
        let plugins = plugin_dir();
        let conf = tempfile::tempdir().expect("tempdir");
        std::fs::write(conf.path().join("05-broken.conflist"), "{not json").expect("write");
        std::fs::write(
            conf.path().join("10-missing.conflist"),
            r#"{"cniVersion":"1.0.0","name":"m","plugins":[{"type":"nosuchplugin"}]}"#,
        )
        .expect("write");
        std::fs::write(
            conf.path().join("20-good.conflist"),
            r#"{"cniVersion":"1.0.0","name":"good","plugins":[{"type":"bridge"},{"type":"loopback"}]}"#,
        )
        .expect("write");
        std::fs::write(
            conf.path().join("30-later.conf"),
            r#"{"cniVersion":"0.4.0","name":"later","type":"bridge"}"#,
        )
        .expect("write");
        let dirs = [plugins.path().to_owned()];
        let found = find_network_config(conf.path(), &PluginSearch { dirs: &dirs }).expect("found");
        assert_eq!(found.name, "good");
        assert_eq!(
            found.plugin_types().collect::<Vec<_>>(),
            ["bridge", "loopback"]
        );
    }

    #[test]
    fn single_plugin_conf_becomes_a_list() {
        let plugins = plugin_dir();
        let conf = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            conf.path().join("10-one.conf"),
            r#"{"cniVersion":"0.4.0","name":"one","type":"bridge"}"#,
        )
        .expect("write");
        let dirs = [plugins.path().to_owned()];
        let found = find_network_config(conf.path(), &PluginSearch { dirs: &dirs }).expect("found");
        assert_eq!(found.raw["plugins"][0]["type"], "bridge");
    }

    #[test]
    fn nothing_usable_names_every_rejected_file() {
        let plugins = plugin_dir();
        let conf = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            conf.path().join("10-x.conflist"),
            r#"{"name":"x","plugins":[]}"#,
        )
        .expect("write");
        let dirs = [plugins.path().to_owned()];
        let err =
            find_network_config(conf.path(), &PluginSearch { dirs: &dirs }).expect_err("none");
        let text = err.to_string();
        assert!(
            text.contains("10-x.conflist") && text.contains("empty"),
            "{text}"
        );
    }

    #[test]
    fn plugin_names_cannot_escape_the_plugin_dirs() {
        let plugins = plugin_dir();
        let dirs = [plugins.path().join("sub")];
        let search = PluginSearch { dirs: &dirs };
        assert_eq!(search.find("../bridge"), None);
        assert_eq!(search.find(".."), None);
    }
}
