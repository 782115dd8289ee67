//! What PID 1 does before it serves: the guest's file systems, the kernel modules the
//! initramfs carries (listed in load order in `/lib/modules/load`), the loopback
//! interface and the shared directory.

use std::ffi::CString;
use std::os::fd::AsRawFd;

/// Mounts one file system, reporting (not failing on) an error: a guest that comes up
/// without, say, cgroups still answers the host, which then reports what is missing.
fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f), Ok(d)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
        CString::new(data),
    ) else {
        return;
    };
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if r != 0 {
        eprintln!(
            "crisp-agent: mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Loads one module from its file.
fn load_module(path: &str) -> bool {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crisp-agent: module {path}: {e}");
            return false;
        }
    };
    let params = c"";
    // SAFETY: finit_module reads the open descriptor and the NUL-terminated params.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            eprintln!("crisp-agent: module {path}: {e}");
            return false;
        }
    }
    true
}

/// `/sbin/modprobe [-q] [--] NAME`, as the kernel runs it when something needs a module
/// (request_module): loads one the image carries for loading on demand, named by its
/// name or an alias, after the modules it needs. Returns the exit code.
pub fn modprobe(args: &[String]) -> i32 {
    let Some(wanted) = args.iter().skip(1).find(|a| !a.starts_with('-')) else {
        eprintln!("modprobe: no module named");
        return 1;
    };
    let wanted = wanted.replace('-', "_");
    let list = std::fs::read_to_string("/lib/modules/on-demand").unwrap_or_default();
    // A line is the module's name and aliases, a tab, then its files in load order
    // (aliases may hold colons: `devname:net/tun`).
    for line in list.lines() {
        let Some((names, files)) = line.split_once('\t') else {
            continue;
        };
        if names
            .split_whitespace()
            .any(|n| n.replace('-', "_") == wanted)
        {
            let loaded = files.split_whitespace().all(load_module);
            return if loaded { 0 } else { 1 };
        }
    }
    eprintln!("modprobe: module {wanted} is not in the guest image");
    1
}

/// Brings the guest up; PID 1 only.
pub fn bring_up() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid_nodev_noexec, "");
    mount("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "",
    );
    mount(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    );
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    );
    mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev_noexec,
        "",
    );
    if let Ok(list) = std::fs::read_to_string("/lib/modules/load") {
        for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = load_module(path);
        }
    }
    // Set-user-ID programs of the images work, as under runc (a process without
    // no_new_privs may gain the privileges the image grants); device nodes do not.
    mount("crisp", crate::SHARED, "virtiofs", libc::MS_NODEV, "");
    let _ = std::process::Command::new("/bin/busybox")
        .args(["ip", "link", "set", "lo", "up"])
        .status();
}

/// Ends the VM (PID 1 cannot exit).
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
