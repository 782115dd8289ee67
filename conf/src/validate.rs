//! Checks that span keys or go beyond types: paths, handler names, URLs, limits.

use std::path::Path;

use crate::schema::{Config, HandlerType};

/// One problem, by dotted key path.
#[derive(Debug)]
pub struct Problem {
    /// Key path segments (a segment may itself hold dots, like a registry host).
    pub key: Vec<String>,
    pub message: String,
}

/// Something that names a key: a dotted path of plain segments, or explicit segments.
pub trait KeyPath {
    fn segments(self) -> Vec<String>;
}

impl KeyPath for &str {
    fn segments(self) -> Vec<String> {
        self.split('.').map(str::to_owned).collect()
    }
}

impl KeyPath for Vec<String> {
    fn segments(self) -> Vec<String> {
        self
    }
}

fn problem(key: impl KeyPath, message: impl Into<String>) -> Result<(), Problem> {
    Err(Problem {
        key: key.segments(),
        message: message.into(),
    })
}

fn absolute(key: impl KeyPath, path: &Path) -> Result<(), Problem> {
    if path.is_absolute() {
        Ok(())
    } else {
        problem(
            key,
            format!("`{}` must be an absolute path", path.display()),
        )
    }
}

/// The first problem found, if any.
pub fn validate(config: &Config) -> Result<(), Problem> {
    absolute("root", &config.root)?;
    absolute("state", &config.state)?;
    absolute("listen", &config.listen)?;
    absolute("log_dir", &config.log_dir)?;
    absolute("cni.conf_dir", &config.cni.conf_dir)?;
    for dir in &config.cni.plugin_dirs {
        absolute("cni.plugin_dirs", dir)?;
    }
    if config.cni.plugin_dirs.is_empty() {
        return problem("cni.plugin_dirs", "at least one plugin directory is needed");
    }
    absolute("nri.socket_path", &config.nri.socket_path)?;
    absolute("nri.plugin_path", &config.nri.plugin_path)?;
    absolute("nri.plugin_config_path", &config.nri.plugin_config_path)?;
    for (key, value) in [
        ("nri.registration_timeout", config.nri.registration_timeout),
        ("nri.request_timeout", config.nri.request_timeout),
    ] {
        if value.is_zero() {
            return problem(key, "must be longer than 0s");
        }
    }

    let names = || {
        config
            .runtimes
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !config.runtimes.contains_key(&config.default_runtime) {
        return problem(
            "default_runtime",
            format!(
                "handler `{}` is not configured; configured handlers: {}",
                config.default_runtime,
                names()
            ),
        );
    }
    if let Some(untrusted) = &config.untrusted_workload_runtime
        && !config.runtimes.contains_key(untrusted)
    {
        return problem(
            "untrusted_workload_runtime",
            format!(
                "handler `{untrusted}` is not configured; configured handlers: {}",
                names()
            ),
        );
    }
    for (name, handler) in &config.runtimes {
        let key = |field: &str| vec!["runtimes".to_owned(), name.clone(), field.to_owned()];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return problem(
                vec!["runtimes".to_owned(), name.clone()],
                "handler names may hold only letters, digits, '-', '_' and '.'",
            );
        }
        if handler.path.as_os_str().is_empty() {
            return problem(key("path"), "the runtime binary must be named");
        }
        if let Some(root) = &handler.root {
            absolute(key("root"), root)?;
        }
        if handler.kind == HandlerType::Microvm {
            if handler.kernel.is_none() {
                return problem(key("kernel"), "a microvm handler needs a guest kernel");
            }
            if handler.initrd.is_none() {
                return problem(
                    key("initrd"),
                    "a microvm handler needs the guest initramfs holding crisp's agent",
                );
            }
            if handler.memory_mib != 0 && handler.memory_mib < 64 {
                return problem(key("memory_mib"), "a guest needs at least 64 MiB");
            }
            if handler.vcpus > 64 {
                return problem(key("vcpus"), "at most 64 vCPUs per guest");
            }
            if handler.boot_timeout.is_some_and(|t| t.is_zero()) {
                return problem(
                    key("boot_timeout"),
                    "a guest needs time to boot: give e.g. \"30s\"",
                );
            }
            if handler
                .machine
                .as_deref()
                .is_some_and(|m| m.is_empty() || m.contains(char::is_whitespace))
            {
                return problem(
                    key("machine"),
                    "name a QEMU machine type, e.g. \"microvm\" or \"q35\"",
                );
            }
        }
    }

    if config.pause_image.trim().is_empty() {
        return problem("pause_image", "the pause image must be named");
    }
    for (host, mirror) in &config.registry.mirrors {
        for endpoint in &mirror.endpoints {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return problem(
                    vec![
                        "registry".to_owned(),
                        "mirrors".to_owned(),
                        host.clone(),
                        "endpoints".to_owned(),
                    ],
                    format!("endpoint `{endpoint}` must start with http:// or https://"),
                );
            }
        }
    }
    if config.image.pull_progress_timeout.is_zero() {
        return problem("image.pull_progress_timeout", "must be longer than zero");
    }
    if config.image.pull_timeout.is_zero() {
        return problem("image.pull_timeout", "must be longer than zero");
    }
    if config.image.max_concurrent_downloads == 0 {
        return problem("image.max_concurrent_downloads", "must be at least 1");
    }
    if config
        .streaming
        .address
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        return problem(
            "streaming.address",
            format!("`{}` is not an ip:port address", config.streaming.address),
        );
    }
    if config.streaming.tls_cert.is_some() != config.streaming.tls_key.is_some() {
        return problem("streaming.tls_cert", "tls_cert and tls_key go together");
    }
    if !config.metrics.address.is_empty()
        && config
            .metrics
            .address
            .parse::<std::net::SocketAddr>()
            .is_err()
    {
        return problem(
            "metrics.address",
            format!("`{}` is not an ip:port address", config.metrics.address),
        );
    }
    Ok(())
}
