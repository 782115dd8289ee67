//! The CRI v1 gRPC services.

mod image;
mod runtime;
mod status;

pub use image::ImageService;
pub use runtime::RuntimeService;
