//! `crisp-bench floors`: crisp's StopPodSandbox against the CNI DEL chain it runs, and
//! its CreateContainer+StartContainer against `runc create` + `runc start` by
//! themselves, on the same conflist, bridge, plugins, runc and busybox, rounds
//! interleaved so that the machine's drift hits both sides alike.
//!
//! The floors are what crisp cannot avoid: the CNI plugins' own work on DEL (the same
//! chain, in reverse, each given the ADD's result, as crisp and libcni give it), and
//! runc's own work for the very container crisp made: its config.json (same rootfs,
//! mounts, namespaces of the same pod, seccomp filter), a cgroup of its own.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use cri_proto::v1 as cri;
use critest::fixture::Registry;
use serde_json::{Value, json};

use crate::{Error, median, tempdir, unmount_under};

const BRIDGE: &str = "crfloor";

/// Where the CNI plugins are.
fn cni_path() -> Result<String, Error> {
    let dirs: Vec<&str> = ["/opt/cni/bin", "/usr/lib/cni"]
        .into_iter()
        .filter(|d| Path::new(d).join("bridge").exists())
        .collect();
    if dirs.is_empty() {
        return Err("no CNI plugins in /opt/cni/bin or /usr/lib/cni".into());
    }
    Ok(dirs.join(":"))
}

/// Runs one CNI plugin; its result.
fn cni(command: &str, conf: &Value, netns: &str, id: &str, path: &str) -> Result<Value, Error> {
    let kind = conf["type"].as_str().unwrap_or_default().to_owned();
    let bin = path
        .split(':')
        .map(|d| Path::new(d).join(&kind))
        .find(|p| p.exists())
        .ok_or_else(|| format!("CNI plugin {kind} not found"))?;
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "CNI {command} {kind}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The conflist's plugin `plugin` as a plugin is given it.
fn plugin_conf(list: &Value, plugin: &Value, prev: &Value) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if !prev.is_null() {
        conf["prevResult"] = prev.clone();
    }
    conf
}

/// The ADD chain; its final result.
fn cni_add(list: &Value, netns: &str, id: &str, path: &str) -> Result<Value, Error> {
    let mut prev = Value::Null;
    for plugin in list["plugins"].as_array().into_iter().flatten() {
        prev = cni("ADD", &plugin_conf(list, plugin, &prev), netns, id, path)?;
    }
    Ok(prev)
}

/// The DEL chain, in reverse, each plugin given the ADD's result.
fn cni_del(list: &Value, netns: &str, id: &str, path: &str, result: &Value) -> Result<(), Error> {
    for plugin in list["plugins"].as_array().into_iter().flatten().rev() {
        cni("DEL", &plugin_conf(list, plugin, result), netns, id, path)?;
    }
    Ok(())
}

/// A process in a network namespace of its own, for the floors to use.
struct Netns {
    holder: std::process::Child,
}

impl Netns {
    fn new() -> Result<Self, Error> {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "1000"])
            .stdin(Stdio::null())
            .spawn()?;
        // Until unshare has made the namespace (its net ns differs from ours).
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/net", holder.id()));
            if theirs.is_ok_and(|t| t != ours) {
                break;
            }
            if Instant::now() > deadline {
                return Err("unshare --net did not make a namespace".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(Self { holder })
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Runs runc; its messages go to `<root>/runc.log` (a pipe would be held open by the
/// container's init, which inherits it).
fn runc(root: &Path, args: &[&str]) -> Result<(), Error> {
    std::fs::create_dir_all(root)?;
    let log = root.join("runc.log");
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .arg("--log")
        .arg(&log)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        let last = said.lines().last().unwrap_or_default().to_owned();
        Err(format!("runc {}: {status}: {last}", args.join(" ")).into())
    }
}

/// One `runc create` + `runc start` of the container crisp made from `spec` (its
/// config.json), as a container of its own; the time of each, ms.
fn runc_create_start(
    spec: &Path,
    bundle: &Path,
    root: &Path,
    id: &str,
) -> Result<(f64, f64), Error> {
    let mut spec: Value = serde_json::from_slice(&std::fs::read(spec)?)?;
    spec["linux"]["cgroupsPath"] = format!("/crisp-bench-floor/{id}").into();
    std::fs::create_dir_all(bundle)?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let bundle_arg = bundle.display().to_string();
    let began = Instant::now();
    runc(root, &["create", "--bundle", &bundle_arg, id])?;
    let created = began.elapsed().as_secs_f64() * 1000.0;
    let began = Instant::now();
    let start = runc(root, &["start", id]);
    let started = began.elapsed().as_secs_f64() * 1000.0;
    let _ = runc(root, &["kill", id, "KILL"]);
    // Deleting waits for the kill to land.
    for _ in 0..100 {
        if runc(root, &["delete", "--force", id]).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    start?;
    Ok((created, started))
}

pub async fn run(rounds: usize) -> Result<(), Error> {
    let work = tempdir()?;
    let registry = Registry::start(&work.join("registry"), None)?;
    let (image, _) = crate::containers::push_busybox_and_pause(&registry)?;
    let crisp_dir = work.join("crisp");
    let crisp = crate::pods::start_crispd_on_bridge(&crisp_dir, BRIDGE)?;
    let mut clients = crate::serving(&crisp).await?;
    crate::containers::pull_all(&mut clients, &[&image]).await?;
    let list: Value =
        serde_json::from_slice(&std::fs::read(crisp_dir.join("net.d/10-bench.conflist"))?)?;
    // The floors' addresses come from a range of the same subnet that crisp's pods do
    // not use, with a store of their own.
    let mut floor_list = list.clone();
    floor_list["plugins"][0]["ipam"]["dataDir"] =
        work.join("floor-ipam").display().to_string().into();
    floor_list["plugins"][0]["ipam"]["ranges"] = json!([[{
        "subnet": "10.213.0.0/16",
        "rangeStart": "10.213.200.1",
        "rangeEnd": "10.213.200.254",
        "gateway": "10.213.0.1",
    }]]);
    let path = cni_path()?;
    let bundle = work.join("floor/bundle");
    let runc_root = work.join("floor/runc");

    let (mut stop, mut del) = (Vec::new(), Vec::new());
    let (mut create, mut start) = (Vec::new(), Vec::new());
    let (mut runc_create, mut runc_start) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // crisp: a pod, a container started in it, then the pod stopped.
        let pod_config = crate::pods::pod(round);
        let pod = clients
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let began = Instant::now();
        let id = clients
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(crate::container_config("floor", &image, &["sleep", "1000"])),
                sandbox_config: Some(pod_config),
            })
            .await?
            .into_inner()
            .container_id;
        create.push(began.elapsed().as_secs_f64() * 1000.0);
        let began = Instant::now();
        clients
            .runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        start.push(began.elapsed().as_secs_f64() * 1000.0);
        // runc alone, on crisp's spec for that container, while the pod is up.
        let spec = crisp_dir
            .join("state/containers")
            .join(&id)
            .join("config.json");
        let floor_id = format!("floor-{round}");
        let (created, started) = runc_create_start(&spec, &bundle, &runc_root, &floor_id)?;
        runc_create.push(created);
        runc_start.push(started);
        clients
            .runtime
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await?;
        let began = Instant::now();
        clients
            .runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await?;
        stop.push(began.elapsed().as_secs_f64() * 1000.0);
        clients
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await?;

        // The CNI floor, in a namespace of its own.
        let netns = Netns::new()?;
        let result = cni_add(&floor_list, &netns.path(), &floor_id, &path)?;
        let began = Instant::now();
        cni_del(&floor_list, &netns.path(), &floor_id, &path, &result)?;
        del.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    drop(clients);
    drop(crisp);
    unmount_under(&crisp_dir);
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    // The floors' cgroup parent, in every hierarchy runc made it in.
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join("crisp-bench-floor"));
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/crisp-bench-floor");
    let _ = std::fs::remove_dir_all(&work);

    println!("# crisp-bench floors");
    println!(
        "machine: {} cores; {rounds} rounds, medians; runc; the same conflist (bridge, portmap, loopback); crisp and the floors interleaved",
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!("| step | crisp (ms) | floor (ms) | crisp/floor |");
    println!("|---|---|---|---|");
    let (s, d) = (median(&mut stop), median(&mut del));
    println!(
        "| StopPodSandbox / the CNI DEL chain alone | {s:.1} | {d:.1} | {:.2} |",
        s / d
    );
    let mut both: Vec<f64> = create.iter().zip(&start).map(|(c, s)| c + s).collect();
    let mut runc_both: Vec<f64> = runc_create
        .iter()
        .zip(&runc_start)
        .map(|(c, s)| c + s)
        .collect();
    for (step, ours, floor) in [
        (
            "CreateContainer+StartContainer / `runc create` + `runc start` alone",
            both.as_mut_slice(),
            runc_both.as_mut_slice(),
        ),
        (
            "CreateContainer / `runc create`",
            create.as_mut_slice(),
            runc_create.as_mut_slice(),
        ),
        (
            "StartContainer / `runc start`",
            start.as_mut_slice(),
            runc_start.as_mut_slice(),
        ),
    ] {
        let (c, r) = (median(ours), median(floor));
        println!("| {step} | {c:.1} | {r:.1} | {:.2} |", c / r);
    }
    Ok(())
}
