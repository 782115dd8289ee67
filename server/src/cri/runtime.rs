//! The CRI RuntimeService. Version, Status and RuntimeConfig answer for real; the rest
//! land with their issues.

use std::sync::Arc;

use cri_proto::v1 as cri;
use tonic::{Request, Response, Status};

use crate::state::Daemon;

/// The name crisp reports in VersionResponse.
pub const RUNTIME_NAME: &str = "crisp";

/// RuntimeService over the daemon's state.
pub struct RuntimeService {
    daemon: Arc<Daemon>,
}

impl RuntimeService {
    /// The service for `daemon`.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }

    /// Runs a call that changes pods or containers to its end in a task of its own. A
    /// client that gives up (its deadline, a cancel) drops the call's future; what the
    /// call made so far must still be finished and recorded, or undone, not left half-way
    /// (a pod's init, a VM, a container at the runtime).
    async fn to_completion<T, F>(&self, call: impl FnOnce(Arc<Daemon>) -> F) -> Result<T, Status>
    where
        F: std::future::Future<Output = Result<T, crate::errors::LifecycleError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(call(Arc::clone(&self.daemon)))
            .await
            .map_err(|e| Status::internal(format!("the call's task failed: {e}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for RuntimeService {
    type StreamPodSandboxesStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<cri::StreamPodSandboxesResponse, Status>> + Send,
        >,
    >;
    type StreamContainersStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::StreamContainersResponse, Status>> + Send>,
    >;
    type StreamContainerStatsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<cri::StreamContainerStatsResponse, Status>>
                + Send,
        >,
    >;
    type StreamPodSandboxStatsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<cri::StreamPodSandboxStatsResponse, Status>>
                + Send,
        >,
    >;
    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;
    type StreamPodSandboxMetricsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<cri::StreamPodSandboxMetricsResponse, Status>>
                + Send,
        >,
    >;

    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime_api_version: cri_proto::CRI_API_VERSION.to_owned(),
        }))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let config = self.daemon.config();
        let handlers = std::sync::Arc::clone(&self.daemon.handlers);
        let verbose = request.into_inner().verbose;
        // Reading the CNI directory touches the filesystem; keep it off the runtime threads.
        let response =
            tokio::task::spawn_blocking(move || super::status::status(&config, &handlers, verbose))
                .await
                .map_err(|e| Status::internal(format!("status check failed: {e}")))?;
        Ok(Response::new(response))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let id = self
            .to_completion(|daemon| async move { crate::pod::run(&daemon, request).await })
            .await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.to_completion(|daemon| async move { crate::pod::stop(&daemon, &id).await })
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.to_completion(|daemon| async move { crate::pod::remove(&daemon, &id).await })
            .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let status =
            crate::pod::status(&self.daemon, &request.pod_sandbox_id, request.verbose).await?;
        Ok(Response::new(status))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let items = crate::pod::list(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let items = crate::pod::list(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(in_chunks(items, |c| {
            cri::StreamPodSandboxesResponse { pod_sandboxes: c }
        })))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let container_id = self
            .to_completion(|daemon| async move { crate::container::create(&daemon, request).await })
            .await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.to_completion(|daemon| async move { crate::container::start(&daemon, &id).await })
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        self.to_completion(|daemon| async move {
            crate::container::stop(&daemon, &request.container_id, request.timeout).await
        })
        .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.to_completion(|daemon| async move { crate::container::remove(&daemon, &id).await })
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let status =
            crate::container::status(&self.daemon, &request.container_id, request.verbose).await?;
        Ok(Response::new(status))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let encoded =
            crate::container::list_encoded(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(cri::ListContainersResponse {
            containers: Vec::new(),
            encoded,
        }))
    }

    async fn stream_containers(
        &self,
        request: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let items = crate::container::list(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(in_chunks(items, |c| {
            cri::StreamContainersResponse { containers: c }
        })))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        crate::container::update_resources(&self.daemon, &request.container_id, request.linux)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        crate::container::reopen_log(&self.daemon, &request.into_inner().container_id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let response = crate::container::exec_sync(&self.daemon, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let stats =
            crate::stats::container(&self.daemon, &request.into_inner().container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let stats = crate::stats::list_containers(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn stream_container_stats(
        &self,
        request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let stats = crate::stats::list_containers(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(in_chunks(stats, |c| {
            cri::StreamContainerStatsResponse { container_stats: c }
        })))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let stats =
            crate::stats::pod_sandbox(&self.daemon, &request.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let stats =
            crate::stats::list_pod_sandboxes(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let stats =
            crate::stats::list_pod_sandboxes(&self.daemon, request.into_inner().filter).await;
        Ok(Response::new(in_chunks(stats, |c| {
            cri::StreamPodSandboxStatsResponse {
                pod_sandbox_stats: c,
            }
        })))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::stats::metric_descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: crate::stats::pod_metrics(&self.daemon).await,
        }))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let metrics = crate::stats::pod_metrics(&self.daemon).await;
        Ok(Response::new(in_chunks(metrics, |c| {
            cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics: c,
            }
        })))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let url = crate::streaming::exec_url(&self.daemon, request.into_inner())?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let url = crate::streaming::attach_url(&self.daemon, request.into_inner())?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let url = crate::streaming::port_forward_url(&self.daemon, request.into_inner())?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            crate::pod::set_pod_cidr(&self.daemon.config(), &cidr)?;
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        // kubelet sizes the pod cgroup itself; the runtime learns the new totals. crisp
        // keeps no pod-level cgroup of its own, so it checks the pod, tells NRI plugins
        // and accepts.
        let request = request.into_inner();
        let id = request.pod_sandbox_id;
        let Some(pod) = self.daemon.pods.get(&id) else {
            return Err(Status::not_found(format!("pod sandbox {id} not found")));
        };
        crate::nri::update_pod(
            &self.daemon,
            &pod.snapshot(),
            request.overhead.as_ref(),
            request.resources.as_ref(),
        )
        .await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }

    async fn checkpoint_container(
        &self,
        request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        if self.daemon.containers.get(&id).is_none() {
            return Err(Status::not_found(format!("container {id} not found")));
        }
        let criu = runtime_handlers::resolve_binary(std::path::Path::new("criu"));
        Err(Status::unimplemented(match criu {
            None => {
                "CheckpointContainer needs CRIU, which is not installed on this host".to_owned()
            }
            Some(path) => format!(
                "CheckpointContainer is not supported by crisp yet (CRIU is at {})",
                path.display()
            ),
        }))
    }

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        use tokio::sync::broadcast::error::RecvError;
        let events = self.daemon.events.subscribe();
        let stream = futures::stream::unfold(Some(events), |state| async move {
            let mut events = state?;
            match events.recv().await {
                Ok(event) => Some((Ok(event), Some(events))),
                Err(RecvError::Lagged(missed)) => Some((
                    Err(Status::resource_exhausted(format!(
                        "this subscriber fell {missed} events behind; subscribe again and relist"
                    ))),
                    None,
                )),
                Err(RecvError::Closed) => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        let driver = match self.daemon.config().cgroup_driver {
            conf::CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
            conf::CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver.into(),
            }),
        }))
    }
}

/// The messages of a server stream: `items` in chunks of 500 (well under gRPC's 4 MiB
/// message limit for any CRI item), each wrapped by `wrap`.
fn in_chunks<T, R>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R,
) -> std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<R, Status>> + Send>>
where
    T: Clone,
    R: Send + 'static,
{
    let messages: Vec<Result<R, Status>> =
        items.chunks(500).map(|c| Ok(wrap(c.to_vec()))).collect();
    Box::pin(tokio_stream::iter(messages))
}
