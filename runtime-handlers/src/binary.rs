//! Finding a handler's binary: an absolute path as given, a bare name in `PATH`.

use std::path::{Path, PathBuf};

/// The per-container monitor (and pod PID-namespace init) of the `oci` handler.
pub const MONITOR: &str = "crisp-monitor";
/// The `oci` handler's ExecSync helper.
pub const ENTER: &str = "crisp-enter";

/// One of crisp's helper executables: beside the running binary (crispd), else on PATH.
pub fn helper_binary(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    beside
        .or_else(|| resolve_binary(Path::new(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The executable `path` names: itself when it holds a `/`, else the first match in `PATH`
/// (falling back to the sbin directories, which a root daemon's PATH may lack).
pub fn resolve_binary(path: &Path) -> Option<PathBuf> {
    if path.as_os_str().is_empty() {
        return None;
    }
    if path.components().count() > 1 || path.is_absolute() {
        return is_executable(path).then(|| path.to_owned());
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(path))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shell_by_name_and_rejects_missing() {
        assert!(resolve_binary(Path::new("sh")).is_some());
        assert!(resolve_binary(Path::new("/bin/sh")).is_some());
        assert_eq!(resolve_binary(Path::new("no-such-runtime-xyz")), None);
        assert_eq!(resolve_binary(Path::new("/nonexistent/runc")), None);
        assert_eq!(resolve_binary(Path::new("")), None);
    }
}
