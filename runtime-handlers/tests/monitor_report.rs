//! How crisp-monitor reports to its caller: on its stdout (a socket crispd reads to its
//! end), or, for a crispd from before that, on fd 3. Each report ends with the channel
//! closed, so a reader never waits on a monitor that has nothing more to say.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

fn monitor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crisp-monitor"))
}

/// Everything read from `ours` until the monitor closes its end.
fn report(mut ours: UnixStream) -> String {
    ours.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut said = String::new();
    ours.read_to_string(&mut said)
        .expect("the monitor closes its report channel");
    said
}

#[test]
fn bad_arguments_are_reported_on_stdout() {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let mut child = monitor()
        .arg("--no-such-flag")
        .arg("x")
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let said = report(ours);
    assert_eq!(said, "error bad arguments: unknown flag --no-such-flag\n");
    assert!(!child.wait().expect("wait").success());
}

#[test]
fn a_runtime_that_fails_is_reported_and_the_channel_closes() {
    let dir = std::env::temp_dir().join(format!("crisp-monitor-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bundle");
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let mut child = monitor()
        .args(["--runtime", "/bin/false", "--root"])
        .arg(dir.join("root"))
        .args(["--id", "failing", "--bundle"])
        .arg(&dir)
        .arg("--log-path")
        .arg(dir.join("log"))
        .arg("--exit-file")
        .arg(dir.join("exit"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let said = report(ours);
    assert!(
        said.starts_with("error /bin/false create failed"),
        "{said:?}"
    );
    assert!(!child.wait().expect("wait").success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_older_crispd_gets_its_report_on_fd_3() {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let fd = theirs.as_raw_fd();
    let mut command = monitor();
    command
        .arg("--no-such-flag")
        .arg("x")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only dup2 runs between fork and exec, as the older crispd did.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn");
    drop(command);
    drop(theirs);
    let said = report(ours);
    assert_eq!(said, "error bad arguments: unknown flag --no-such-flag\n");
    assert!(!child.wait().expect("wait").success());
}
