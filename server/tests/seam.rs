//! The handler seam, held by a test: `server` keeps what every handler needs (the pod
//! netns and CNI, the rootfs, the pod's files) and leaves how containers run to the
//! runtime handlers. It reads nothing from /proc, cgroupfs, bundle exit files or monitor
//! sockets, and enters no namespace itself; a VM-per-pod handler answers those from its
//! guest.

use std::path::Path;

/// Code that reaches into a host process's or runtime's state.
const FORBIDDEN: &[&str] = &[
    "format!(\"/proc/",
    "\"/proc/self",
    "\"/proc/thread-self",
    "read_dir(\"/proc\"",
    "format!(\"/sys/fs/cgroup",
    "\"/sys/fs/cgroup/",
    "join(\"exit\")",
    "attach::connect",
    "libc::setns",
    "runtime_handlers::cgroup_stats",
    "runtime_handlers::remove_empty_cgroup",
    "crisp-monitor",
];

fn visit(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            visit(&path, found);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for pattern in FORBIDDEN {
                if code.contains(pattern) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
}

#[test]
fn server_leaves_processes_cgroups_and_monitors_to_the_handlers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    visit(&src, &mut found);
    assert!(
        found.is_empty(),
        "server reaches behind the handler seam:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let dir = std::env::temp_dir().join(format!("crisp-seam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("x.rs"),
        "fn f(pid: u32) { let _ = std::fs::read(format!(\"/proc/{pid}/stat\")); } // \"/proc/self\"\n",
    )
    .expect("write");
    let mut found = Vec::new();
    visit(&dir, &mut found);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
}

/// Where a `tonic::Status` may be built: the one module that maps domain errors, the
/// CRI layer's request checks, and the deadline layer around every call.
const STATUS_ALLOWED: &[&str] = &["errors.rs", "cri/", "daemon/deadline.rs"];

#[test]
fn statuses_are_built_in_one_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        if STATUS_ALLOWED.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            // A constructor: `Status::` then a lower-case name (zlib's Status::Ok is not).
            let builds = code.match_indices("Status::").any(|(at, _)| {
                code[at + 8..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase())
            });
            if builds {
                found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "gRPC statuses built outside errors.rs and the CRI layer:\n{}",
        found.join("\n")
    );
}
