//! `crisp-bench floors`: crisp's StopPodSandbox against the CNI DEL chain it runs, and
//! its CreateContainer+StartContainer against `runc create` + `runc start` by
//! themselves, on the same conflist, bridge, plugins, runc and busybox, rounds
//! interleaved so that the machine's drift hits both sides alike.
//!
//! The floors are what crisp cannot avoid: the CNI plugins' own work on DEL (the same
//! chain, in reverse, each given the ADD's result, as crisp and libcni give it), and
//! runc's own work for the very container crisp made: its config.json (same rootfs,
//! mounts, namespaces of the same pod, seccomp filter), a cgroup of its own.
//!
//! The containers compared are a pod's second: crisp's, runc's and crisp-monitor's (the
//! monitor started by itself, as crispd starts it) take turns in the running pod, in an
//! order that changes each round. The pod's first container is reported apart: on this
//! machine the first create after other work (a pod's start, a teardown, a pause) is
//! slower for runc by itself too, and it would load whichever side ran first.
//! crispd's own split of its time comes from its step metrics.

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

/// Writes crisp's config.json (`spec`) into `bundle` for floor container `id`: the same
/// container, in a cgroup of its own beside crisp's, in the same pod cgroup.
fn floor_bundle(spec: &Path, bundle: &Path, id: &str) -> Result<(), Error> {
    let mut spec: Value = serde_json::from_slice(&std::fs::read(spec)?)?;
    let crisp = spec["linux"]["cgroupsPath"].as_str().unwrap_or_default();
    let cgroup = match crisp.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{id}"),
        None => format!("/crisp-bench-floor/{id}"),
    };
    spec["linux"]["cgroupsPath"] = cgroup.into();
    std::fs::create_dir_all(bundle)?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(())
}

/// Kills and deletes floor container `id` (deleting waits for the kill to land).
fn remove(root: &Path, id: &str) {
    let _ = runc(root, &["kill", id, "KILL"]);
    for _ in 0..100 {
        if runc(root, &["delete", "--force", id]).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
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
    floor_bundle(spec, bundle, id)?;
    let bundle_arg = bundle.display().to_string();
    let began = Instant::now();
    runc(root, &["create", "--bundle", &bundle_arg, id])?;
    let created = began.elapsed().as_secs_f64() * 1000.0;
    let began = Instant::now();
    let start = runc(root, &["start", id]);
    let started = began.elapsed().as_secs_f64() * 1000.0;
    remove(root, id);
    start?;
    Ok((created, started))
}

/// crisp's CreateContainer and StartContainer of a `sleep` named `name` in `pod`: its ID
/// and the time of each, ms.
async fn create_start(
    clients: &mut critest::Clients,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
) -> Result<(String, f64, f64), Error> {
    let began = Instant::now();
    let id = clients
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(crate::container_config(name, image, &["sleep", "1000"])),
            sandbox_config: Some(pod_config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    let created = began.elapsed().as_secs_f64() * 1000.0;
    let began = Instant::now();
    clients
        .runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    Ok((id, created, began.elapsed().as_secs_f64() * 1000.0))
}

/// `crisp-monitor` as crispd starts it, on crisp's spec for a container (as a container
/// of its own): the time from its spawn to its `ok` report, ms.
fn monitor_create(spec: &Path, bundle: &Path, root: &Path, id: &str) -> Result<f64, Error> {
    use std::io::Read as _;
    floor_bundle(spec, bundle, id)?;
    std::fs::create_dir_all(root)?;
    let _ = std::fs::remove_file(bundle.join("exit"));
    let runtime = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no runc in /usr/sbin, /usr/bin or /usr/local/sbin")?;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut command = Command::new(crate::sibling("crisp-monitor"));
    command
        .arg("--runtime")
        .arg(runtime)
        .arg("--root")
        .arg(root)
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(bundle)
        .arg("--log-path")
        .arg(bundle.join("container.log"))
        .arg("--exit-file")
        .arg(bundle.join("exit"))
        .stdin(Stdio::null())
        // It reports on its stdout, as crispd gives it.
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::null());
    let began = Instant::now();
    let mut child = command.spawn()?;
    drop(command);
    let mut report = String::new();
    ours.read_to_string(&mut report)?;
    let took = began.elapsed().as_secs_f64() * 1000.0;
    remove(root, id);
    let _ = child.wait();
    if !report.starts_with("ok ") {
        return Err(format!("crisp-monitor: {}", report.trim()).into());
    }
    Ok(took)
}

pub async fn run(rounds: usize) -> Result<(), Error> {
    let work = tempdir()?;
    let registry = Registry::start(&work.join("registry"), None)?;
    let (image, _) = crate::containers::push_busybox_and_pause(&registry)?;
    let crisp_dir = work.join("crisp");
    // crispd's step timings come from its metrics endpoint.
    let metrics = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let crisp = crate::pods::start_crispd_on_bridge_with(
        &crisp_dir,
        BRIDGE,
        &format!("[metrics]\naddress = \"{metrics}\"\n"),
    )?;
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
    let mut monitor = Vec::new();
    let mut first = Vec::new();
    for round in 0..rounds {
        // crisp: a pod and its first container, which gives the floors their spec.
        let pod_config = crate::pods::pod(round);
        let pod_began = Instant::now();
        let pod = clients
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let (first_id, created, started) =
            create_start(&mut clients, &pod, &pod_config, &image, "first").await?;
        first.push(created + started);
        let spec = crisp_dir
            .join("state/containers")
            .join(&first_id)
            .join("config.json");
        // Then, in the running pod, crisp's second container, runc alone and
        // crisp-monitor alone on that spec, in an order that turns each round: what ran
        // just before (a teardown) slows the next create, and each takes that place as
        // often as the others.
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => {
                    let (id, created, started) =
                        create_start(&mut clients, &pod, &pod_config, &image, "second").await?;
                    create.push(created);
                    start.push(started);
                    clients
                        .runtime
                        .remove_container(cri::RemoveContainerRequest { container_id: id })
                        .await?;
                }
                1 => {
                    let floor_id = format!("floor-{round}");
                    let (created, started) =
                        runc_create_start(&spec, &bundle, &runc_root, &floor_id)?;
                    runc_create.push(created);
                    runc_start.push(started);
                }
                _ => monitor.push(monitor_create(
                    &spec,
                    &bundle,
                    &runc_root,
                    &format!("monitor-{round}"),
                )?),
            }
        }
        clients
            .runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: first_id,
            })
            .await?;
        let pod_lived = pod_began.elapsed();
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
        let floor_id = format!("floor-{round}");
        let result = cni_add(&floor_list, &netns.path(), &floor_id, &path)?;
        // As long as crisp's pod lived: a DEL right after its ADD races the kernel's own
        // work on the new link and is slower than any pod's.
        std::thread::sleep(pod_lived);
        let began = Instant::now();
        cni_del(&floor_list, &netns.path(), &floor_id, &path, &result)?;
        del.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    let steps = step_means(&scrape(metrics)?);
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
        "machine: {} cores; {rounds} rounds, medians; runc; the same conflist (bridge, portmap, loopback); crisp and the floors interleaved, the creates a pod's second container, in turns",
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
    let (runc_both, runc_create) = (median(&mut runc_both), median(&mut runc_create));
    for (step, ours, floor) in [
        (
            "CreateContainer+StartContainer / `runc create` + `runc start` alone",
            median(&mut both),
            runc_both,
        ),
        (
            "CreateContainer / `runc create`",
            median(&mut create),
            runc_create,
        ),
        (
            "crisp-monitor until its report (runc create under it) / `runc create`",
            median(&mut monitor),
            runc_create,
        ),
        (
            "StartContainer / `runc start`",
            median(&mut start),
            median(&mut runc_start),
        ),
        (
            "(a pod's first CreateContainer+StartContainer, right after RunPodSandbox) / `runc create` + `runc start` alone",
            median(&mut first),
            runc_both,
        ),
    ] {
        println!("| {step} | {ours:.1} | {floor:.1} | {:.2} |", ours / floor);
    }
    println!();
    println!(
        "crispd's own split (crisp_operation_step_duration_seconds, means over the {rounds} rounds; `runtime` is the handler's call: crisp-monitor started, `runc create`/`runc start` under it, its report read)"
    );
    println!("| operation | step | mean (ms) |");
    println!("|---|---|---|");
    // In the order crispd takes the steps; any it adds later, after them.
    const ORDER: [&str; 13] = [
        "validate",
        "image",
        "record",
        "intent",
        "rootfs",
        "identity",
        "spec",
        "binds",
        "nri",
        "runtime",
        "release_binds",
        "persist",
        "publish",
    ];
    let mut steps = steps;
    steps.sort_by_key(|(operation, step, _)| {
        let at = ORDER.iter().position(|s| s == step).unwrap_or(ORDER.len());
        (operation.clone(), at, step.clone())
    });
    for (operation, step, mean) in &steps {
        println!("| {operation} | {step} | {mean:.2} |");
    }
    Ok(())
}

/// crispd's metrics, as text.
fn scrape(address: std::net::SocketAddr) -> Result<String, Error> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: crisp\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// (operation, step, mean ms) from `crisp_operation_step_duration_seconds`'s sums and
/// counts, in the order crispd lists them.
fn step_means(metrics: &str) -> Vec<(String, String, f64)> {
    let series = |suffix: &str| -> Vec<(String, f64)> {
        let prefix = format!("crisp_operation_step_duration_seconds_{suffix}{{");
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|l| {
                let (labels, value) = l.split_once("} ")?;
                Some((labels.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    };
    let counts = series("count");
    let label = |labels: &str, name: &str| -> String {
        labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .trim_matches('"')
            .to_owned()
    };
    series("sum")
        .into_iter()
        .filter_map(|(labels, sum)| {
            let (_, count) = counts.iter().find(|(l, _)| *l == labels)?;
            (*count > 0.0).then(|| {
                (
                    label(&labels, "operation"),
                    label(&labels, "step"),
                    sum / count * 1000.0,
                )
            })
        })
        .collect()
}
