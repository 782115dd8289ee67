//! The CRI ImageService. Pulling and storing images land with the images issue.

use std::sync::Arc;

use cri_proto::v1 as cri;

use crate::cri::{NoStream, cri_service_impl};
use crate::state::Daemon;

/// ImageService over the daemon's state.
pub struct ImageService {
    #[allow(dead_code)]
    daemon: Arc<Daemon>,
}

impl ImageService {
    /// The service for `daemon`.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }
}

cri_service_impl! {
impl (cri::image_service_server::ImageService) for ImageService {
    type StreamImagesStream = NoStream<cri::StreamImagesResponse>;

}
unimplemented {
        list_images(ListImagesRequest) -> cri::ListImagesResponse, "ListImages";
        stream_images(StreamImagesRequest) -> Self::StreamImagesStream, "StreamImages";
        image_status(ImageStatusRequest) -> cri::ImageStatusResponse, "ImageStatus";
        pull_image(PullImageRequest) -> cri::PullImageResponse, "PullImage";
        remove_image(RemoveImageRequest) -> cri::RemoveImageResponse, "RemoveImage";
        image_fs_info(ImageFsInfoRequest) -> cri::ImageFsInfoResponse, "ImageFsInfo";
}
}
