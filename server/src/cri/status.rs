//! The Status RPC: conditions that reflect the host as it is now.

use std::collections::HashMap;

use conf::Config;
use cri_proto::v1 as cri;

use crate::handlers::Handlers;
use crate::host;

/// Condition type kubelet waits for before it runs pods.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// Condition type kubelet needs before it runs non-host-network pods.
pub const NETWORK_READY: &str = "NetworkReady";

/// Builds the answer; touches the filesystem, so call it off the async threads.
pub fn status(config: &Config, handlers: &Handlers, verbose: bool) -> cri::StatusResponse {
    // Ready when the default handler can run: what RunPodSandbox will find.
    let runtime = match handlers.get(&config.default_runtime) {
        Ok(_) => condition(RUNTIME_READY, Ok(())),
        Err(e) => condition(RUNTIME_READY, Err(("RuntimeBinaryNotFound", e.to_string()))),
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
        let report: serde_json::Map<String, serde_json::Value> = handlers
            .report()
            .into_iter()
            .map(|(name, state)| {
                let state = match state {
                    Ok(()) => serde_json::json!({"usable": true}),
                    Err(reason) => serde_json::json!({"usable": false, "reason": reason}),
                };
                (name, state)
            })
            .collect();
        info.insert(
            "runtimeHandlers".to_owned(),
            serde_json::Value::Object(report).to_string(),
        );
    }
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        runtime_handlers: runtime_handlers(config, handlers),
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
fn runtime_handlers(config: &Config, handlers: &Handlers) -> Vec<cri::RuntimeHandler> {
    let entry = |name: &str, handler: &std::sync::Arc<dyn runtime_handlers::RuntimeHandler>| {
        let f = handler.features();
        cri::RuntimeHandler {
            name: name.to_owned(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: f.recursive_read_only_mounts,
                user_namespaces: f.user_namespaces,
            }),
        }
    };
    let default = handlers
        .get(&config.default_runtime)
        .ok()
        .map(|h| entry("", &h));
    default
        .into_iter()
        .chain(
            handlers
                .usable()
                .into_iter()
                .map(|(name, h)| entry(&name, &h)),
        )
        .collect()
}
