//! A merged NRI adjustment, carried out on a container's OCI spec (as JSON, before the
//! runtime sees it).
//!
//! Not carried out, and refused with [`EventError::Unsupported`] rather than dropped:
//! CDI devices (crisp has no CDI registry), RDT and block I/O classes, and memory
//! policies.

use serde_json::{Map, Value, json};

use crate::EventError;
use crate::api;

/// Applies `a` to `spec`.
pub fn apply(spec: &mut Value, a: &api::ContainerAdjustment) -> Result<(), EventError> {
    refuse_unsupported(a)?;
    if !spec.is_object() {
        return Err(EventError::Unsupported(
            "the spec is not a JSON object".into(),
        ));
    }
    for (k, v) in &a.annotations {
        let annotations = object(spec, &["annotations"]);
        match k.strip_prefix('-') {
            Some(name) => {
                annotations.remove(name);
            }
            None => {
                annotations.insert(k.clone(), v.clone().into());
            }
        }
    }
    for m in &a.mounts {
        let mounts = array(spec, &["mounts"]);
        let dest = m.destination.strip_prefix('-').unwrap_or(&m.destination);
        let at = mounts.iter().position(|old| old["destination"] == dest);
        if m.destination.starts_with('-') {
            if let Some(at) = at {
                mounts.remove(at);
            }
            continue;
        }
        let mount = json!({
            "destination": m.destination,
            "type": m.r#type,
            "source": m.source,
            "options": m.options,
        });
        match at {
            Some(at) => mounts[at] = mount,
            None => mounts.push(mount),
        }
    }
    for e in &a.env {
        let env = array(spec, &["process", "env"]);
        let name = e.key.strip_prefix('-').unwrap_or(&e.key);
        let prefix = format!("{name}=");
        let at = env.iter().position(|old| {
            old.as_str()
                .is_some_and(|s| s.starts_with(&prefix) || s == name)
        });
        if e.key.starts_with('-') {
            if let Some(at) = at {
                env.remove(at);
            }
            continue;
        }
        let entry = Value::from(format!("{name}={}", e.value));
        match at {
            Some(at) => env[at] = entry,
            None => env.push(entry),
        }
    }
    if let Some(hooks) = &a.hooks {
        for (name, list) in [
            ("prestart", &hooks.prestart),
            ("createRuntime", &hooks.create_runtime),
            ("createContainer", &hooks.create_container),
            ("startContainer", &hooks.start_container),
            ("poststart", &hooks.poststart),
            ("poststop", &hooks.poststop),
        ] {
            for hook in list {
                let mut h = json!({"path": hook.path});
                if !hook.args.is_empty() {
                    h["args"] = hook.args.clone().into();
                }
                if !hook.env.is_empty() {
                    h["env"] = hook.env.clone().into();
                }
                if let Some(t) = &hook.timeout {
                    h["timeout"] = t.value.into();
                }
                array(spec, &["hooks", name]).push(h);
            }
        }
    }
    for r in &a.rlimits {
        let rlimits = array(spec, &["process", "rlimits"]);
        rlimits.retain(|old| old["type"] != r.r#type.as_str());
        rlimits.push(json!({"type": r.r#type, "hard": r.hard, "soft": r.soft}));
    }
    if !a.args.is_empty() {
        // A leading "" only marks the arguments as taken over (NRI's UpdateArgs).
        let args = match a.args.split_first() {
            Some((first, rest)) if first.is_empty() => rest,
            _ => a.args.as_slice(),
        };
        if args.is_empty() {
            return Err(EventError::Unsupported(
                "arguments adjusted to none (a container needs a command)".into(),
            ));
        }
        object(spec, &["process"]).insert("args".into(), json!(args));
    }
    if let Some(l) = &a.linux {
        linux(spec, l)?;
    }
    Ok(())
}

fn refuse_unsupported(a: &api::ContainerAdjustment) -> Result<(), EventError> {
    if let Some(d) = a.cdi_devices.first() {
        return Err(EventError::Unsupported(format!(
            "CDI device {} (crisp has no CDI registry)",
            d.name
        )));
    }
    let Some(l) = &a.linux else { return Ok(()) };
    let resources = l.resources.as_ref();
    let refused = [
        (l.rdt.is_some(), "an RDT setting"),
        (l.memory_policy.is_some(), "a memory policy"),
        (
            resources.is_some_and(|r| r.rdt_class.is_some()),
            "an RDT class",
        ),
        (
            resources.is_some_and(|r| r.blockio_class.is_some()),
            "a block I/O class",
        ),
    ];
    match refused.iter().find(|(set, _)| *set) {
        Some((_, what)) => Err(EventError::Unsupported((*what).to_owned())),
        None => Ok(()),
    }
}

fn linux(spec: &mut Value, l: &api::LinuxContainerAdjustment) -> Result<(), EventError> {
    for d in &l.devices {
        let path = d.path.strip_prefix('-').unwrap_or(&d.path);
        let devices = array(spec, &["linux", "devices"]);
        devices.retain(|old| old["path"] != path);
        if d.path.starts_with('-') {
            continue;
        }
        let mut dev = json!({"path": d.path, "type": d.r#type, "major": d.major, "minor": d.minor});
        if let Some(mode) = &d.file_mode {
            dev["fileMode"] = mode.value.into();
        }
        if let Some(uid) = &d.uid {
            dev["uid"] = uid.value.into();
        }
        if let Some(gid) = &d.gid {
            dev["gid"] = gid.value.into();
        }
        devices.push(dev);
        // The device is usable, not only present: allowed in the device cgroup.
        array(spec, &["linux", "resources", "devices"]).push(json!({
            "allow": true, "type": d.r#type, "major": d.major, "minor": d.minor, "access": "rwm",
        }));
    }
    if let Some(r) = &l.resources {
        resources(spec, r);
    }
    if !l.cgroups_path.is_empty() {
        object(spec, &["linux"]).insert("cgroupsPath".into(), l.cgroups_path.clone().into());
    }
    if let Some(oom) = &l.oom_score_adj {
        object(spec, &["process"]).insert("oomScoreAdj".into(), oom.value.into());
    }
    if let Some(io) = &l.io_priority {
        // Class NONE is no I/O priority: nothing to set.
        match api::IoPrioClass::try_from(io.class) {
            Ok(api::IoPrioClass::IoprioClassNone) => {}
            Ok(class) => {
                object(spec, &["process"]).insert(
                    "ioPriority".into(),
                    json!({"class": class.as_str_name(), "priority": io.priority}),
                );
            }
            Err(_) => {
                return Err(EventError::Unsupported(format!(
                    "I/O priority class {}",
                    io.class
                )));
            }
        }
    }
    if let Some(s) = &l.seccomp_policy {
        let syscalls: Vec<Value> = s
            .syscalls
            .iter()
            .map(|c| {
                let mut call = json!({
                    "names": c.names,
                    "action": c.action,
                    "args": c.args.iter().map(|a| json!({
                        "index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op,
                    })).collect::<Vec<_>>(),
                });
                if let Some(e) = &c.errno_ret {
                    call["errnoRet"] = e.value.into();
                }
                call
            })
            .collect();
        let mut seccomp = json!({
            "defaultAction": s.default_action,
            "architectures": s.architectures,
            "flags": s.flags,
            "syscalls": syscalls,
        });
        if let Some(e) = &s.default_errno {
            seccomp["defaultErrnoRet"] = e.value.into();
        }
        if !s.listener_path.is_empty() {
            seccomp["listenerPath"] = s.listener_path.clone().into();
            seccomp["listenerMetadata"] = s.listener_metadata.clone().into();
        }
        object(spec, &["linux"]).insert("seccomp".into(), seccomp);
    }
    for n in &l.namespaces {
        let kind = n.r#type.strip_prefix('-').unwrap_or(&n.r#type);
        let namespaces = array(spec, &["linux", "namespaces"]);
        namespaces.retain(|old| old["type"] != kind);
        if !n.r#type.starts_with('-') {
            let mut ns = json!({"type": kind});
            if !n.path.is_empty() {
                ns["path"] = n.path.clone().into();
            }
            namespaces.push(ns);
        }
    }
    for (k, v) in &l.sysctl {
        let sysctl = object(spec, &["linux", "sysctl"]);
        match k.strip_prefix('-') {
            Some(name) => {
                sysctl.remove(name);
            }
            None => {
                sysctl.insert(k.clone(), v.clone().into());
            }
        }
    }
    for (host, device) in &l.net_devices {
        let devices = object(spec, &["linux", "netDevices"]);
        match host.strip_prefix('-') {
            Some(name) => {
                devices.remove(name);
            }
            None => {
                devices.insert(host.clone(), json!({"name": device.name}));
            }
        }
    }
    if let Some(s) = &l.scheduler {
        let policy = scheduler_policy(s.policy)
            .ok_or_else(|| EventError::Unsupported(format!("scheduler policy {}", s.policy)))?;
        let flags = s
            .flags
            .iter()
            .map(|f| {
                scheduler_flag(*f).ok_or_else(|| {
                    EventError::Unsupported(format!(
                        "scheduler flag {f} (the OCI library crisp uses cannot pass it to the runtime)"
                    ))
                })
            })
            .collect::<Result<Vec<&str>, EventError>>()?;
        object(spec, &["process"]).insert(
            "scheduler".into(),
            json!({
                "policy": policy, "nice": s.nice, "priority": s.priority, "flags": flags,
                "runtime": s.runtime, "deadline": s.deadline, "period": s.period,
            }),
        );
    }
    Ok(())
}

fn resources(spec: &mut Value, r: &api::LinuxResources) {
    if let Some(m) = &r.memory {
        let memory = object(spec, &["linux", "resources", "memory"]);
        for (name, value) in [
            ("limit", m.limit.as_ref().map(|v| v.value)),
            ("reservation", m.reservation.as_ref().map(|v| v.value)),
            ("swap", m.swap.as_ref().map(|v| v.value)),
            ("kernel", m.kernel.as_ref().map(|v| v.value)),
            ("kernelTCP", m.kernel_tcp.as_ref().map(|v| v.value)),
        ] {
            if let Some(v) = value {
                memory.insert(name.into(), v.into());
            }
        }
        if let Some(v) = &m.swappiness {
            memory.insert("swappiness".into(), v.value.into());
        }
        if let Some(v) = &m.disable_oom_killer {
            memory.insert("disableOOMKiller".into(), v.value.into());
        }
        if let Some(v) = &m.use_hierarchy {
            memory.insert("useHierarchy".into(), v.value.into());
        }
    }
    if let Some(c) = &r.cpu {
        let cpu = object(spec, &["linux", "resources", "cpu"]);
        if let Some(v) = &c.shares {
            cpu.insert("shares".into(), v.value.into());
        }
        if let Some(v) = &c.quota {
            cpu.insert("quota".into(), v.value.into());
        }
        if let Some(v) = &c.period {
            cpu.insert("period".into(), v.value.into());
        }
        if let Some(v) = &c.realtime_runtime {
            cpu.insert("realtimeRuntime".into(), v.value.into());
        }
        if let Some(v) = &c.realtime_period {
            cpu.insert("realtimePeriod".into(), v.value.into());
        }
        if !c.cpus.is_empty() {
            cpu.insert("cpus".into(), c.cpus.clone().into());
        }
        if !c.mems.is_empty() {
            cpu.insert("mems".into(), c.mems.clone().into());
        }
    }
    if let Some(p) = &r.pids {
        object(spec, &["linux", "resources"]).insert("pids".into(), json!({"limit": p.limit}));
    }
    for h in &r.hugepage_limits {
        let limits = array(spec, &["linux", "resources", "hugepageLimits"]);
        limits.retain(|old| old["pageSize"] != h.page_size.as_str());
        limits.push(json!({"pageSize": h.page_size, "limit": h.limit}));
    }
    for (k, v) in &r.unified {
        object(spec, &["linux", "resources", "unified"]).insert(k.clone(), v.clone().into());
    }
    for d in &r.devices {
        let mut rule = json!({"allow": d.allow, "type": d.r#type, "access": d.access});
        if let Some(m) = &d.major {
            rule["major"] = m.value.into();
        }
        if let Some(m) = &d.minor {
            rule["minor"] = m.value.into();
        }
        array(spec, &["linux", "resources", "devices"]).push(rule);
    }
}

fn scheduler_policy(p: i32) -> Option<&'static str> {
    Some(match p {
        0 | 1 => "SCHED_OTHER",
        2 => "SCHED_FIFO",
        3 => "SCHED_RR",
        4 => "SCHED_BATCH",
        5 => "SCHED_ISO",
        6 => "SCHED_IDLE",
        7 => "SCHED_DEADLINE",
        _ => return None,
    })
}

/// The flags the OCI spec names and crisp's OCI library spells the same way
/// (reset-on-fork and deadline-overrun it spells otherwise, so they are refused).
fn scheduler_flag(f: i32) -> Option<&'static str> {
    Some(match f {
        1 => "SCHED_FLAG_RECLAIM",
        3 => "SCHED_FLAG_KEEP_POLICY",
        4 => "SCHED_FLAG_KEEP_PARAMS",
        5 => "SCHED_FLAG_UTIL_CLAMP_MIN",
        6 => "SCHED_FLAG_UTIL_CLAMP_MAX",
        _ => return None,
    })
}

/// The object at `path` under `spec` (a JSON object), made (or replacing a non-object)
/// if need be.
fn object<'a>(spec: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut at = spec;
    for name in path {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        at = match at {
            Value::Object(map) => map.entry((*name).to_owned()).or_insert(Value::Null),
            _ => unreachable!("made an object above"),
        };
    }
    if !at.is_object() {
        *at = Value::Object(Map::new());
    }
    match at {
        Value::Object(map) => map,
        _ => unreachable!("made an object above"),
    }
}

/// The array at `path` under `spec`, made if need be.
fn array<'a>(spec: &'a mut Value, path: &[&str]) -> &'a mut Vec<Value> {
    let (last, parents) = path.split_last().unwrap_or((&"", &[]));
    let parent = object(spec, parents);
    let at = parent.entry((*last).to_owned()).or_insert(Value::Null);
    if !at.is_array() {
        *at = Value::Array(Vec::new());
    }
    match at {
        Value::Array(list) => list,
        _ => unreachable!("made an array above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_mounts_annotations_and_limits_land_in_the_spec() {
        let mut spec = json!({
            "process": {"args": ["sh"], "env": ["PATH=/bin", "GONE=1"]},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/old", "options": []}],
            "linux": {"resources": {"memory": {"limit": 1}}},
        });
        let adjust = api::ContainerAdjustment {
            annotations: [("a".to_owned(), "b".to_owned())].into(),
            env: vec![
                api::KeyValue {
                    key: "NEW".into(),
                    value: "x".into(),
                },
                api::KeyValue {
                    key: "-GONE".into(),
                    value: String::new(),
                },
            ],
            mounts: vec![api::Mount {
                destination: "/data".into(),
                r#type: "bind".into(),
                source: "/new".into(),
                options: vec!["rbind".into(), "ro".into()],
            }],
            linux: Some(api::LinuxContainerAdjustment {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory {
                        limit: Some(api::OptionalInt64 { value: 1 << 20 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        apply(&mut spec, &adjust).expect("apply");
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "NEW=x"]));
        assert_eq!(spec["mounts"].as_array().map(Vec::len), Some(1));
        assert_eq!(spec["mounts"][0]["source"], "/new");
        assert_eq!(spec["annotations"]["a"], "b");
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 1 << 20);
    }

    #[test]
    fn a_leading_empty_argument_only_marks_a_take_over() {
        let mut spec = json!({"process": {"args": ["old"]}});
        let adjust = api::ContainerAdjustment {
            args: vec![String::new(), "new".into(), "-x".into()],
            ..Default::default()
        };
        apply(&mut spec, &adjust).expect("apply");
        assert_eq!(spec["process"]["args"], json!(["new", "-x"]));
        let none = api::ContainerAdjustment {
            args: vec![String::new()],
            ..Default::default()
        };
        assert!(
            apply(&mut spec, &none).is_err(),
            "a container needs a command"
        );
    }

    #[test]
    fn what_crisp_cannot_do_is_refused() {
        let adjust = api::ContainerAdjustment {
            cdi_devices: vec![api::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            ..Default::default()
        };
        let err = apply(&mut json!({}), &adjust).expect_err("refused");
        assert!(
            err.to_string().contains("CDI device vendor.com/gpu=0"),
            "{err}"
        );
        // A scheduler flag the OCI library would misspell for the runtime.
        let reset_on_fork = api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment {
                scheduler: Some(api::LinuxScheduler {
                    policy: 2,
                    flags: vec![0],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(apply(&mut json!({}), &reset_on_fork).is_err());
    }
}
