//! Configuration errors and the operator commands, through the real binary.

mod common;

use common::Sandbox;

#[test]
fn an_unknown_key_names_file_line_and_key() {
    let sandbox = Sandbox::new("");
    std::fs::write(
        sandbox.config_path(),
        "root = \"/tmp/x\"\n\n[cni]\nconf_dir = \"/etc/cni/net.d\"\nplugin_dir = \"/opt/cni/bin\"\n",
    )
    .expect("write");
    let (status, _, stderr) = sandbox.run(&[]);
    assert!(!status.success());
    let file = sandbox.config_path().display().to_string();
    assert!(stderr.contains(&format!("{file}:5")), "{stderr}");
    assert!(stderr.contains("cni.plugin_dir"), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
    assert!(!sandbox.socket().exists(), "nothing served");
}

#[test]
fn a_bad_value_names_file_line_and_key() {
    let sandbox = Sandbox::new("cgroup_driver = \"cgroupv3\"\n");
    let (status, _, stderr) = sandbox.run(&[]);
    assert!(!status.success());
    let file = sandbox.config_path().display().to_string();
    assert!(stderr.contains(&format!("{file}:5")), "{stderr}");
    assert!(stderr.contains("key `cgroup_driver`"), "{stderr}");
    assert!(stderr.contains("cgroupv3"), "{stderr}");
}

#[test]
fn a_bad_drop_in_is_named_and_a_cross_key_error_points_at_its_line() {
    let sandbox = Sandbox::new("");
    std::fs::create_dir_all(sandbox.path("crisp.d")).expect("drop-in dir");
    std::fs::write(
        sandbox.path("crisp.d/10-ok.toml"),
        "log_level = \"debug\"\n",
    )
    .expect("write");
    std::fs::write(
        sandbox.path("crisp.d/20-bad.toml"),
        "# pick a handler\n\ndefault_runtime = \"kata\"\n",
    )
    .expect("write");
    let (status, _, stderr) = sandbox.run(&["config"]);
    assert!(!status.success());
    assert!(stderr.contains("20-bad.toml:3"), "{stderr}");
    assert!(stderr.contains("key `default_runtime`"), "{stderr}");
    assert!(
        stderr.contains("configured handlers: crun, microvm, runc, runsc"),
        "{stderr}"
    );
}

#[test]
fn config_prints_the_effective_configuration_with_drop_ins_applied() {
    let sandbox = Sandbox::new("log_level = \"warn\"\n");
    std::fs::create_dir_all(sandbox.path("crisp.d")).expect("drop-in dir");
    std::fs::write(
        sandbox.path("crisp.d/50-crun.toml"),
        "[runtimes.crun]\npath = \"/usr/bin/crun\"\n",
    )
    .expect("write");
    std::fs::write(
        sandbox.path("crisp.d/60-level.toml"),
        "log_level = \"debug\"\n",
    )
    .expect("write");
    let (status, stdout, stderr) = sandbox.run(&["config"]);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("log_level = \"debug\""),
        "later drop-in wins: {stdout}"
    );
    assert!(stdout.contains("[runtimes.crun]"), "{stdout}");
    assert!(
        stdout.contains("[runtimes.runc]"),
        "defaults kept beside drop-ins: {stdout}"
    );
    assert!(stdout.contains("50-crun.toml"), "sources listed: {stdout}");
}

#[test]
fn a_named_config_file_must_exist() {
    let sandbox = Sandbox::new("");
    let missing = sandbox.path("nope.toml");
    let out = common::crispd()
        .args(["config", "--config"])
        .arg(&missing)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn check_fails_when_the_default_runtime_is_missing() {
    let sandbox = Sandbox::new("[runtimes.runc]\npath = \"/nonexistent/runc\"\n");
    let (status, stdout, _) = sandbox.run(&["check"]);
    assert!(!status.success());
    assert!(stdout.contains("[FAIL] runtime handler `runc`"), "{stdout}");
    assert!(stdout.contains("cannot run on this host"), "{stdout}");
    // The other checks still ran and reported.
    assert!(
        stdout.contains("overlayfs") && stdout.contains("cgroups"),
        "{stdout}"
    );
}

#[test]
fn check_passes_on_a_prepared_host() {
    let sandbox = Sandbox::new("[runtimes.runc]\npath = \"/bin/true\"\n");
    let (status, stdout, _) = sandbox.run(&["check"]);
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("[ok  ] overlayfs"), "{stdout}");
    // Nothing left from the overlay probe.
    let leftovers: Vec<_> = std::fs::read_dir(sandbox.path("root"))
        .expect("root exists")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn version_flag_prints_the_version() {
    let out = common::crispd().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("crispd {}", env!("CARGO_PKG_VERSION"))
    );
}
