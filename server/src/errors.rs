//! Domain errors as gRPC statuses. Matches are exhaustive: a new error variant must
//! decide its status code here.

use image::ImageError;
use tonic::Status;

/// The status a failed image operation answers with.
pub fn image_status(error: ImageError) -> Status {
    let message = error.to_string();
    match error {
        ImageError::Reference(_)
        | ImageError::AmbiguousId { .. }
        | ImageError::Schema1 { .. }
        | ImageError::NoMatchingPlatform { .. } => Status::invalid_argument(message),
        ImageError::NotFound { .. } => Status::not_found(message),
        ImageError::Unauthorized { .. } => Status::permission_denied(message),
        ImageError::Unavailable { .. } => Status::unavailable(message),
        ImageError::BadManifest { .. } | ImageError::BadLayer { .. } => {
            Status::failed_precondition(message)
        }
        ImageError::DigestMismatch { .. } => Status::data_loss(message),
        ImageError::Stalled { .. } | ImageError::Deadline { .. } => {
            Status::deadline_exceeded(message)
        }
        ImageError::Store(_) | ImageError::Internal(_) => Status::internal(message),
    }
}

/// The status a failed runtime operation answers with.
pub fn handler_status(error: runtime_handlers::HandlerError) -> Status {
    use runtime_handlers::HandlerError as E;
    let message = error.to_string();
    match error {
        E::NotFound { .. } => Status::not_found(message),
        E::Timeout { .. } => Status::deadline_exceeded(message),
        E::Unsupported { .. } => Status::invalid_argument(message),
        E::Runtime { .. } | E::Monitor { .. } => Status::unknown(message),
        E::Spawn { .. } | E::Io { .. } => Status::internal(message),
    }
}
