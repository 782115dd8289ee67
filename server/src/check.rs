//! `crispd check`: host prerequisites, each reported as ok, warn or FAIL. Any FAIL means
//! crisp cannot run pods here and the command exits non-zero.

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

    // What the handlers need of the host (cgroups, namespaces), once per subject.
    let handlers = crate::handlers::Handlers::build(config);
    let mut seen = std::collections::BTreeSet::new();
    for (_, handler) in handlers.usable() {
        for c in handler.host_checks() {
            if seen.insert(c.subject) {
                let severity = match c.level {
                    runtime_handlers::CheckLevel::Ok => Severity::Ok,
                    runtime_handlers::CheckLevel::Warn => Severity::Warn,
                    runtime_handlers::CheckLevel::Fail => Severity::Fail,
                };
                out.push(finding(severity, c.subject, c.message));
            }
        }
    }
    out
}
