//! The adjustments of one container's creation, merged across plugins.
//!
//! Each setting belongs to the first plugin that sets it: a single setting (the memory
//! limit, the cgroups path, the arguments) as a whole, a keyed one (an annotation, an
//! environment variable, a mount by destination, a device by path) key by key. A second
//! plugin touching it refuses the container, naming both. OCI hooks add up. A key that
//! starts with `-` removes the entry instead (and is owned like setting it). Each plugin
//! sees the container as the plugins before it left it.

use std::collections::HashMap;

use crate::EventError;
use crate::api;

/// Adjustments so far, and the container as they leave it.
pub struct Merged {
    container: api::Container,
    adjust: api::ContainerAdjustment,
    touched: bool,
    owners: HashMap<String, String>,
}

/// The name an entry is kept under: without the removal mark.
fn key(k: &str) -> &str {
    k.strip_prefix('-').unwrap_or(k)
}

impl Merged {
    /// Nothing adjusted yet.
    pub fn new(container: api::Container) -> Self {
        Self {
            container,
            adjust: api::ContainerAdjustment::default(),
            touched: false,
            owners: HashMap::new(),
        }
    }

    /// The container as adjusted so far.
    pub fn container(&self) -> &api::Container {
        &self.container
    }

    /// The merged adjustment, if any plugin adjusted anything.
    pub fn finish(self) -> Option<api::ContainerAdjustment> {
        self.touched.then_some(self.adjust)
    }

    fn claim(&mut self, plugin: &str, what: String) -> Result<(), EventError> {
        match self.owners.get(&what) {
            Some(first) if first != plugin => Err(EventError::Conflict {
                first: first.clone(),
                second: plugin.to_owned(),
                what,
            }),
            Some(_) => Ok(()),
            None => {
                self.owners.insert(what, plugin.to_owned());
                Ok(())
            }
        }
    }

    /// Adds `plugin`'s adjustment.
    pub fn apply(&mut self, plugin: &str, a: api::ContainerAdjustment) -> Result<(), EventError> {
        if a == api::ContainerAdjustment::default() {
            return Ok(());
        }
        self.touched = true;
        for (k, v) in a.annotations {
            let name = key(&k).to_owned();
            self.claim(plugin, format!("annotation {name}"))?;
            self.adjust.annotations.retain(|old, _| key(old) != name);
            self.container.annotations.remove(&name);
            if !k.starts_with('-') {
                self.container.annotations.insert(name, v.clone());
            }
            self.adjust.annotations.insert(k, v);
        }
        for m in a.mounts {
            let dest = key(&m.destination).to_owned();
            self.claim(plugin, format!("mount {dest}"))?;
            self.adjust
                .mounts
                .retain(|old| key(&old.destination) != dest);
            self.container.mounts.retain(|old| old.destination != dest);
            if !m.destination.starts_with('-') {
                self.container.mounts.push(m.clone());
            }
            self.adjust.mounts.push(m);
        }
        for e in a.env {
            let name = key(&e.key).to_owned();
            self.claim(plugin, format!("environment variable {name}"))?;
            self.adjust.env.retain(|old| key(&old.key) != name);
            let prefix = format!("{name}=");
            self.container
                .env
                .retain(|old| !old.starts_with(&prefix) && old != &name);
            if !e.key.starts_with('-') {
                self.container.env.push(format!("{name}={}", e.value));
            }
            self.adjust.env.push(e);
        }
        if let Some(hooks) = a.hooks {
            let mine = self.adjust.hooks.get_or_insert_with(Default::default);
            mine.prestart.extend(hooks.prestart);
            mine.create_runtime.extend(hooks.create_runtime);
            mine.create_container.extend(hooks.create_container);
            mine.start_container.extend(hooks.start_container);
            mine.poststart.extend(hooks.poststart);
            mine.poststop.extend(hooks.poststop);
        }
        for r in a.rlimits {
            self.claim(plugin, format!("rlimit {}", r.r#type))?;
            self.adjust.rlimits.retain(|old| old.r#type != r.r#type);
            self.adjust.rlimits.push(r);
        }
        for d in a.cdi_devices {
            self.claim(plugin, format!("CDI device {}", d.name))?;
            self.adjust.cdi_devices.push(d);
        }
        if !a.args.is_empty() {
            // A leading "" takes the arguments over from whoever set them (NRI's
            // UpdateArgs); otherwise they belong to the first plugin to set them.
            match a.args.split_first() {
                Some((first, rest)) if first.is_empty() => {
                    self.owners.insert("args".into(), plugin.to_owned());
                    self.container.args = rest.to_vec();
                }
                _ => {
                    self.claim(plugin, "args".into())?;
                    self.container.args = a.args.clone();
                }
            }
            self.adjust.args = a.args;
        }
        if let Some(linux) = a.linux {
            self.linux(plugin, linux)?;
        }
        Ok(())
    }

    fn linux(&mut self, plugin: &str, l: api::LinuxContainerAdjustment) -> Result<(), EventError> {
        let mut mine = self.adjust.linux.take().unwrap_or_default();
        let result = self.linux_into(plugin, l, &mut mine);
        self.adjust.linux = Some(mine);
        result
    }

    fn linux_into(
        &mut self,
        plugin: &str,
        l: api::LinuxContainerAdjustment,
        mine: &mut api::LinuxContainerAdjustment,
    ) -> Result<(), EventError> {
        for d in l.devices {
            let path = key(&d.path).to_owned();
            self.claim(plugin, format!("device {path}"))?;
            mine.devices.retain(|old| key(&old.path) != path);
            mine.devices.push(d);
        }
        if let Some(r) = l.resources {
            let into = mine.resources.get_or_insert_with(Default::default);
            self.resources(plugin, r, into)?;
        }
        if !l.cgroups_path.is_empty() {
            self.claim(plugin, "cgroups path".into())?;
            mine.cgroups_path = l.cgroups_path;
        }
        macro_rules! single {
            ($($field:ident: $what:literal),*) => {$(
                if l.$field.is_some() {
                    self.claim(plugin, $what.into())?;
                    mine.$field = l.$field;
                }
            )*};
        }
        single!(
            oom_score_adj: "OOM score adjustment",
            io_priority: "I/O priority",
            seccomp_policy: "seccomp policy",
            scheduler: "scheduler",
            rdt: "RDT",
            memory_policy: "memory policy"
        );
        for n in l.namespaces {
            let kind = key(&n.r#type).to_owned();
            self.claim(plugin, format!("{kind} namespace"))?;
            mine.namespaces.retain(|old| key(&old.r#type) != kind);
            mine.namespaces.push(n);
        }
        for (k, v) in l.sysctl {
            self.claim(plugin, format!("sysctl {}", key(&k)))?;
            mine.sysctl.insert(k, v);
        }
        for (k, v) in l.net_devices {
            self.claim(plugin, format!("network device {}", key(&k)))?;
            mine.net_devices.insert(k, v);
        }
        Ok(())
    }

    fn resources(
        &mut self,
        plugin: &str,
        r: api::LinuxResources,
        into: &mut api::LinuxResources,
    ) -> Result<(), EventError> {
        macro_rules! fields {
            ($src:expr, $dst:expr, $prefix:literal: $($field:ident),*) => {$(
                if $src.$field.is_some() {
                    self.claim(plugin, format!("{} {}", $prefix, stringify!($field)))?;
                    $dst.$field = $src.$field;
                }
            )*};
        }
        if let Some(m) = r.memory {
            let dst = into.memory.get_or_insert_with(Default::default);
            fields!(m, dst, "memory": limit, reservation, swap, kernel, kernel_tcp, swappiness, disable_oom_killer, use_hierarchy);
        }
        if let Some(c) = r.cpu {
            let dst = into.cpu.get_or_insert_with(Default::default);
            fields!(c, dst, "cpu": shares, quota, period, realtime_runtime, realtime_period);
            if !c.cpus.is_empty() {
                self.claim(plugin, "cpu cpus".into())?;
                dst.cpus = c.cpus;
            }
            if !c.mems.is_empty() {
                self.claim(plugin, "cpu mems".into())?;
                dst.mems = c.mems;
            }
        }
        fields!(r, into, "resources": blockio_class, rdt_class, pids);
        for h in r.hugepage_limits {
            self.claim(plugin, format!("hugepage limit {}", h.page_size))?;
            into.hugepage_limits
                .retain(|old| old.page_size != h.page_size);
            into.hugepage_limits.push(h);
        }
        for (k, v) in r.unified {
            self.claim(plugin, format!("unified cgroup setting {k}"))?;
            into.unified.insert(k, v);
        }
        into.devices.extend(r.devices);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str, v: &str) -> api::KeyValue {
        api::KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn later_plugins_see_earlier_adjustments_and_conflicts_are_refused() {
        let container = api::Container {
            env: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        };
        let mut merged = Merged::new(container);
        merged
            .apply(
                "00-one",
                api::ContainerAdjustment {
                    env: vec![env("A", "one"), env("-B", "")],
                    ..Default::default()
                },
            )
            .expect("first");
        assert_eq!(merged.container().env, ["A=one"]);
        // Another variable and a memory limit from the second plugin: fine.
        merged
            .apply(
                "10-two",
                api::ContainerAdjustment {
                    env: vec![env("C", "two")],
                    linux: Some(api::LinuxContainerAdjustment {
                        resources: Some(api::LinuxResources {
                            memory: Some(api::LinuxMemory {
                                limit: Some(api::OptionalInt64 { value: 1 << 30 }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .expect("second");
        // The second plugin again on A, which the first set: refused, naming both.
        let err = merged
            .apply(
                "10-two",
                api::ContainerAdjustment {
                    env: vec![env("A", "two")],
                    ..Default::default()
                },
            )
            .expect_err("conflict");
        assert_eq!(
            err.to_string(),
            "NRI plugins 00-one and 10-two both tried to set environment variable A"
        );
        let adjust = merged.finish().expect("adjusted");
        let keys: Vec<&str> = adjust.env.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["A", "-B", "C"]);
    }

    #[test]
    fn hooks_add_up_and_nothing_adjusted_is_none() {
        let mut merged = Merged::new(api::Container::default());
        merged
            .apply("00-a", api::ContainerAdjustment::default())
            .expect("empty");
        assert!(Merged::new(api::Container::default()).finish().is_none());
        for plugin in ["00-a", "01-b"] {
            merged
                .apply(
                    plugin,
                    api::ContainerAdjustment {
                        hooks: Some(api::Hooks {
                            prestart: vec![api::Hook {
                                path: format!("/bin/{plugin}"),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
                .expect("hooks never conflict");
        }
        let adjust = merged.finish().expect("adjusted");
        assert_eq!(adjust.hooks.expect("hooks").prestart.len(), 2);
    }
}
