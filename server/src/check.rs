//! `crispd check`: host prerequisites, each reported as ok, warn or FAIL. Any FAIL means
//! crisp cannot run pods here and the command exits non-zero.

use std::path::Path;
use std::process::ExitCode;

use conf::Config;

use crate::cli::Cli;
use crate::host;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Works.
    Ok,
    /// Works, with a limitation.
    Warn,
    /// crisp cannot run pods.
    Fail,
}

/// One finding.
#[derive(Debug)]
pub struct Finding {
    /// Pass, limitation or failure.
    pub severity: Severity,
    /// What was checked.
    pub subject: String,
    /// What was found.
    pub detail: String,
}

fn finding(severity: Severity, subject: impl Into<String>, detail: impl Into<String>) -> Finding {
    Finding {
        severity,
        subject: subject.into(),
        detail: detail.into(),
    }
}

/// Runs every check and prints the report.
pub fn run(cli: &Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let config = cli.load_config()?.config;
    let findings = check(&config);
    for f in &findings {
        let tag = match f.severity {
            Severity::Ok => "ok  ",
            Severity::Warn => "warn",
            Severity::Fail => "FAIL",
        };
        println!("[{tag}] {}: {}", f.subject, f.detail);
    }
    let failed = findings
        .iter()
        .filter(|f| f.severity == Severity::Fail)
        .count();
    if failed == 0 {
        println!("crisp can run on this host");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("crisp cannot run on this host: {failed} check(s) failed");
        Ok(ExitCode::FAILURE)
    }
}

/// Every finding, in a stable order.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    out.push(if euid == 0 {
        finding(Severity::Ok, "privileges", "running as root")
    } else {
        finding(
            Severity::Fail,
            "privileges",
            format!("running as uid {euid}; crispd must run as root"),
        )
    });

    for name in config.runtimes.keys() {
        let subject = format!("runtime handler `{name}`");
        let default = *name == config.default_runtime;
        out.push(match host::runtime_binary(config, name) {
            Ok(path) => finding(Severity::Ok, subject, path.display().to_string()),
            Err(e) if default => finding(
                Severity::Fail,
                subject,
                format!("{e} (it is the default handler)"),
            ),
            Err(e) => finding(
                Severity::Warn,
                subject,
                format!("{e}; pods asking for it will fail"),
            ),
        });
    }

    out.push(match host::network_config(config) {
        Ok(net) => finding(
            Severity::Ok,
            "CNI",
            format!(
                "network `{}` from {} (plugins: {})",
                net.name,
                net.path.display(),
                net.plugin_types().collect::<Vec<_>>().join(", ")
            ),
        ),
        Err(e) => finding(
            Severity::Warn,
            "CNI",
            format!("{e}; only host-network pods can run"),
        ),
    });

    out.push(match storage::probe_overlay(&config.root) {
        Ok(()) => finding(
            Severity::Ok,
            "overlayfs",
            format!("mountable under {}", config.root.display()),
        ),
        Err(e) => finding(Severity::Fail, "overlayfs", e.to_string()),
    });

    out.push(cgroups());
    out.push(namespaces());
    out
}

fn cgroups() -> Finding {
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
            return finding(
                Severity::Fail,
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
        finding(
            Severity::Ok,
            "cgroups",
            format!("{layout}; controllers: {}", enabled.join(" ")),
        )
    } else {
        finding(
            Severity::Fail,
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

fn namespaces() -> Finding {
    let wanted = ["mnt", "uts", "ipc", "pid", "net", "cgroup", "user"];
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        finding(Severity::Ok, "namespaces", wanted.join(" "))
    } else if missing == ["user"] {
        finding(
            Severity::Warn,
            "namespaces",
            "no user namespaces: pods asking for them will fail",
        )
    } else {
        finding(
            Severity::Fail,
            "namespaces",
            format!("kernel lacks {}", missing.join(", ")),
        )
    }
}
