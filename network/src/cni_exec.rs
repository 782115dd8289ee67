//! Running a CNI plugin chain (spec 1.0): ADD in order, each plugin handed the previous
//! result; DEL in reverse with the cached ADD result. A failed ADD is undone with a DEL
//! of the whole chain, so a half-attached pod leaks no veth, IP or iptables rule.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::cni_config::{NetworkConfig, PluginSearch};
use crate::error::CniError;

/// A published port (CNI `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Host address to bind, empty for all.
    pub host_ip: String,
}

/// What to attach: one pod's network namespace.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The sandbox ID (CNI_CONTAINERID).
    pub container_id: String,
    /// The pinned network namespace.
    pub netns: PathBuf,
    /// The interface to create in it.
    pub ifname: String,
    /// CNI_ARGS pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: Vec<(String, String)>,
    /// Ports to publish.
    pub port_mappings: Vec<PortMapping>,
}

/// A successful ADD, kept (persisted by the caller) so DEL can run after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    /// The network configuration list the ADD ran with (DEL must use the same).
    pub network: Value,
    /// The chain's final result.
    pub result: Value,
    /// Addresses the pod got, IPv4 and IPv6.
    pub ips: Vec<IpAddr>,
}

/// Runs ADD for the whole chain; on failure runs DEL for it and reports the ADD error.
pub fn add(
    network: &NetworkConfig,
    plugins: &PluginSearch<'_>,
    attachment: &Attachment,
) -> Result<Attached, CniError> {
    let mut prev: Option<Value> = None;
    for plugin in &network.plugins {
        let conf = plugin_conf(&network.raw, plugin, prev.as_ref(), attachment);
        match exec(plugins, "ADD", &conf, attachment) {
            Ok(result) => prev = Some(result),
            Err(e) => {
                if let Err(cleanup) = del(&network.raw, plugins, attachment, prev.as_ref()) {
                    tracing::warn!(error = %cleanup, "rolling back a failed CNI ADD");
                }
                return Err(e);
            }
        }
    }
    let result = prev.unwrap_or_else(|| json!({}));
    let ips = result_ips(&result);
    Ok(Attached {
        network: network.raw.clone(),
        result,
        ips,
    })
}

/// Runs DEL for the chain in reverse, past failures, reporting every one. Plugins are
/// required to succeed on DEL of something already gone, so this is idempotent. The
/// attachment must carry the same port mappings as the ADD: portmap removes only the
/// rules it is told about.
pub fn del(
    network: &Value,
    plugins: &PluginSearch<'_>,
    attachment: &Attachment,
    prev: Option<&Value>,
) -> Result<(), CniError> {
    let list = network
        .get("plugins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut failures = Vec::new();
    for plugin in list.iter().rev() {
        let conf = plugin_conf(network, plugin, prev, attachment);
        if let Err(e) = exec(plugins, "DEL", &conf, attachment) {
            failures.push(e.to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::Teardown {
            container_id: attachment.container_id.clone(),
            failures,
        })
    }
}

/// One plugin's stdin: its own config plus name, version, previous result and runtime
/// config for the capabilities it declares.
fn plugin_conf(
    network: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    attachment: &Attachment,
) -> Value {
    let mut conf = plugin.clone();
    if let Some(obj) = conf.as_object_mut() {
        obj.insert(
            "name".into(),
            network.get("name").cloned().unwrap_or(Value::Null),
        );
        obj.insert(
            "cniVersion".into(),
            network
                .get("cniVersion")
                .cloned()
                .unwrap_or_else(|| "1.0.0".into()),
        );
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
        let wants_ports = plugin
            .get("capabilities")
            .and_then(|c| c.get("portMappings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if wants_ports && !attachment.port_mappings.is_empty() {
            let ports: Vec<Value> = attachment
                .port_mappings
                .iter()
                .map(|p| {
                    json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol,
                        "hostIP": p.host_ip,
                    })
                })
                .collect();
            obj.insert("runtimeConfig".into(), json!({ "portMappings": ports }));
        }
    }
    conf
}

fn exec(
    plugins: &PluginSearch<'_>,
    command: &str,
    conf: &Value,
    attachment: &Attachment,
) -> Result<Value, CniError> {
    let kind = conf
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let binary = plugins.find(&kind).ok_or_else(|| CniError::Plugin {
        plugin: kind.clone(),
        command: command.to_owned(),
        message: "plugin binary not found".to_owned(),
    })?;
    let mut args = vec!["IgnoreUnknown=1".to_owned()];
    args.extend(attachment.args.iter().map(|(k, v)| format!("{k}={v}")));
    let cni_path = std::env::join_paths(plugins.dirs).unwrap_or_default();
    let mut child = Command::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &attachment.container_id)
        .env("CNI_NETNS", &attachment.netns)
        .env("CNI_IFNAME", &attachment.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env("CNI_PATH", cni_path)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CniError::Exec {
            plugin: binary.clone(),
            source,
        })?;
    let input = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input);
    }
    let output = child.wait_with_output().map_err(|source| CniError::Exec {
        plugin: binary.clone(),
        source,
    })?;
    if !output.status.success() {
        // Plugins print {"code", "msg", "details"} on stdout when they fail.
        let reported: Option<Value> = serde_json::from_slice(&output.stdout).ok();
        let message = reported
            .as_ref()
            .map(|r| {
                let msg = r.get("msg").and_then(Value::as_str).unwrap_or_default();
                let details = r.get("details").and_then(Value::as_str).unwrap_or_default();
                if details.is_empty() {
                    msg.to_owned()
                } else {
                    format!("{msg}: {details}")
                }
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "{} {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            });
        return Err(CniError::Plugin {
            plugin: kind,
            command: command.to_owned(),
            message,
        });
    }
    if command == "DEL" || output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&output.stdout).map_err(|e| CniError::Plugin {
        plugin: kind,
        command: command.to_owned(),
        message: format!("unreadable result: {e}"),
    })
}

/// The addresses in a CNI 1.0 result (`ips[].address` is `ip/prefix`).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .filter_map(|a| a.split('/').next())
                .filter_map(|a| a.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
