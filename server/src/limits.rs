//! Request limits checked before anything is made: what Kubernetes itself allows, what
//! the kernel takes, and paths that must stay where they belong. Each refusal is
//! InvalidArgument naming the field.

use std::path::{Component, Path, PathBuf};

use crate::errors::LifecycleError;

/// Longest pod or container name, UID and attempt key part (a DNS subdomain).
pub const MAX_NAME: usize = 253;
/// Longest namespace (a DNS label).
pub const MAX_NAMESPACE: usize = 63;
/// Most port mappings one pod may ask for (each becomes CNI portmap rules).
pub const MAX_PORT_MAPPINGS: usize = 1024;
/// Longest single argument the kernel passes to a new program (MAX_ARG_STRLEN).
pub const MAX_ARG_STRLEN: usize = 128 * 1024;
/// Most bytes of arguments an exec may carry (a quarter of a default 8 MiB stack, the
/// kernel's ARG_MAX, less room for the environment).
pub const MAX_ARGV_BYTES: usize = 1024 * 1024;

/// `value` of `field` is at most `max` bytes.
pub fn length(field: &str, value: &str, max: usize) -> Result<(), LifecycleError> {
    if value.len() > max {
        return Err(LifecycleError::invalid(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    Ok(())
}

/// A command line the kernel can start: no argument past MAX_ARG_STRLEN, no more than
/// MAX_ARGV_BYTES in all.
pub fn argv(field: &str, args: &[String]) -> Result<(), LifecycleError> {
    if let Some((n, long)) = args
        .iter()
        .enumerate()
        .find(|(_, a)| a.len() >= MAX_ARG_STRLEN)
    {
        return Err(LifecycleError::invalid(format!(
            "{field}[{n}] is {} bytes long; the kernel takes at most {} per argument",
            long.len(),
            MAX_ARG_STRLEN - 1
        )));
    }
    let total: usize = args.iter().map(|a| a.len() + 1).sum();
    if total > MAX_ARGV_BYTES {
        return Err(LifecycleError::invalid(format!(
            "{field} is {total} bytes in all; at most {MAX_ARGV_BYTES} are allowed"
        )));
    }
    Ok(())
}

/// The container's log file: `log_path` inside the pod's `log_directory`. Unlike
/// `Path::join`, an absolute `log_path` does not replace the directory, and one that
/// climbs out of it with `..` is refused (containerd's `filepath.Join` keeps both inside
/// too).
pub fn log_file(log_directory: &str, log_path: &str) -> Result<PathBuf, LifecycleError> {
    let refuse = |why: &str| {
        LifecycleError::invalid(format!(
            "config.log_path `{log_path}` {why}; it must be a relative path inside the pod's log_directory"
        ))
    };
    let relative = Path::new(log_path);
    if relative.is_absolute() {
        return Err(refuse("is absolute"));
    }
    let mut inside = PathBuf::new();
    for part in relative.components() {
        match part {
            Component::Normal(p) => inside.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !inside.pop() {
                    return Err(refuse("climbs out of the log directory"));
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is absolute")),
        }
    }
    if inside.as_os_str().is_empty() {
        return Err(refuse("names no file"));
    }
    Ok(Path::new(log_directory).join(inside))
}

/// A mount target the container's own filesystems own: its root, `/proc` and `/sys`.
pub fn mount_target(field: &str, container_path: &str) -> Result<(), LifecycleError> {
    let normal: PathBuf = Path::new(container_path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if ["/", "/proc", "/sys"]
        .iter()
        .any(|p| normal == Path::new(p))
    {
        return Err(LifecycleError::invalid(format!(
            "{field} `{container_path}` would cover the container's own {}; mount below it instead",
            normal.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_in_the_log_directory() {
        let ok = |p: &str| log_file("/var/log/pods/x", p).expect("inside");
        assert_eq!(ok("c/0.log"), Path::new("/var/log/pods/x/c/0.log"));
        assert_eq!(ok("c/../d.log"), Path::new("/var/log/pods/x/d.log"));
        for bad in ["/etc/passwd", "../x", "c/../../etc/shadow", "", "."] {
            assert!(log_file("/var/log/pods/x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn argv_and_names_are_bounded() {
        assert!(argv("cmd", &["echo".into(), "x".repeat(MAX_ARG_STRLEN - 1)]).is_ok());
        assert!(argv("cmd", &["x".repeat(MAX_ARG_STRLEN)]).is_err());
        assert!(argv("cmd", &vec!["x".repeat(1000); 1100]).is_err());
        assert!(length("name", &"x".repeat(MAX_NAME), MAX_NAME).is_ok());
        assert!(length("name", &"x".repeat(MAX_NAME + 1), MAX_NAME).is_err());
    }

    #[test]
    fn the_root_proc_and_sys_are_not_mount_targets() {
        for bad in ["/", "/proc", "/sys/", "/./proc"] {
            assert!(
                mount_target("mounts[0].container_path", bad).is_err(),
                "{bad}"
            );
        }
        for ok in ["/data", "/proc-like", "/sys/fs/x", "/var"] {
            assert!(mount_target("mounts[0].container_path", ok).is_ok(), "{ok}");
        }
    }
}
