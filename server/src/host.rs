//! Facts about the host that Status and `crispd check` both report.

use std::path::PathBuf;

use conf::Config;

/// The default handler's binary, or why it cannot be used.
pub fn runtime_binary(config: &Config, handler: &str) -> Result<PathBuf, String> {
    let Some(h) = config.runtimes.get(handler) else {
        return Err(format!("runtime handler `{handler}` is not configured"));
    };
    runtime_handlers::resolve_binary(&h.path).ok_or_else(|| {
        format!(
            "runtime handler `{handler}`: binary `{}` not found or not executable",
            h.path.display()
        )
    })
}

/// The CNI network pods would join, or why there is none.
pub fn network_config(config: &Config) -> Result<network::NetworkConfig, network::CniError> {
    let search = network::PluginSearch {
        dirs: &config.cni.plugin_dirs,
    };
    network::find_network_config(&config.cni.conf_dir, &search)
}
