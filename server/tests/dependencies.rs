//! The crate graph STYLE.md gives, held by a test: siblings never import each other, and
//! only `cri-proto`, `server` and `critest` see CRI types.

use std::collections::{BTreeMap, BTreeSet};

const WORKSPACE: [&str; 9] = [
    "cri-proto",
    "conf",
    "storage",
    "network",
    "image",
    "runtime-handlers",
    "nri",
    "server",
    "critest",
];

/// For each workspace crate, the workspace crates its normal dependencies may name.
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
    BTreeMap::from([
        ("cri-proto", set(&[])),
        ("conf", set(&[])),
        ("storage", set(&[])),
        ("network", set(&[])),
        ("image", set(&["storage"])),
        ("runtime-handlers", set(&[])),
        // NRI's protocol and plugins: a leaf, which only the lifecycle drives.
        ("nri", set(&[])),
        (
            "server",
            set(&[
                "cri-proto",
                "conf",
                "storage",
                "network",
                "image",
                "runtime-handlers",
                "nri",
            ]),
        ),
        ("critest", set(&["cri-proto"])),
    ])
}

#[test]
fn the_crate_graph_is_the_documented_dag() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let allowed = allowed();
    let mut seen = BTreeSet::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name");
        // Nested helper crates (the monitor, the guest agent) belong to their parent folder.
        let Some(permitted) = allowed.get(name) else {
            continue;
        };
        seen.insert(name.to_owned());
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dep name");
            if !WORKSPACE.contains(&dep_name) {
                continue;
            }
            let kind = dep["kind"].as_str();
            if kind == Some("dev") {
                // Tests may use the black-box client; nothing else crosses the graph.
                assert!(
                    dep_name == "critest" || permitted.contains(dep_name),
                    "{name} has a dev-dependency on {dep_name}"
                );
                continue;
            }
            assert!(
                permitted.contains(dep_name),
                "{name} depends on {dep_name}, which STYLE.md does not allow"
            );
        }
    }
    let expected: BTreeSet<String> = WORKSPACE.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(seen, expected, "every workspace crate is checked");
}
