//! `crisp-nri-env`: a small NRI plugin that sets environment variables in every container
//! created on the node, the ones its configuration lists (one `KEY=value` per line; `#`
//! starts a comment). An example of a plugin built on the `nri` crate, and the plugin
//! crisp's tests install in the pre-installed plugin directory.
//!
//! Started by the runtime (from `/opt/nri/plugins/NN-env`), it talks over the socket the
//! runtime hands it as fd 3 and gets its configuration from the runtime. Started by hand,
//! `crisp-nri-env [SOCKET] [KEY=value...]` connects to SOCKET (default
//! `/var/run/nri/nri.sock`) with the variables given.

use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use nri::api;
use nri::peer::Handler;
use nri::stub::Stub;
use prost::Message as _;

/// The variables from a configuration text.
fn parse(config: &str) -> Vec<api::KeyValue> {
    config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| api::KeyValue {
            key: k.trim().to_owned(),
            value: v.trim().to_owned(),
        })
        .collect()
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crisp-nri-env: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crisp-nri-env: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = std::env::var("NRI_PLUGIN_NAME").unwrap_or_else(|_| "env".to_owned());
    let idx = std::env::var("NRI_PLUGIN_IDX").unwrap_or_else(|_| "50".to_owned());
    let env = Arc::new(Mutex::new(parse(
        &args.iter().skip(1).cloned().collect::<Vec<_>>().join("\n"),
    )));
    let stream = match std::env::var("NRI_PLUGIN_SOCKET") {
        Ok(fd) => {
            let fd: i32 = fd
                .parse()
                .map_err(|_| format!("NRI_PLUGIN_SOCKET={fd} is not a file descriptor"))?;
            // SAFETY: the runtime started this process with its end of a socket pair on
            // `fd`, which nothing else here uses.
            let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
            std.set_nonblocking(true).map_err(|e| e.to_string())?;
            tokio::net::UnixStream::from_std(std).map_err(|e| e.to_string())?
        }
        Err(_) => {
            let socket = args.first().map_or("/var/run/nri/nri.sock", String::as_str);
            tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| format!("connecting to {socket}: {e}"))?
        }
    };
    let handler: Handler = {
        let env = Arc::clone(&env);
        Arc::new(move |method: String, payload: Vec<u8>| {
            let env = Arc::clone(&env);
            Box::pin(async move {
                let mut env = match env.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                match method.as_str() {
                    "Configure" => {
                        if let Ok(c) = api::ConfigureRequest::decode(payload.as_slice())
                            && !c.config.is_empty()
                        {
                            *env = parse(&c.config);
                        }
                        Ok(Vec::new())
                    }
                    "CreateContainer" => Ok(api::CreateContainerResponse {
                        adjust: Some(api::ContainerAdjustment {
                            env: env.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                    .encode_to_vec()),
                    _ => Ok(Vec::new()),
                }
            })
        })
    };
    // Subscribed to CreateContainer (event 4) only.
    let stub = Stub::on(stream, &name, &idx, 1 << 3, handler).await?;
    stub.closed().await;
    Ok(())
}
