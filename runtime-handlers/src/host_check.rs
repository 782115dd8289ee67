//! What the `oci` handler needs of the host, for `crispd check`: cgroup controllers and
//! namespaces.

use std::path::Path;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckLevel {
    /// Works.
    Ok,
    /// Works, with a limitation.
    Warn,
    /// Pods cannot run.
    Fail,
}

/// One finding about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCheck {
    /// Pass, limitation or failure.
    pub level: CheckLevel,
    /// What was checked.
    pub subject: &'static str,
    /// What was found.
    pub message: String,
}

fn check(level: CheckLevel, subject: &'static str, message: impl Into<String>) -> HostCheck {
    HostCheck {
        level,
        subject,
        message: message.into(),
    }
}

/// The cgroup and namespace checks of a host whose containers run on its own kernel.
pub fn host_kernel_checks() -> Vec<HostCheck> {
    vec![cgroups(), namespaces()]
}

fn cgroups() -> HostCheck {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let layout = if unified {
        "v2 (unified)"
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        "v1 with a v2 mount (hybrid)"
    } else {
        "v1"
    };
    let enabled = match enabled_controllers(unified) {
        Ok(list) => list,
        Err(e) => {
            return check(
                CheckLevel::Fail,
                "cgroups",
                format!("cannot read controllers: {e}"),
            );
        }
    };
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        check(
            CheckLevel::Ok,
            "cgroups",
            format!("{layout}; controllers: {}", enabled.join(" ")),
        )
    } else {
        check(
            CheckLevel::Fail,
            "cgroups",
            format!(
                "{layout}; controllers {} are not enabled",
                missing.join(", ")
            ),
        )
    }
}

fn enabled_controllers(unified: bool) -> std::io::Result<Vec<String>> {
    if unified {
        let text = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")?;
        return Ok(text.split_whitespace().map(str::to_owned).collect());
    }
    // /proc/cgroups: name, hierarchy, num_cgroups, enabled.
    let text = std::fs::read_to_string("/proc/cgroups")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 4 && cols[3] == "1").then(|| cols[0].to_owned())
        })
        .collect())
}

fn namespaces() -> HostCheck {
    let wanted = ["mnt", "uts", "ipc", "pid", "net", "cgroup", "user"];
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        check(CheckLevel::Ok, "namespaces", wanted.join(" "))
    } else if missing == ["user"] {
        check(
            CheckLevel::Warn,
            "namespaces",
            "no user namespaces: pods asking for them will fail",
        )
    } else {
        check(
            CheckLevel::Fail,
            "namespaces",
            format!("kernel lacks {}", missing.join(", ")),
        )
    }
}
