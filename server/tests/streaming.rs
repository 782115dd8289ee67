//! Exec and PortForward through crispd's streaming server, driven by clients written
//! here: SPDY/3.1 (with crisp's own frame codec, as client-go speaks it) and WebSocket.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::clients::*;
use common::workload::*;
use cri_proto::v1 as cri;
use server::streaming::spdy::{FLAG_FIN, Frame};

/// Processes (not zombies) whose command line is exactly `cmdline`.
fn processes(cmdline: &[u8]) -> usize {
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == cmdline)
                && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| !s.contains(") Z "))
        })
        .count()
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_and_websocket_with_and_without_a_terminal() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let id = create(&mut rt, &s, &pod, container(&s, "sh", "sleep 1000")).await;
    start(&mut rt, &id).await;

    // SPDY, pipes: stdin in, stdout and stderr apart, the exit code in the v4 status.
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "read x; echo got-$x; echo oops >&2; exit 3"],
        false,
        true,
    )
    .await;
    let got = spdy_exec(&url, b"hello\n").await;
    assert_eq!(got.get(&5).map(Vec::as_slice), Some(&b"got-hello\n"[..]));
    assert_eq!(got.get(&7).map(Vec::as_slice), Some(&b"oops\n"[..]));
    assert_eq!(exit_code_of(got.get(&1).expect("status")), 3);

    // SPDY, terminal: the process sees a tty of the size the client sent.
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "sleep 0.3; tty; stty size"],
        true,
        false,
    )
    .await;
    let got = tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&url, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdout")]);
        c.syn(5, &[("streamtype", "resize")]);
        c.data(5, br#"{"Width":100,"Height":40}"#, false);
        c.collect()
    })
    .await
    .expect("client");
    let out = String::from_utf8_lossy(got.get(&3).expect("stdout")).into_owned();
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    assert_eq!(exit_code_of(got.get(&1).expect("status")), 0);

    // WebSocket v5: stdin closed with the close signal, exit code in the status.
    let url = exec_url(&mut rt, &id, &["sh", "-c", "cat; exit 5"], false, true).await;
    let (stdout, status) = ws_exec(&url, "v5.channel.k8s.io", b"abc").await;
    assert_eq!(stdout, b"abc");
    assert_eq!(exit_code_of(&status), 5);

    // WebSocket v4, terminal: a tty of the size sent on the resize channel.
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "sleep 0.3; tty; stty size; exit 6"],
        true,
        false,
    )
    .await;
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":90,"Height":30}"#);
    let (stdout, status) = ws_session(&url, "v4.channel.k8s.io", vec![resize], None).await;
    let out = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        out.contains("/dev/pts/") && out.contains("30 90"),
        "{out:?}"
    );
    assert_eq!(exit_code_of(&status), 6);

    // Tokens are single-use; unknown ones are 404.
    let url = exec_url(&mut rt, &id, &["true"], false, false).await;
    let reuse = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&url, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdout")]);
        c.syn(5, &[("streamtype", "stderr")]);
        c.collect();
        let (_, code, _) = upgrade(
            &reuse,
            &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
        );
        assert_eq!(code, 404, "a used token");
        let (addr, _) = split_url(&reuse);
        let (_, code, _) = upgrade(&format!("http://{addr}/exec/nope"), &[]);
        assert_eq!(code, 404, "an unknown token");
    })
    .await
    .expect("client");

    // Bad requests are refused at the RPC.
    let err = rt
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: Vec::new(),
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("no command");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = rt
        .exec(cri::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("no container");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A client that hangs up mid-stream leaves no process and no descriptor behind.
    let crispd = daemon.pid();
    let before = fds(crispd);
    let url = exec_url(&mut rt, &id, &["sleep", "777"], false, false).await;
    tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&url, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdout")]);
        c.syn(5, &[("streamtype", "stderr")]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes(b"sleep\x00777\x00") == 0 {
            assert!(Instant::now() < deadline, "the exec never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(c);
    })
    .await
    .expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes(b"sleep\x00777\x00") > 0 || fds(crispd) > before {
        assert!(
            Instant::now() < deadline,
            "left behind: {} processes, {} fds (was {before})",
            processes(b"sleep\x00777\x00"),
            fds(crispd)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same over WebSocket: the client goes once the process printed.
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "echo up; exec sleep 778"],
        false,
        false,
    )
    .await;
    let (stdout, _) = ws_session(&url, "v5.channel.k8s.io", Vec::new(), Some(b"up")).await;
    assert_eq!(stdout, b"up\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes(b"sleep\x00778\x00") > 0 || fds(crispd) > before {
        assert!(
            Instant::now() < deadline,
            "left behind over WebSocket: {} processes, {} fds (was {before})",
            processes(b"sleep\x00778\x00"),
            fds(crispd)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    teardown(&mut rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy_and_websocket_reaches_the_pod() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let id = create(
        &mut rt,
        &s,
        &pod,
        container(
            &s,
            "web",
            "mkdir -p /www; echo hello-pod > /www/index.html; exec httpd -f -p 8080 -h /www",
        ),
    )
    .await;
    start(&mut rt, &id).await;
    let url =
        |rt: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>| {
            let pod = pod.clone();
            let mut rt = rt.clone();
            async move {
                rt.port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: vec![8080, 9],
                })
                .await
                .expect("port forward")
                .into_inner()
                .url
            }
        };
    // The server needs a moment to listen.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // SPDY: two connections at once to the web server, and one to a closed port.
    let spdy_url = url(&mut rt).await;
    let (answers, refused) = tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&spdy_url, "portforward.k8s.io");
        for (request, error, data, port) in
            [("1", 1, 3, "8080"), ("2", 5, 7, "8080"), ("3", 9, 11, "9")]
        {
            c.syn(
                error,
                &[
                    ("streamtype", "error"),
                    ("port", port),
                    ("requestid", request),
                ],
            );
            c.syn(
                data,
                &[
                    ("streamtype", "data"),
                    ("port", port),
                    ("requestid", request),
                ],
            );
        }
        for data in [3, 7] {
            c.data(data, b"GET /index.html HTTP/1.0\r\n\r\n", false);
        }
        let mut got: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let mut finished = std::collections::HashSet::new();
        while finished.len() < 6 {
            match c.next() {
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }) => {
                    got.entry(stream_id).or_default().extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        finished.insert(stream_id);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let answers: Vec<String> = [3, 7]
            .iter()
            .map(|d| {
                String::from_utf8_lossy(got.get(d).map(Vec::as_slice).unwrap_or_default())
                    .into_owned()
            })
            .collect();
        let refused = String::from_utf8_lossy(got.get(&9).map(Vec::as_slice).unwrap_or_default())
            .into_owned();
        (answers, refused)
    })
    .await
    .expect("client");
    for answer in &answers {
        assert!(
            answer.contains("200 OK") && answer.contains("hello-pod"),
            "{answer}"
        );
    }
    assert!(
        refused.contains("9") && refused.to_lowercase().contains("refused"),
        "{refused}"
    );

    // WebSocket: client-go tunnels the same SPDY connection in binary messages.
    let ws_url = url(&mut rt).await;
    let answer = ws_port_forward(&ws_url).await;
    assert!(answer.contains("hello-pod"), "{answer}");
    teardown(&mut rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_gets_output_and_sends_input_and_detaching_keeps_the_container() {
    let s = setup();
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let mut config = container(
        &s,
        "echo",
        "while read line; do echo echo-$line; echo err-$line >&2; done; echo bye",
    );
    config.stdin = true;
    let id = create(&mut rt, &s, &pod, config).await;
    start(&mut rt, &id).await;
    let attach_url =
        |rt: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>| {
            let mut rt = rt.clone();
            let id = id.clone();
            async move {
                rt.attach(cri::AttachRequest {
                    container_id: id,
                    stdin: true,
                    tty: false,
                    stdout: true,
                    stderr: true,
                })
                .await
                .expect("attach")
                .into_inner()
                .url
            }
        };

    // Two attachers at once: both see the output of what one of them typed.
    let (first, second) = (attach_url(&mut rt).await, attach_url(&mut rt).await);
    let (a, b) = tokio::task::spawn_blocking(move || {
        let mut watcher = Spdy::open(&second, "v4.channel.k8s.io");
        // It asked for stdin too (the URL's request says so), but types nothing.
        watcher.syn(1, &[("streamtype", "error")]);
        watcher.syn(3, &[("streamtype", "stdout")]);
        watcher.syn(5, &[("streamtype", "stderr")]);
        watcher.syn(7, &[("streamtype", "stdin")]);
        let mut typist = Spdy::open(&first, "v4.channel.k8s.io");
        typist.syn(1, &[("streamtype", "error")]);
        typist.syn(3, &[("streamtype", "stdin")]);
        typist.syn(5, &[("streamtype", "stdout")]);
        typist.syn(7, &[("streamtype", "stderr")]);
        std::thread::sleep(Duration::from_millis(300));
        typist.data(3, b"one\n", false);
        let a = typist.collect_until(5, b"echo-one");
        let b = watcher.collect_until(3, b"echo-one");
        (a, b)
    })
    .await
    .expect("clients");
    assert!(String::from_utf8_lossy(&a).contains("echo-one"));
    assert!(String::from_utf8_lossy(&b).contains("echo-one"));

    // Both detached (connections dropped): the container still runs, and a new attacher
    // drives it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("body");
    assert_eq!(
        status.state,
        i32::from(cri::ContainerState::ContainerRunning)
    );
    let third = attach_url(&mut rt).await;
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Spdy::open(&third, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdin")]);
        c.syn(5, &[("streamtype", "stdout")]);
        c.syn(7, &[("streamtype", "stderr")]);
        std::thread::sleep(Duration::from_millis(300));
        c.data(3, b"two\n", false);
        c.collect_until(7, b"err-two")
    })
    .await
    .expect("client");
    assert!(String::from_utf8_lossy(&out).contains("err-two"), "{out:?}");
    // And over WebSocket.
    let url = attach_url(&mut rt).await;
    let mut line = vec![0u8];
    line.extend_from_slice(b"three\n");
    let (stdout, _) = ws_session(&url, "v5.channel.k8s.io", vec![line], Some(b"echo-three")).await;
    assert!(
        String::from_utf8_lossy(&stdout).contains("echo-three"),
        "{stdout:?}"
    );
    let err = rt
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            tty: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("tty mismatch");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    teardown(&mut rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_server_speaks_tls_when_configured() {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let s = setup();
    let (cert, key) = (s.net.sandbox.path("tls.crt"), s.net.sandbox.path("tls.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (make test installs it)");
    assert!(made.status.success(), "{made:?}");
    s.net.sandbox.write_config(&format!(
        "[streaming]\naddress = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let daemon = s.net.sandbox.start();
    let (mut rt, pod) = ready(&s, &daemon).await;
    let id = create(&mut rt, &s, &pod, container(&s, "sh", "sleep 1000")).await;
    start(&mut rt, &id).await;
    let url = exec_url(&mut rt, &id, &["echo", "over-tls"], false, false).await;
    assert!(url.starts_with("https://"), "{url}");
    let got = tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&cert).expect("cert") {
            roots.add(c.expect("cert")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let tcp = TcpStream::connect(split_url(&url).0).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let stream = rustls::StreamOwned::new(tls, tcp);
        let mut c = Spdy::open_on(Box::new(stream), &url, "v4.channel.k8s.io");
        c.syn(1, &[("streamtype", "error")]);
        c.syn(3, &[("streamtype", "stdout")]);
        c.syn(5, &[("streamtype", "stderr")]);
        c.collect()
    })
    .await
    .expect("client");
    assert_eq!(got.get(&3).map(Vec::as_slice), Some(&b"over-tls\n"[..]));
    teardown(&mut rt).await;
}
