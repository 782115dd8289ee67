//! `crisp-fixture DIR [ADDR]`: starts Debian's docker-registry on ADDR (default
//! 127.0.0.1:5000) with its storage in DIR, pushes the images critest pulls (under the
//! paths `../shared/CRITEST-IMAGES.md` lists, minus those this offline fixture cannot
//! build) plus a few for hand checks, prints what it pushed, and serves until killed.
//!
//! crispd reaches them through registry mirrors: `registry.k8s.io`, `k8s.gcr.io`,
//! `gcr.io` and `docker.io` → `http://ADDR` (see critest/crisp-critest.toml).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use critest::fixture::{self, BuiltImage, ImageBuilder, LayerBuilder, Registry};

/// Serves the images critest pulls from a local docker-registry, offline.
#[derive(Debug, Parser)]
#[command(name = "crisp-fixture", version)]
struct Cli {
    /// The registry's storage directory (created if missing).
    dir: PathBuf,
    /// Where the registry listens.
    #[arg(default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let (dir, addr) = (cli.dir, cli.addr.to_string());
    let registry = Registry::start_at(&dir, &addr, None)?;
    let busybox = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .cmd(&["sh"]);
    let marked = |name: &str| {
        busybox
            .clone()
            .layer(
                LayerBuilder::new()
                    .file("etc/image-name", name.as_bytes(), 0o644)
                    .finish(),
            )
            .build()
    };
    let staging = "k8s-staging-cri-tools";
    let tags_image = marked("test-image-tags");
    let predefined_group = busybox
        .clone()
        .layer(
            LayerBuilder::new()
                .file(
                    "etc/passwd",
                    b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\ndefault-user:x:1000:1000::/home/default-user:/bin/sh\n",
                    0o644,
                )
                .file(
                    "etc/group",
                    b"root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\ngroup-defined-in-image:x:50000:default-user\n",
                    0o644,
                )
                .finish(),
        )
        .user("1000")
        .build();
    let pause = ImageBuilder::new()
        .layer(fixture::busybox_layer()?)
        .entrypoint(&["/bin/sleep", "2147483647"])
        .build();
    let images: Vec<(String, &str, BuiltImage)> = vec![
        ("library/busybox".into(), "latest", busybox.clone().build()),
        (
            "e2e-test-images/busybox".into(),
            "1.29-2",
            match tools_layer(&dir.join("busybox-deb")) {
                Ok(tools) => busybox.clone().layer(tools).build(),
                Err(e) => {
                    eprintln!("crisp-fixture: busybox without ipcs and pgrep ({e})");
                    busybox.clone().build()
                }
            },
        ),
        ("pause".into(), "3.9", pause.clone()),
        ("pause".into(), "3.10", pause),
        (
            format!("{staging}/test-image-1"),
            "latest",
            marked("test-image-1"),
        ),
        (
            format!("{staging}/test-image-2"),
            "latest",
            marked("test-image-2"),
        ),
        (
            format!("{staging}/test-image-3"),
            "latest",
            marked("test-image-3"),
        ),
        (
            format!("{staging}/test-image-latest"),
            "latest",
            marked("test-image-latest"),
        ),
        (
            format!("{staging}/test-image-tags"),
            "1",
            tags_image.clone(),
        ),
        (
            format!("{staging}/test-image-tags"),
            "2",
            tags_image.clone(),
        ),
        (format!("{staging}/test-image-tags"), "3", tags_image),
        (
            format!("{staging}/test-image-tag"),
            "test",
            marked("test-image-tag-test"),
        ),
        (
            format!("{staging}/test-image-tag"),
            "all",
            marked("test-image-tag-all"),
        ),
        (
            format!("{staging}/test-image-user-uid"),
            "latest",
            busybox.clone().user("1002").build(),
        ),
        (
            format!("{staging}/test-image-user-username"),
            "latest",
            busybox.clone().user("www-data").build(),
        ),
        (
            format!("{staging}/test-image-user-uid-group"),
            "latest",
            busybox.clone().user("1003:1004").build(),
        ),
        (
            format!("{staging}/test-image-user-username-group"),
            "latest",
            busybox.clone().user("www-data:1004").build(),
        ),
        (
            format!("{staging}/test-image-predefined-group"),
            "latest",
            predefined_group,
        ),
    ];
    let mut images = images;
    images.push((
        "e2e-test-images/httpd".into(),
        "2.4.39-4",
        busybox
            .clone()
            .layer(httpd_layer())
            .env("PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
            .cmd(&["httpd-foreground"])
            .build(),
    ));
    match nginx_layer(&dir.join("nginx-deb")) {
        Ok(layer) => {
            let nginx = busybox.clone().layer(layer).layer(nginx_conf(80)).cmd(&[
                "nginx",
                "-g",
                "daemon off;",
            ]);
            images.push((
                "e2e-test-images/nginx".into(),
                "1.14-2",
                nginx.clone().build(),
            ));
            let hostnet = nginx.layer(nginx_conf(12003)).build();
            images.push((format!("{staging}/hostnet-nginx-amd64"), "latest", hostnet));
        }
        Err(e) => eprintln!("crisp-fixture: no nginx image ({e}); its specs will fail"),
    }
    match nonewprivs_layer(&dir.join("nonewprivs")) {
        Ok(layer) => {
            let image = busybox
                .clone()
                .layer(layer)
                .entrypoint(&["/usr/local/bin/nnp"])
                .build();
            images.push(("e2e-test-images/nonewprivs".into(), "1.3", image));
        }
        Err(e) => eprintln!("crisp-fixture: no nonewprivs image ({e}); its specs will fail"),
    }
    for (repo, tag, image) in &images {
        let digest = fixture::push(&registry, repo, tag, image)?;
        println!("{}/{repo}:{tag} {digest} id={}", registry.addr, image.id());
    }
    println!("serving on {} (Ctrl-C stops)", registry.addr);
    loop {
        std::thread::park();
    }
}

/// nginx from Debian's package (fetched with `apt-get download`, never installed on the
/// host), with the shared libraries it links copied from the host, listening on :80.
/// Fetches Debian package `package` (never installing it) and unpacks it under `work`;
/// returns the unpacked root.
fn debian_package(
    work: &std::path::Path,
    package: &str,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(work)?;
    let status = std::process::Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("apt-get download {package} failed").into());
    }
    let deb = std::fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| format!("no {package} .deb"))?;
    let root = work.join("root");
    let status = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()?;
    if !status.success() {
        return Err("dpkg-deb -x failed".into());
    }
    Ok(root)
}

fn nginx_layer(work: &std::path::Path) -> Result<fixture::Layer, Box<dyn std::error::Error>> {
    let root = debian_package(work, "nginx")?;
    let binary = root.join("usr/sbin/nginx");
    let mut layer = LayerBuilder::new()
        .dir("usr/", 0o755)
        .dir("usr/sbin/", 0o755)
        .dir("lib/", 0o755)
        .dir("lib/x86_64-linux-gnu/", 0o755)
        .dir("lib64/", 0o755)
        .dir("var/", 0o755)
        .dir("var/log/", 0o755)
        .dir("var/log/nginx/", 0o755)
        .dir("var/lib/", 0o755)
        .dir("var/lib/nginx/", 0o755)
        .dir("run/", 0o755)
        .host_file("usr/sbin/nginx", binary.to_str().ok_or("path")?, 0o755)?;
    layer = with_libraries(layer, &binary, &mut std::collections::HashSet::new())?;
    Ok(layer.finish())
}

/// Adds the shared libraries `binary` links (as `ldd` lists them) at their host paths.
fn with_libraries(
    mut layer: LayerBuilder,
    binary: &std::path::Path,
    added: &mut std::collections::HashSet<String>,
) -> Result<LayerBuilder, Box<dyn std::error::Error>> {
    let ldd = std::process::Command::new("ldd").arg(binary).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if !path.starts_with('/') || !added.insert(path.to_owned()) {
            continue;
        }
        let real = std::fs::canonicalize(path)?;
        layer = layer.host_file(
            path.trim_start_matches('/'),
            real.to_str().ok_or("path")?,
            0o755,
        )?;
    }
    Ok(layer)
}

/// util-linux's `ipcs` (for the IPC namespace specs) and procps's `pgrep` (the exec
/// timeout spec), which Debian's busybox lacks, with their libraries; and as `/bin/sh`
/// the busybox of Debian's `busybox` package, whose shell runs commands from PATH (the
/// static busybox's shell runs its own applets, so a masked `/bin/ls` is never opened).
fn tools_layer(work: &std::path::Path) -> Result<fixture::Layer, Box<dyn std::error::Error>> {
    let mut layer = LayerBuilder::new()
        .dir("bin/", 0o755)
        .dir("usr/", 0o755)
        .dir("usr/bin/", 0o755)
        .dir("lib/", 0o755)
        .dir("lib/x86_64-linux-gnu/", 0o755)
        .dir("lib64/", 0o755);
    let mut added = std::collections::HashSet::new();
    for tool in ["/usr/bin/ipcs", "/usr/bin/pgrep"] {
        layer = layer.host_file(tool.trim_start_matches('/'), tool, 0o755)?;
        layer = with_libraries(layer, std::path::Path::new(tool), &mut added)?;
    }
    match debian_package(work, "busybox") {
        Ok(root) => {
            let shell = root.join("bin/busybox");
            layer = layer.host_file("bin/sh", shell.to_str().ok_or("path")?, 0o755)?;
            layer = with_libraries(layer, &shell, &mut added)?;
        }
        Err(e) => eprintln!("crisp-fixture: static busybox sh in the e2e image ({e})"),
    }
    Ok(layer.finish())
}

/// A setuid-root program printing its effective uid, compiled statically with the host's
/// gcc: the `nonewprivs` image.
fn nonewprivs_layer(work: &std::path::Path) -> Result<fixture::Layer, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(work)?;
    let source = work.join("nnp.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf(\"Effective uid: %d\\n\", geteuid()); return 0; }\n",
    )?;
    let binary = work.join("nnp");
    let status = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()?;
    if !status.success() {
        return Err("gcc -static failed".into());
    }
    Ok(LayerBuilder::new()
        .dir("usr/", 0o755)
        .dir("usr/local/", 0o755)
        .dir("usr/local/bin/", 0o755)
        .file("usr/local/bin/nnp", &std::fs::read(&binary)?, 0o4755)
        .finish())
}

/// A layer holding nginx.conf: master as root, workers as www-data, pid file where
/// critest reads it, 200 for `/` on `port`.
/// The multi-container specs' web server: busybox httpd on :80 in the foreground, behind
/// the `httpd-foreground` command of the upstream image, announcing itself on stdout.
fn httpd_layer() -> fixture::Layer {
    let script = "#!/bin/sh\nmkdir -p /usr/local/apache2/htdocs\necho '<html><body><h1>It works!</h1></body></html>' > /usr/local/apache2/htdocs/index.html\necho 'httpd (busybox) serving /usr/local/apache2/htdocs on :80'\nexec httpd -f -v -p 80 -h /usr/local/apache2/htdocs\n";
    LayerBuilder::new()
        .dir("usr/", 0o755)
        .dir("usr/local/", 0o755)
        .dir("usr/local/bin/", 0o755)
        .file("usr/local/bin/httpd-foreground", script.as_bytes(), 0o755)
        .finish()
}

fn nginx_conf(port: u16) -> fixture::Layer {
    let conf = format!(
        "user www-data;\nworker_processes 1;\npid /var/run/nginx.pid;\nerror_log /dev/stderr;\nevents {{}}\nhttp {{\n  access_log off;\n  server {{\n    listen {port};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    );
    LayerBuilder::new()
        .dir("etc/", 0o755)
        .dir("etc/nginx/", 0o755)
        .file("etc/nginx/nginx.conf", conf.as_bytes(), 0o644)
        .finish()
}
