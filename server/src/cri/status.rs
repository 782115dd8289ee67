//! The Status RPC: conditions that reflect the host as it is now.

use std::collections::HashMap;
use std::sync::Arc;

use conf::Config;
use cri_proto::v1 as cri;
use runtime_handlers::RuntimeHandler;

use crate::handlers::{Handlers, Lookup};
use crate::host;

/// Condition type kubelet waits for before it runs pods.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// Condition type kubelet needs before it runs non-host-network pods.
pub const NETWORK_READY: &str = "NetworkReady";

/// Builds the answer; touches the filesystem, so call it off the async threads.
pub fn status(config: &Config, handlers: &Handlers, verbose: bool) -> cri::StatusResponse {
    // Each handler looked up once for the whole answer.
    let all = handlers.all();
    // Ready when the default handler can run: what RunPodSandbox will find.
    let runtime = match all.iter().find(|(name, _)| *name == config.default_runtime) {
        Some((_, Ok(_))) => condition(RUNTIME_READY, Ok(())),
        Some((_, Err(e))) => {
            condition(RUNTIME_READY, Err(("RuntimeBinaryNotFound", e.to_string())))
        }
        None => condition(
            RUNTIME_READY,
            Err((
                "RuntimeBinaryNotFound",
                format!(
                    "default runtime `{}` is not configured",
                    config.default_runtime
                ),
            )),
        ),
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
        let report: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|(name, handler)| {
                let state = match handler {
                    Ok(_) => serde_json::json!({"usable": true}),
                    Err(e) => serde_json::json!({"usable": false, "reason": e.to_string()}),
                };
                (name.clone(), state)
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
        runtime_handlers: runtime_handlers(config, &all),
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
fn runtime_handlers(config: &Config, all: &[Lookup]) -> Vec<cri::RuntimeHandler> {
    let entry = |name: &str, handler: &Arc<dyn RuntimeHandler>| {
        let f = handler.features();
        cri::RuntimeHandler {
            name: name.to_owned(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: f.recursive_read_only_mounts,
                user_namespaces: f.user_namespaces,
            }),
        }
    };
    let usable = all
        .iter()
        .filter_map(|(name, h)| h.as_ref().ok().map(|h| (name.as_str(), h)));
    let default = usable
        .clone()
        .find(|(name, _)| *name == config.default_runtime)
        .map(|(_, h)| entry("", h));
    default
        .into_iter()
        .chain(usable.map(|(name, h)| entry(name, h)))
        .collect()
}
