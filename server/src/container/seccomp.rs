//! Seccomp for a container: `RuntimeDefault` (crisp's built-in profile), `Localhost`
//! (a profile file on the node) or `Unconfined`, from the CRI's SecurityProfile or the
//! deprecated `seccomp_profile_path` strings.

use crate::errors::LifecycleError;
use cri_proto::v1 as cri;
use serde_json::{Value, json};

/// Syscalls the default profile refuses with EPERM, each with the capability that lifts
/// the refusal (as in Docker's and containerd's default profiles): kernel modules and
/// kexec, clock and swap control, keyrings, BPF and perf, handle-based opens, mounts and
/// namespace changes, and obsolete calls. Everything else is allowed.
const DENIED: &[(&str, Option<&str>)] = &[
    ("acct", Some("CAP_SYS_PACCT")),
    ("add_key", None),
    ("bpf", Some("CAP_SYS_ADMIN")),
    ("clock_adjtime", Some("CAP_SYS_TIME")),
    ("clock_settime", Some("CAP_SYS_TIME")),
    ("create_module", Some("CAP_SYS_MODULE")),
    ("delete_module", Some("CAP_SYS_MODULE")),
    ("finit_module", Some("CAP_SYS_MODULE")),
    ("fsconfig", Some("CAP_SYS_ADMIN")),
    ("fsmount", Some("CAP_SYS_ADMIN")),
    ("fsopen", Some("CAP_SYS_ADMIN")),
    ("fspick", Some("CAP_SYS_ADMIN")),
    ("get_kernel_syms", Some("CAP_SYS_MODULE")),
    ("get_mempolicy", Some("CAP_SYS_NICE")),
    ("init_module", Some("CAP_SYS_MODULE")),
    ("ioperm", Some("CAP_SYS_RAWIO")),
    ("iopl", Some("CAP_SYS_RAWIO")),
    ("kcmp", Some("CAP_SYS_PTRACE")),
    ("kexec_file_load", Some("CAP_SYS_BOOT")),
    ("kexec_load", Some("CAP_SYS_BOOT")),
    ("keyctl", None),
    ("lookup_dcookie", Some("CAP_SYS_ADMIN")),
    ("mbind", Some("CAP_SYS_NICE")),
    ("mount", Some("CAP_SYS_ADMIN")),
    ("move_mount", Some("CAP_SYS_ADMIN")),
    ("move_pages", Some("CAP_SYS_NICE")),
    ("name_to_handle_at", Some("CAP_SYS_ADMIN")),
    ("nfsservctl", None),
    ("open_by_handle_at", Some("CAP_DAC_READ_SEARCH")),
    ("open_tree", Some("CAP_SYS_ADMIN")),
    ("perf_event_open", Some("CAP_SYS_ADMIN")),
    ("pivot_root", Some("CAP_SYS_ADMIN")),
    ("process_vm_readv", Some("CAP_SYS_PTRACE")),
    ("process_vm_writev", Some("CAP_SYS_PTRACE")),
    ("query_module", Some("CAP_SYS_MODULE")),
    ("quotactl", Some("CAP_SYS_ADMIN")),
    ("reboot", Some("CAP_SYS_BOOT")),
    ("request_key", None),
    ("set_mempolicy", Some("CAP_SYS_NICE")),
    ("setns", Some("CAP_SYS_ADMIN")),
    ("settimeofday", Some("CAP_SYS_TIME")),
    ("stime", Some("CAP_SYS_TIME")),
    ("swapoff", Some("CAP_SYS_ADMIN")),
    ("swapon", Some("CAP_SYS_ADMIN")),
    ("syslog", Some("CAP_SYSLOG")),
    ("_sysctl", None),
    ("umount", Some("CAP_SYS_ADMIN")),
    ("umount2", Some("CAP_SYS_ADMIN")),
    ("unshare", Some("CAP_SYS_ADMIN")),
    ("uselib", None),
    ("userfaultfd", None),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// crisp's RuntimeDefault profile in OCI form, for a container with `caps`.
fn runtime_default(caps: &[String]) -> Value {
    let denied: Vec<&str> = DENIED
        .iter()
        .filter(|(_, cap)| cap.is_none_or(|c| !caps.iter().any(|have| have == c)))
        .map(|(name, _)| *name)
        .collect();
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })
}

/// The seccomp section of the spec, `None` for unconfined.
pub fn profile(
    security: &cri::LinuxContainerSecurityContext,
    caps: &[String],
) -> Result<Option<Value>, LifecycleError> {
    #[allow(deprecated)]
    let legacy = security.seccomp_profile_path.as_str();
    let (kind, localhost) = match &security.seccomp {
        Some(p) => match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::Localhost) => {
                ("localhost", p.localhost_ref.clone())
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => ("unconfined", String::new()),
            _ => ("default", String::new()),
        },
        None => match legacy {
            "" | "unconfined" => ("unconfined", String::new()),
            "runtime/default" | "docker/default" => ("default", String::new()),
            other => match other.strip_prefix("localhost/") {
                Some(path) => ("localhost", path.to_owned()),
                None => {
                    return Err(LifecycleError::invalid(format!(
                        "unknown seccomp profile `{other}`"
                    )));
                }
            },
        },
    };
    match kind {
        // Privileged containers run unconfined, as under containerd and CRI-O.
        _ if security.privileged => Ok(None),
        "unconfined" => Ok(None),
        "default" => Ok(Some(runtime_default(caps))),
        _ => localhost_profile(&localhost).map(Some),
    }
}

fn localhost_profile(path: &str) -> Result<Value, LifecycleError> {
    if !path.starts_with('/') {
        return Err(LifecycleError::invalid(format!(
            "seccomp localhost profile `{path}` must be an absolute path on the node"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| LifecycleError::invalid(format!("cannot read seccomp profile {path}: {e}")))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| LifecycleError::invalid(format!("seccomp profile {path} is not JSON: {e}")))?;
    // Docker's format is OCI's plus keys runtimes ignore; keep what OCI knows.
    let mut oci = serde_json::Map::new();
    for key in [
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "flags",
        "listenerPath",
        "listenerMetadata",
        "syscalls",
    ] {
        if let Some(v) = value.get(key) {
            oci.insert(key.to_owned(), v.clone());
        }
    }
    let oci = Value::Object(oci);
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(oci.clone()).map_err(|e| {
        LifecycleError::invalid(format!(
            "seccomp profile {path} is not a valid profile: {e}"
        ))
    })?;
    Ok(oci)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_for_crisp_enter() {
        // Otherwise every RuntimeDefault ExecSync would quietly take the slow path.
        for caps in [Vec::new(), vec!["CAP_SYS_ADMIN".to_owned()]] {
            let profile: oci_spec::runtime::LinuxSeccomp =
                serde_json::from_value(runtime_default(&caps)).expect("OCI profile");
            runtime_handlers::seccomp::compile(&profile).expect("compiles");
        }
    }

    fn ctx(
        kind: cri::security_profile::ProfileType,
        localhost: &str,
    ) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: kind.into(),
                localhost_ref: localhost.to_owned(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn profiles_by_kind() {
        use cri::security_profile::ProfileType as P;
        assert!(
            profile(&ctx(P::RuntimeDefault, ""), &[])
                .expect("ok")
                .is_some()
        );
        assert!(profile(&ctx(P::Unconfined, ""), &[]).expect("ok").is_none());
        assert!(
            profile(&cri::LinuxContainerSecurityContext::default(), &[])
                .expect("ok")
                .is_none()
        );
        let mut privileged = ctx(P::RuntimeDefault, "");
        privileged.privileged = true;
        assert!(profile(&privileged, &[]).expect("ok").is_none());
        assert!(profile(&ctx(P::Localhost, "relative.json"), &[]).is_err());
        assert!(profile(&ctx(P::Localhost, "/nonexistent/profile.json"), &[]).is_err());
    }

    #[test]
    fn the_default_profile_is_a_valid_oci_profile_and_follows_capabilities() {
        let plain = runtime_default(&[]);
        serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(plain.clone()).expect("valid");
        let names = |v: &Value| {
            v["syscalls"][0]["names"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
        };
        assert!(plain.to_string().contains("\"mount\""));
        let admin = runtime_default(&["CAP_SYS_ADMIN".to_owned()]);
        assert!(
            !admin.to_string().contains("\"mount\""),
            "CAP_SYS_ADMIN lifts mount"
        );
        assert!(names(&admin) < names(&plain));
    }
}
