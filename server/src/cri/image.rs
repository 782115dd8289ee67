//! The CRI ImageService over the image crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cri_proto::v1 as cri;
use image::ImageRecord;
use tonic::{Request, Response, Status};

use crate::errors::image_status;
use crate::state::Daemon;

/// ImageService over the daemon's state.
pub struct ImageService {
    daemon: Arc<Daemon>,
}

impl ImageService {
    /// The service for `daemon`.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }

    /// The images a filter selects (all without one).
    async fn filtered(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>, Status> {
        let images = &self.daemon.images;
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let records = match wanted {
            Some(spec) => images
                .find(&spec)
                .await
                .map_err(image_status)?
                .into_iter()
                .collect(),
            None => images.list().await.map_err(image_status)?,
        };
        let pinned = self.pinned_ids().await?;
        Ok(records
            .iter()
            .map(|r| to_cri(r, pinned.contains(&r.id)))
            .collect())
    }

    /// IDs of the images the configuration pins.
    async fn pinned_ids(&self) -> Result<Vec<String>, Status> {
        let config = self.daemon.config();
        let mut ids = Vec::new();
        for name in config
            .pinned_images
            .iter()
            .chain(std::iter::once(&config.pause_image))
        {
            if let Some(record) = self.daemon.images.find(name).await.map_err(image_status)? {
                ids.push(record.id);
            }
        }
        Ok(ids)
    }
}

/// A stored image as the CRI shows it.
fn to_cri(record: &ImageRecord, pinned: bool) -> cri::Image {
    let (repo_digests, repo_tags): (Vec<String>, Vec<String>) =
        record.names.iter().cloned().partition(|n| n.contains('@'));
    // USER is `uid`, `name`, `uid:gid` or `name:group`; CRI reports the user part.
    let user = record.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_owned()),
    };
    cri::Image {
        id: record.id.clone(),
        repo_tags,
        repo_digests,
        size: record.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned,
    }
}

fn spec_of(image: Option<cri::ImageSpec>) -> Result<String, Status> {
    match image.map(|s| s.image) {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(Status::invalid_argument(
            "an image reference or ID is required (ImageSpec.image is empty)",
        )),
    }
}

type ImageStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<cri::StreamImagesResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageService {
    type StreamImagesStream = ImageStream;

    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let images = self.filtered(request.into_inner().filter).await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn stream_images(
        &self,
        request: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.filtered(request.into_inner().filter).await?;
        // Chunks keep each message well under gRPC's 4 MiB default limit.
        let chunks: Vec<Result<cri::StreamImagesResponse, Status>> = images
            .chunks(500)
            .map(|c| Ok(cri::StreamImagesResponse { images: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let spec = spec_of(request.image)?;
        let images = &self.daemon.images;
        let Some(record) = images.find(&spec).await.map_err(image_status)? else {
            // Absence is an empty answer, not an error (kubelet pulls on it).
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let pinned = self.pinned_ids().await?.contains(&record.id);
        let mut info = HashMap::new();
        if request.verbose {
            let config = images.config(&record).await.map_err(image_status)?;
            let config: serde_json::Value = serde_json::from_slice(&config)
                .map_err(|e| Status::internal(format!("stored image config is not JSON: {e}")))?;
            let verbose = serde_json::json!({
                "imageSpec": config,
                "manifestDigest": record.manifest_digest,
                "chainID": record.chain_ids.last(),
                "pulledAt": record.pulled_at,
            });
            info.insert("info".to_owned(), verbose.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(&record, pinned)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let request = request.into_inner();
        let spec = spec_of(request.image)?;
        let credentials = request.auth.and_then(|a| {
            crate::options::credentials(
                Some(a.username.as_str()),
                Some(a.password.as_str()),
                Some(a.auth.as_str()),
                Some(a.identity_token.as_str()),
                Some(a.registry_token.as_str()),
            )
        });
        let started = std::time::Instant::now();
        let pulled = self.daemon.images.pull(&spec, credentials).await;
        self.daemon.metrics.pull(
            pulled.is_ok(),
            pulled.as_ref().map_or(0, |r| r.size),
            started.elapsed(),
        );
        let record = pulled.map_err(image_status)?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let spec = spec_of(request.into_inner().image)?;
        if let Some(image) = self.daemon.images.find(&spec).await.map_err(image_status)? {
            // Its layers are the lower layers of these containers' root filesystems.
            if let Some((_, record)) = self
                .daemon
                .containers
                .snapshots_where(|r| r.image_id == image.id)
                .into_iter()
                .next()
            {
                return Err(Status::failed_precondition(format!(
                    "image {spec} is in use by container {}; remove the container first",
                    record.id
                )));
            }
        }
        self.daemon
            .images
            .remove(&spec)
            .await
            .map_err(image_status)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let images = &self.daemon.images;
        let usage = images.usage().await.map_err(image_status)?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let fs = cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: images.root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}
