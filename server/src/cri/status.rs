//! The Status RPC: conditions that reflect the host as it is now.

use std::collections::HashMap;

use conf::Config;
use cri_proto::v1 as cri;

use crate::host;

/// Condition type kubelet waits for before it runs pods.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// Condition type kubelet needs before it runs non-host-network pods.
pub const NETWORK_READY: &str = "NetworkReady";

/// Builds the answer; touches the filesystem, so call it off the async threads.
pub fn status(config: &Config, verbose: bool) -> cri::StatusResponse {
    let runtime = match host::runtime_binary(config, &config.default_runtime) {
        Ok(_) => condition(RUNTIME_READY, Ok(())),
        Err(message) => condition(RUNTIME_READY, Err(("RuntimeBinaryNotFound", message))),
    };
    let network = match host::network_config(config) {
        Ok(_) => condition(NETWORK_READY, Ok(())),
        Err(e) => condition(
            NETWORK_READY,
            Err((
                "NetworkPluginNotReady",
                format!("network plugin is not ready: {e}"),
            )),
        ),
    };
    let mut info = HashMap::new();
    if verbose {
        // crictl info prints each value as JSON; containerd and CRI-O also use "config".
        let json = serde_json::to_string(&config.redacted())
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode config: {e}\"}}"));
        info.insert("config".to_owned(), json);
        // `crictl info` shows, per configured handler, whether it can run here.
        let handlers: serde_json::Map<String, serde_json::Value> = config
            .runtimes
            .keys()
            .map(|name| {
                let state = match host::runtime_binary(config, name) {
                    Ok(path) => serde_json::json!({"usable": true, "binary": path}),
                    Err(reason) => serde_json::json!({"usable": false, "reason": reason}),
                };
                (name.clone(), state)
            })
            .collect();
        info.insert(
            "runtimeHandlers".to_owned(),
            serde_json::Value::Object(handlers).to_string(),
        );
    }
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        runtime_handlers: runtime_handlers(config),
        features: Some(cri::RuntimeFeatures {
            // Strict leaves out the groups an image's /etc/group adds.
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
        }),
    }
}

fn condition(kind: &str, state: Result<(), (&str, String)>) -> cri::RuntimeCondition {
    match state {
        Ok(()) => cri::RuntimeCondition {
            r#type: kind.to_owned(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err((reason, message)) => cri::RuntimeCondition {
            r#type: kind.to_owned(),
            status: false,
            reason: reason.to_owned(),
            message,
        },
    }
}

/// The default handler (empty name, as kubelet looks it up) and every named one whose
/// binary is installed, each with what its handler says it supports.
fn runtime_handlers(config: &Config) -> Vec<cri::RuntimeHandler> {
    let features = |name: &str| {
        let handler = if name.is_empty() {
            config.default_runtime.as_str()
        } else {
            name
        };
        let f = crate::container::runtime_for(config, handler)
            .map(|r| r.features())
            .unwrap_or_default();
        Some(cri::RuntimeHandlerFeatures {
            recursive_read_only_mounts: f.recursive_read_only_mounts,
            user_namespaces: f.user_namespaces,
        })
    };
    let usable = config
        .runtimes
        .keys()
        .filter(|name| host::runtime_binary(config, name).is_ok())
        .cloned();
    std::iter::once(String::new())
        .chain(usable)
        .map(|name| cri::RuntimeHandler {
            features: features(&name),
            name,
        })
        .collect()
}
