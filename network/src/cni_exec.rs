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

/// Traffic shaping for a pod (CNI `bandwidth` capability): rates in bits per second,
/// bursts in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bandwidth {
    /// Into the pod; 0 for no limit.
    pub ingress_rate: u64,
    /// Burst into the pod.
    pub ingress_burst: u64,
    /// Out of the pod; 0 for no limit.
    pub egress_rate: u64,
    /// Burst out of the pod.
    pub egress_burst: u64,
}

/// What to attach: one pod's network namespace.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Traffic shaping, if the pod asks for it.
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    /// Pod CIDRs (UpdateRuntimeConfig) for plugins with the `ipRanges` capability.
    #[serde(default)]
    pub ip_ranges: Vec<String>,
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
    // A namespace that is gone (a crash between unpinning it and saving the pod) is
    // given as none, as the CNI spec allows on DEL: plugins then release what they hold
    // outside it (addresses, rules) instead of failing on a path that is no namespace.
    let unpinned;
    let attachment = if !attachment.netns.as_os_str().is_empty()
        && !crate::netns::is_pinned(&attachment.netns)
    {
        unpinned = Attachment {
            netns: PathBuf::new(),
            ..attachment.clone()
        };
        &unpinned
    } else {
        attachment
    };
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

/// Whether a CNI spec version is at least 1.1.0, the first with GC.
fn supports_gc(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 1)
}

/// CNI GC (spec 1.1): tells every plugin of the chain which attachments (sandbox ID,
/// interface) are still valid, so they release whatever else they hold. A list declaring
/// an older spec version has no GC; that is not an error (`Ok(false)`).
pub fn gc(
    network: &NetworkConfig,
    plugins: &PluginSearch<'_>,
    valid: &[(String, String)],
) -> Result<bool, CniError> {
    if !supports_gc(&network.cni_version) {
        return Ok(false);
    }
    let attachments: Vec<Value> = valid
        .iter()
        .map(|(id, ifname)| json!({ "containerID": id, "ifname": ifname }))
        .collect();
    let none = Attachment {
        container_id: String::new(),
        netns: PathBuf::new(),
        ifname: String::new(),
        args: Vec::new(),
        port_mappings: Vec::new(),
        bandwidth: None,
        ip_ranges: Vec::new(),
    };
    let mut failures = Vec::new();
    for plugin in &network.plugins {
        let mut conf = plugin_conf(&network.raw, plugin, None, &none);
        if let Some(obj) = conf.as_object_mut() {
            obj.insert(
                "cni.dev/valid-attachments".into(),
                Value::Array(attachments.clone()),
            );
        }
        if let Err(e) = exec(plugins, "GC", &conf, &none) {
            failures.push(e.to_string());
        }
    }
    if failures.is_empty() {
        Ok(true)
    } else {
        Err(CniError::Teardown {
            container_id: "(garbage collection)".to_owned(),
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
        let capability = |name: &str| {
            plugin
                .get("capabilities")
                .and_then(|c| c.get(name))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let mut runtime_config = serde_json::Map::new();
        if capability("portMappings") && !attachment.port_mappings.is_empty() {
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
            runtime_config.insert("portMappings".into(), Value::Array(ports));
        }
        if capability("bandwidth")
            && let Some(b) = attachment.bandwidth
        {
            let mut shaping = serde_json::Map::new();
            if b.ingress_rate > 0 {
                shaping.insert("ingressRate".into(), b.ingress_rate.into());
                shaping.insert("ingressBurst".into(), b.ingress_burst.into());
            }
            if b.egress_rate > 0 {
                shaping.insert("egressRate".into(), b.egress_rate.into());
                shaping.insert("egressBurst".into(), b.egress_burst.into());
            }
            runtime_config.insert("bandwidth".into(), Value::Object(shaping));
        }
        if capability("ipRanges") && !attachment.ip_ranges.is_empty() {
            let sets: Vec<Value> = attachment
                .ip_ranges
                .iter()
                .map(|cidr| json!([{ "subnet": cidr }]))
                .collect();
            runtime_config.insert("ipRanges".into(), Value::Array(sets));
        }
        if !runtime_config.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
    }
    conf
}

/// The pod's shaping from kubelet's annotations (`kubernetes.io/ingress-bandwidth`,
/// `kubernetes.io/egress-bandwidth`, Kubernetes quantities such as `10M`), as kubelet
/// validates them (1k to 1P bits per second). Bursts are left as large as the plugin takes,
/// as containerd does, so the rate alone shapes.
pub fn bandwidth_from_annotations<'a>(
    mut annotation: impl FnMut(&str) -> Option<&'a str>,
) -> Result<Option<Bandwidth>, CniError> {
    const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
    const EGRESS: &str = "kubernetes.io/egress-bandwidth";
    let rate = |name: &str, value: Option<&str>| -> Result<u64, CniError> {
        let Some(value) = value else { return Ok(0) };
        let bits = parse_quantity(value.trim()).ok_or_else(|| CniError::Bandwidth {
            annotation: name.to_owned(),
            message: format!("`{value}` is not a quantity such as 10M or 1Gi"),
        })?;
        if !(1_000..=1_000_000_000_000_000).contains(&bits) {
            return Err(CniError::Bandwidth {
                annotation: name.to_owned(),
                message: format!("{value} is outside 1k..1P bits per second"),
            });
        }
        Ok(bits)
    };
    let ingress = rate(INGRESS, annotation(INGRESS))?;
    let egress = rate(EGRESS, annotation(EGRESS))?;
    if ingress == 0 && egress == 0 {
        return Ok(None);
    }
    let burst = |r: u64| if r > 0 { u64::from(u32::MAX) } else { 0 };
    Ok(Some(Bandwidth {
        ingress_rate: ingress,
        ingress_burst: burst(ingress),
        egress_rate: egress,
        egress_burst: burst(egress),
    }))
}

/// A Kubernetes quantity as a whole number: decimal (`k M G T P E`) and binary
/// (`Ki Mi Gi Ti Pi Ei`) suffixes, and plain integers.
fn parse_quantity(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok()?;
        let scale = 10u64.checked_pow(digits)?;
        let part: u64 = fraction.parse().ok()?;
        value = value.checked_add(part.checked_mul(multiplier)? / scale)?;
    }
    Some(value)
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
    if command == "DEL" || command == "GC" || output.stdout.iter().all(u8::is_ascii_whitespace) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn del_of_a_namespace_that_is_gone_passes_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let seen = dir.path().join("seen");
        let plugin = dir.path().join("record");
        std::fs::write(
            &plugin,
            format!(
                "#!/bin/sh\necho \"$CNI_COMMAND [$CNI_NETNS]\" >> {}\n",
                seen.display()
            ),
        )
        .expect("plugin");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // A plain file where the pinned namespace was.
        let pin = dir.path().join("net");
        std::fs::write(&pin, b"").expect("pin");
        let network = serde_json::json!({
            "cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "record"}]
        });
        let attachment = Attachment {
            container_id: "pod".into(),
            netns: pin,
            ifname: "eth0".into(),
            args: Vec::new(),
            port_mappings: Vec::new(),
            bandwidth: None,
            ip_ranges: Vec::new(),
        };
        let dirs = [dir.path().to_path_buf()];
        del(&network, &PluginSearch { dirs: &dirs }, &attachment, None).expect("del");
        let seen = std::fs::read_to_string(&seen).expect("the plugin ran");
        assert_eq!(seen.trim(), "DEL []");
    }

    #[test]
    fn gc_needs_spec_1_1() {
        assert!(!supports_gc("1.0.0"));
        assert!(!supports_gc("0.4.0"));
        assert!(supports_gc("1.1.0"));
        assert!(supports_gc("2.0.0"));
        let network = NetworkConfig {
            path: PathBuf::from("/x.conflist"),
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![json!({"type": "does-not-exist"})],
            raw: json!({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "does-not-exist"}]}),
        };
        let search = PluginSearch { dirs: &[] };
        assert!(!gc(&network, &search, &[]).expect("no GC before 1.1"));
        let newer = NetworkConfig {
            cni_version: "1.1.0".into(),
            ..network
        };
        assert!(
            gc(&newer, &search, &[]).is_err(),
            "a missing plugin is reported"
        );
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("1.5k"), Some(1_500));
        assert_eq!(parse_quantity("2500"), Some(2_500));
        assert_eq!(parse_quantity("10 M"), None);
        assert_eq!(parse_quantity("M"), None);
        assert_eq!(parse_quantity("10m"), None);
        assert_eq!(parse_quantity("99999999999E"), None);
    }

    #[test]
    fn bandwidth_annotations_become_runtime_config_for_plugins_that_ask() {
        let annotations = |k: &str| match k {
            "kubernetes.io/ingress-bandwidth" => Some("1M"),
            _ => None,
        };
        let bw = bandwidth_from_annotations(annotations)
            .expect("valid")
            .expect("shaping");
        assert_eq!((bw.ingress_rate, bw.egress_rate), (1_000_000, 0));
        let attachment = Attachment {
            container_id: "c".into(),
            netns: PathBuf::from("/ns"),
            ifname: "eth0".into(),
            args: Vec::new(),
            port_mappings: Vec::new(),
            bandwidth: Some(bw),
            ip_ranges: vec!["10.9.0.0/24".into()],
        };
        let network = json!({"name": "n", "cniVersion": "1.0.0"});
        let shaper = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
        let conf = plugin_conf(&network, &shaper, None, &attachment);
        assert_eq!(conf["runtimeConfig"]["bandwidth"]["ingressRate"], 1_000_000);
        assert!(
            conf["runtimeConfig"]["bandwidth"]
                .get("egressRate")
                .is_none()
        );
        let ranged = json!({"type": "bridge", "capabilities": {"ipRanges": true}});
        assert_eq!(
            plugin_conf(&network, &ranged, None, &attachment)["runtimeConfig"]["ipRanges"],
            json!([[{"subnet": "10.9.0.0/24"}]])
        );
        let bridge = json!({"type": "bridge"});
        assert!(
            plugin_conf(&network, &bridge, None, &attachment)
                .get("runtimeConfig")
                .is_none()
        );
        let too_slow = |k: &str| (k == "kubernetes.io/egress-bandwidth").then_some("10");
        let err = bandwidth_from_annotations(too_slow).expect_err("below 1k");
        assert!(err.to_string().contains("egress-bandwidth"), "{err}");
        assert_eq!(bandwidth_from_annotations(|_| None).expect("none"), None);
    }
}
