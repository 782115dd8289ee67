//! A container's mounts, turned into system calls prepared before `fork`, so the child
//! only makes the calls (no allocation between fork and exec).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use agent_proto::Mount;

/// One step of a container's setup, with every string ready.
#[derive(Debug)]
pub enum Step {
    /// `mkdir` (an existing directory is fine).
    Mkdir(CString),
    /// Creates an empty file to bind a file onto.
    Touch(CString),
    /// `mount(source, target, fstype, flags, data)`; `optional` ones may fail.
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: CString,
        optional: bool,
    },
    /// Remounts a bind mount with these flags (read-only, nosuid...).
    Remount(CString, libc::c_ulong),
    /// A character device node.
    Node(CString, u32, u32),
    /// A symbolic link `path -> target`.
    Symlink(CString, CString),
}

fn c(s: impl AsRef<[u8]>) -> Result<CString, String> {
    CString::new(s.as_ref().to_vec()).map_err(|_| "a path holds a NUL byte".to_owned())
}

fn cpath(p: &Path) -> Result<CString, String> {
    c(p.as_os_str().as_encoded_bytes())
}

/// `dest` under `root`, refusing `..`.
pub fn under(root: &Path, dest: &str) -> Result<PathBuf, String> {
    let rel = Path::new(dest.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("mount destination {dest:?} leaves the container"));
    }
    Ok(root.join(rel))
}

/// `dest` inside the container whose root is `root`, with the image's symbolic links
/// followed as the container would see them (`/var/run -> /run` lands in its `/run`,
/// never in the agent's): each link is resolved against `root`, `..` stops at it.
pub fn in_root(root: &Path, dest: &str) -> Result<PathBuf, String> {
    let mut pending: Vec<std::ffi::OsString> = Path::new(dest)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            at.pop();
            continue;
        }
        let mut path = root.to_path_buf();
        path.extend(&at);
        path.push(&part);
        match std::fs::read_link(&path) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("too many symbolic links under {dest:?}"));
                }
                if target.is_absolute() {
                    at.clear();
                }
                for c in target.components().rev() {
                    match c {
                        std::path::Component::Normal(p) => pending.push(p.to_owned()),
                        std::path::Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => at.push(part),
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&at);
    Ok(path)
}

/// Every directory from `root` (exclusive) down to `path` (inclusive), as mkdir steps.
fn mkdir_all(root: &Path, path: &Path, steps: &mut Vec<Step>) -> Result<(), String> {
    let mut at = root.to_path_buf();
    if let Ok(rel) = path.strip_prefix(root) {
        for part in rel.components() {
            at.push(part);
            steps.push(Step::Mkdir(cpath(&at)?));
        }
    }
    Ok(())
}

/// Flags and data from OCI-style mount options.
fn options(opts: &[String]) -> (libc::c_ulong, bool, bool, String) {
    let mut flags: libc::c_ulong = 0;
    let mut read_only = false;
    let mut recursive = false;
    let mut data = Vec::new();
    for o in opts {
        match o.as_str() {
            "ro" => read_only = true,
            "rw" | "suid" | "dev" | "exec" | "private" | "rprivate" | "slave" | "rslave"
            | "shared" | "rshared" | "bind" => {}
            "rbind" => recursive = true,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            other => data.push(other.to_owned()),
        }
    }
    (flags, read_only, recursive, data.join(","))
}

/// The steps that mount `mounts` into the container whose root is at `rootfs` (as the
/// agent sees it), with the shared directory at `shared`.
pub fn plan(rootfs: &Path, shared: &Path, mounts: &[Mount]) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for m in mounts {
        let target = in_root(rootfs, &m.destination)?;
        let (flags, read_only, recursive, data) = options(&m.options);
        match m.r#type.as_str() {
            "bind" => {
                let source = under(shared, &m.source)?;
                let is_file = std::fs::metadata(&source)
                    .map_err(|e| format!("mount source {}: {e}", m.source))?
                    .is_file();
                if is_file {
                    if let Some(parent) = target.parent() {
                        mkdir_all(rootfs, parent, &mut steps)?;
                    }
                    steps.push(Step::Touch(cpath(&target)?));
                } else {
                    mkdir_all(rootfs, &target, &mut steps)?;
                }
                let rec = if recursive { libc::MS_REC } else { 0 };
                steps.push(Step::Mount {
                    source: cpath(&source)?,
                    target: cpath(&target)?,
                    fstype: c("")?,
                    flags: libc::MS_BIND | rec,
                    data: c("")?,
                    optional: false,
                });
                if read_only || flags != 0 {
                    let ro = if read_only { libc::MS_RDONLY } else { 0 };
                    steps.push(Step::Remount(cpath(&target)?, flags | ro));
                }
            }
            "cgroup" | "cgroup2" => {
                // The guest has one cgroup2 hierarchy. Mounted from inside the
                // container's cgroup namespace, it shows the container's own cgroup as
                // its root, as under runc.
                mkdir_all(rootfs, &target, &mut steps)?;
                let ro = if read_only { libc::MS_RDONLY } else { 0 };
                steps.push(Step::Mount {
                    source: c("cgroup2")?,
                    target: cpath(&target)?,
                    fstype: c("cgroup2")?,
                    flags: flags | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | ro,
                    data: c("")?,
                    optional: true,
                });
            }
            fstype => {
                mkdir_all(rootfs, &target, &mut steps)?;
                let ro = if read_only { libc::MS_RDONLY } else { 0 };
                steps.push(Step::Mount {
                    source: c(if m.source.is_empty() {
                        fstype
                    } else {
                        &m.source
                    })?,
                    target: cpath(&target)?,
                    fstype: c(fstype)?,
                    flags: flags | ro,
                    data: c(&data)?,
                    optional: fstype == "mqueue",
                });
                if m.destination.trim_end_matches('/') == "/dev" {
                    devices(&target, &mut steps)?;
                }
            }
        }
    }
    Ok(steps)
}

/// The standard device nodes and links of a fresh `/dev`.
fn devices(dev: &Path, steps: &mut Vec<Step>) -> Result<(), String> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        steps.push(Step::Node(cpath(&dev.join(name))?, major, minor));
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        steps.push(Step::Symlink(cpath(&dev.join(name))?, c(target)?));
    }
    Ok(())
}

/// Runs `steps`; between fork and exec, so it only makes system calls.
pub fn run(steps: &[Step]) -> std::io::Result<()> {
    for step in steps {
        // SAFETY: every pointer is a NUL-terminated string owned by `steps`, which
        // outlives the calls.
        unsafe {
            match step {
                Step::Mkdir(p) => {
                    if libc::mkdir(p.as_ptr(), 0o755) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Step::Touch(p) => {
                    let fd = libc::open(
                        p.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
                Step::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                    optional,
                } => {
                    let r = libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        fstype.as_ptr(),
                        *flags,
                        data.as_ptr().cast(),
                    );
                    if r != 0 && !optional {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Step::Remount(p, flags) => {
                    let r = libc::mount(
                        std::ptr::null(),
                        p.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | flags,
                        std::ptr::null(),
                    );
                    if r != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Step::Node(p, major, minor) => {
                    libc::mknod(
                        p.as_ptr(),
                        libc::S_IFCHR | 0o666,
                        libc::makedev(*major, *minor),
                    );
                }
                Step::Symlink(p, target) => {
                    libc::symlink(target.as_ptr(), p.as_ptr());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_cannot_leave_the_container() {
        assert!(under(Path::new("/r"), "/../etc").is_err());
        assert_eq!(
            under(Path::new("/r"), "/etc/hosts").ok(),
            Some(PathBuf::from("/r/etc/hosts"))
        );
    }

    #[test]
    fn destinations_follow_the_images_links_inside_its_root() {
        let root = std::env::temp_dir().join(format!("agent-in-root-{}", std::process::id()));
        let _ = std::fs::create_dir_all(root.join("run"));
        let _ = std::fs::create_dir_all(root.join("var"));
        let _ = std::os::unix::fs::symlink("/run", root.join("var/run"));
        let _ = std::os::unix::fs::symlink("../../..", root.join("run/up"));
        assert_eq!(
            in_root(&root, "/var/run/secrets/token").ok(),
            Some(root.join("run/secrets/token"))
        );
        assert_eq!(in_root(&root, "/run/up/etc").ok(), Some(root.join("etc")));
        assert_eq!(in_root(&root, "/../../etc").ok(), Some(root.join("etc")));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["nosuid", "ro", "mode=755", "size=65536k", "rbind"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, ro, rec, data) = options(&opts);
        assert_eq!(flags, libc::MS_NOSUID);
        assert!(ro && rec);
        assert_eq!(data, "mode=755,size=65536k");
    }
}
