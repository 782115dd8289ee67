//! The configuration schema and its built-in defaults.
//!
//! Every struct denies unknown keys and defaults every field, so that a drop-in file may
//! set a single key and a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Name of the handler used when a pod names none.
pub const DEFAULT_RUNTIME: &str = "runc";

/// The whole configuration of one crispd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: content store, snapshots, metadata.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: lock, bundles, pod namespaces.
    pub state: PathBuf,
    /// The CRI gRPC unix socket.
    pub listen: PathBuf,
    /// Where crisp writes its own per-container files that are not kubelet's logs.
    pub log_dir: PathBuf,
    /// Least severity logged.
    pub log_level: LogLevel,
    /// Log line format.
    pub log_format: LogFormat,
    /// How pod and container cgroups are created; kubelet must use the same driver.
    pub cgroup_driver: CgroupDriver,
    /// Handler for pods whose `runtime_handler` is empty.
    pub default_runtime: String,
    /// Handler for pods annotated `io.kubernetes.cri.untrusted-workload: "true"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untrusted_workload_runtime: Option<String>,
    /// Image whose rootfs backs the pod infra process.
    pub pause_image: String,
    /// Images never removed by RemoveImage or garbage collection (`pinned` in ListImages).
    pub pinned_images: Vec<String>,
    /// Runtime handlers by name (RuntimeClass handler names).
    pub runtimes: BTreeMap<String, RuntimeHandlerConfig>,
    /// CNI configuration and plugins.
    pub cni: CniConfig,
    /// Registry mirrors, insecure registries and credentials.
    pub registry: RegistryConfig,
    /// Image pull limits.
    pub image: ImageConfig,
    /// The Exec/Attach/PortForward streaming server.
    pub streaming: StreamingConfig,
    /// crisp's own Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// NRI (Node Resource Interface) plugins.
    pub nri: NriConfig,
}

impl Default for Config {
    fn default() -> Self {
        // runc, crun and gVisor's runsc, as CRI-O offers its runtimes: each is usable when
        // its binary is installed, and Status lists only those (`crispd check` says why
        // the others are not). Debian's 2022 runsc can only use the pod's netns with
        // `--network=host`; newer ones accept it too. `--oci-seccomp` makes it apply the
        // containers' seccomp profiles inside the sandbox (it ignores them otherwise).
        let handler = |path: &str, args: &[&str]| RuntimeHandlerConfig {
            path: PathBuf::from(path),
            runtime_args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..RuntimeHandlerConfig::default()
        };
        let runtimes = BTreeMap::from([
            (DEFAULT_RUNTIME.to_owned(), handler("runc", &[])),
            ("crun".to_owned(), handler("crun", &[])),
            (
                "runsc".to_owned(),
                handler("runsc", &["--network=host", "--oci-seccomp"]),
            ),
            (
                "microvm".to_owned(),
                RuntimeHandlerConfig::default_microvm(),
            ),
        ]);
        Self {
            root: PathBuf::from("/var/lib/crisp"),
            state: PathBuf::from("/run/crisp"),
            listen: PathBuf::from("/run/crisp/crisp.sock"),
            log_dir: PathBuf::from("/var/log/crisp"),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            default_runtime: DEFAULT_RUNTIME.to_owned(),
            untrusted_workload_runtime: None,
            pause_image: "registry.k8s.io/pause:3.10".to_owned(),
            pinned_images: Vec::new(),
            runtimes,
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            image: ImageConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

impl Config {
    /// The handler a pod gets: its own choice, the untrusted-workload handler, or the default.
    pub fn handler_name<'a>(&'a self, requested: &'a str, untrusted: bool) -> &'a str {
        if !requested.is_empty() {
            return requested;
        }
        match (&self.untrusted_workload_runtime, untrusted) {
            (Some(name), true) => name,
            _ => &self.default_runtime,
        }
    }

    /// The state directory a handler's runtime keeps its containers in (`--root` of runc).
    pub fn runtime_root(&self, handler: &str) -> PathBuf {
        match self.runtimes.get(handler).and_then(|h| h.root.clone()) {
            Some(root) => root,
            None => self.state.join("runtimes").join(handler),
        }
    }

    /// A copy safe to print or return over the API: credentials replaced by a marker.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for auth in copy.registry.auths.values_mut() {
            for secret in [
                &mut auth.password,
                &mut auth.auth,
                &mut auth.identity_token,
                &mut auth.registry_token,
            ] {
                if secret.is_some() {
                    *secret = Some("<redacted>".to_owned());
                }
            }
        }
        copy
    }
}

/// Severity threshold for crisp's own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: lifecycle events.
    Info,
    /// Per-request detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The name used in config files and `--log-level`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error" => Ok(Self::Error),
            "warn" => Ok(Self::Warn),
            "info" => Ok(Self::Info),
            "debug" => Ok(Self::Debug),
            "trace" => Ok(Self::Trace),
            other => Err(format!(
                "unknown log level `{other}`, expected one of error, warn, info, debug, trace"
            )),
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The cgroup manager, matching kubelet's `--cgroup-driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Cgroups created directly under /sys/fs/cgroup.
    Cgroupfs,
    /// Cgroups created as systemd scopes and slices.
    Systemd,
}

/// What kind of runtime a handler drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerType {
    /// An OCI runtime CLI (runc, crun, runsc).
    #[default]
    Oci,
    /// A virtual machine per pod with an agent inside.
    Microvm,
}

/// QEMU accelerator for the microVM handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slow, but works where KVM does not.
    Tcg,
    /// KVM where it really works (/dev/kvm opens, the CPU has vmx or svm, and it is not
    /// the paravirtual PVM flavour that crashes stock guests), else TCG.
    #[default]
    Auto,
}

impl Accelerator {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One `[runtimes.<name>]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeHandlerConfig {
    /// `oci` or `microvm`.
    #[serde(rename = "type")]
    pub kind: HandlerType,
    /// The runtime binary (OCI) or the VMM binary (microVM); a bare name is looked up in PATH.
    pub path: PathBuf,
    /// The runtime's state directory; defaults to `<state>/runtimes/<name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Extra arguments put before every runtime subcommand (e.g. runsc's `--network=host`).
    pub runtime_args: Vec<String>,
    /// OCI: run ExecSync through the runtime's `exec` instead of crisp's own entry into
    /// the container (which runsc containers never get: they run on gVisor's kernel).
    pub runtime_exec: bool,
    /// microVM: the guest kernel image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// microVM: the guest initrd holding the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// microVM: `kvm`, `tcg` or `auto`.
    #[serde(skip_serializing_if = "Accelerator::is_default")]
    pub accelerator: Accelerator,
    /// microVM: guest memory in MiB (0: 256).
    #[serde(skip_serializing_if = "is_zero")]
    pub memory_mib: u32,
    /// microVM: guest vCPUs (0: 1).
    #[serde(skip_serializing_if = "is_zero")]
    pub vcpus: u32,
    /// microVM: QEMU's machine type (default `microvm`; `q35` also works).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// microVM: how long a guest has to boot and answer (default 30s).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde_option"
    )]
    pub boot_timeout: Option<Duration>,
    /// microVM: the vhost-user-vsock backend (default `vhost-device-vsock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_backend: Option<PathBuf>,
    /// microVM: the virtio-fs daemon (default QEMU 7.2's C `/usr/lib/qemu/virtiofsd`; the
    /// Rust virtiofsd works too, for hosts whose QEMU ships none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtiofsd: Option<PathBuf>,
}

/// Where `make start` and the tests put the guest image (`scripts/build-guest.sh`).
pub const GUEST_IMAGE_DIR: &str = "/var/lib/crisp/guest";

/// The command that builds the guest image.
pub const GUEST_IMAGE_COMMAND: &str = "sh scripts/build-guest.sh";

impl RuntimeHandlerConfig {
    /// The default microVM handler: QEMU with the guest image `make start` builds.
    pub fn default_microvm() -> Self {
        let image = PathBuf::from(GUEST_IMAGE_DIR);
        Self {
            kind: HandlerType::Microvm,
            path: PathBuf::from("qemu-system-x86_64"),
            kernel: Some(image.join("vmlinuz")),
            initrd: Some(image.join("initrd.img")),
            accelerator: Accelerator::Auto,
            memory_mib: 256,
            vcpus: 1,
            machine: Some("microvm".to_owned()),
            boot_timeout: Some(Duration::from_secs(30)),
            vsock_backend: Some(PathBuf::from("vhost-device-vsock")),
            virtiofsd: Some(PathBuf::from("/usr/lib/qemu/virtiofsd")),
            ..Self::default()
        }
    }
}

/// The `[cni]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Directory scanned for `*.conflist`, `*.conf` and `*.json`, first valid by name wins.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for plugin binaries.
    pub plugin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            plugin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

/// The `[registry]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`) reached over plain HTTP or unverified TLS.
    pub insecure: Vec<String>,
    /// Mirrors by registry host: endpoints tried in order before the registry itself.
    pub mirrors: BTreeMap<String, MirrorConfig>,
    /// Credentials by registry host, used when a pull brings none.
    pub auths: BTreeMap<String, AuthConfig>,
}

/// One `[registry.mirrors."<host>"]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Base URLs (`http://host:port` or `https://host`) tried in order.
    pub endpoints: Vec<String>,
}

/// One `[registry.auths."<host>"]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Basic-auth user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// base64 of `user:password`, as in Docker's config.json.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// OAuth2 refresh token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<String>,
    /// Bearer token sent as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_token: Option<String>,
}

/// The `[image]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// A pull that moves no bytes for this long is aborted.
    #[serde(with = "humantime_serde_compat")]
    pub pull_progress_timeout: Duration,
    /// A pull that takes longer than this in all is aborted.
    #[serde(with = "humantime_serde_compat")]
    pub pull_timeout: Duration,
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: u32,
    /// Uncompressed bytes one layer may have; a layer that expands past it is refused
    /// while unpacking (ResourceExhausted). 0: no limit.
    pub max_layer_unpacked_bytes: u64,
    /// Uncompressed bytes an image's layers may have together. 0: no limit.
    pub max_image_unpacked_bytes: u64,
    /// Uncompressed bytes per compressed byte a layer may expand by, checked once it has
    /// expanded past 256 MiB (a decompression bomb). 0: no limit.
    pub max_expansion_ratio: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            pull_progress_timeout: Duration::from_secs(60),
            pull_timeout: Duration::from_secs(30 * 60),
            max_concurrent_downloads: 3,
            // Generous for real images (the largest seen in practice are a few tens of
            // GiB, with layers compressed 2-10 fold), small enough that one hostile
            // layer cannot fill a node's disk.
            max_layer_unpacked_bytes: 64 << 30,
            max_image_unpacked_bytes: 128 << 30,
            max_expansion_ratio: 100,
        }
    }
}

/// The `[streaming]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `ip:port` the streaming server listens on; port 0 picks a free one.
    pub address: String,
    /// PEM certificate; with `tls_key`, the server speaks TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// How long an Exec/Attach/PortForward URL stays valid.
    #[serde(with = "humantime_serde_compat")]
    pub token_timeout: Duration,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".to_owned(),
            tls_cert: None,
            tls_key: None,
            token_timeout: Duration::from_secs(60),
        }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` of the Prometheus endpoint; empty turns it off.
    pub address: String,
}

/// The `[nri]` table: NRI plugins, as containerd and CRI-O run them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NriConfig {
    /// NRI on or off.
    pub enable: bool,
    /// Where external plugins connect.
    pub socket_path: PathBuf,
    /// Pre-installed plugins, started with crispd: executables named `NN-name`.
    pub plugin_path: PathBuf,
    /// Their configuration files (`NN-name.conf` or `name.conf`).
    pub plugin_config_path: PathBuf,
    /// Take only pre-installed plugins; nothing listens on `socket_path`.
    pub disable_connections: bool,
    /// How long a plugin has to register once connected.
    #[serde(with = "humantime_serde_compat")]
    pub registration_timeout: Duration,
    /// How long a plugin has to answer an event; one that does not is dropped.
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
}

impl Default for NriConfig {
    fn default() -> Self {
        Self {
            enable: true,
            socket_path: PathBuf::from("/var/run/nri/nri.sock"),
            plugin_path: PathBuf::from("/opt/nri/plugins"),
            plugin_config_path: PathBuf::from("/etc/nri/conf.d"),
            disable_connections: false,
            registration_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// Durations as humantime strings (`"90s"`, `"30m"`), both ways.
mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::humantime_serde_compat::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::humantime_serde_compat::deserialize(d).map(Some)
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write e.g. \"90s\" or \"5m\""
            ))
        })
    }
}
