//! The lifecycle's error type, and every domain error as a gRPC status. Matches are
//! exhaustive: a new error variant must decide its status code here. Nothing else in
//! `server` builds a `Status`, but the CRI layer's request checks where they stand.

use image::ImageError;
use runtime_handlers::HandlerError;
use tonic::Status;

/// What can go wrong in the pod and container lifecycle, by what the caller can do
/// about it.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The request is malformed, or asks for what crisp refuses.
    #[error("{0}")]
    Invalid(String),
    /// No such pod, container or image.
    #[error("{0}")]
    NotFound(String),
    /// A name (or attempt) already in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object or the node is not in a state that allows the call: a pod not ready,
    /// a container not running, the network plugin not ready, a handler that cannot run.
    #[error("{0}")]
    Precondition(String),
    /// Something this crisp cannot do yet.
    #[error("{0}")]
    Unsupported(String),
    /// Waiting for the runtime took too long.
    #[error("{0}")]
    Timeout(String),
    /// A release or teardown that left something to retry (the CNI plugin failed).
    #[error("{0}")]
    Retry(String),
    /// A runtime handler failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// An image lookup failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// crisp's own state could not be written or read (records, pod files, tasks).
    #[error("{0}")]
    Internal(String),
    /// An NRI plugin refused, or its adjustments cannot be carried out.
    #[error(transparent)]
    Nri(nri::EventError),
}

impl LifecycleError {
    /// [`LifecycleError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
    /// [`LifecycleError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    /// [`LifecycleError::AlreadyExists`].
    pub fn exists(message: impl Into<String>) -> Self {
        Self::AlreadyExists(message.into())
    }
    /// [`LifecycleError::Precondition`].
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::Precondition(message.into())
    }
    /// [`LifecycleError::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::Unsupported(message.into())
    }
    /// [`LifecycleError::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::Timeout(message.into())
    }
    /// [`LifecycleError::Retry`].
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry(message.into())
    }
    /// [`LifecycleError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

impl From<LifecycleError> for Status {
    fn from(error: LifecycleError) -> Self {
        match error {
            LifecycleError::Invalid(m) => Status::invalid_argument(m),
            LifecycleError::NotFound(m) => Status::not_found(m),
            LifecycleError::AlreadyExists(m) => Status::already_exists(m),
            LifecycleError::Precondition(m) => Status::failed_precondition(m),
            LifecycleError::Unsupported(m) => Status::unimplemented(m),
            LifecycleError::Timeout(m) => Status::deadline_exceeded(m),
            LifecycleError::Retry(m) => Status::unavailable(m),
            LifecycleError::Handler(e) => handler_status(e),
            LifecycleError::Image(e) => image_status(e),
            LifecycleError::Internal(m) => Status::internal(m),
            LifecycleError::Nri(e) => nri_status(e),
        }
    }
}

/// The status an NRI refusal answers with: a plugin's own error is passed on as
/// containerd passes it (Unknown: crisp cannot tell what kind it is).
fn nri_status(error: nri::EventError) -> Status {
    let message = error.to_string();
    match error {
        nri::EventError::Plugin { .. } | nri::EventError::Invalid { .. } => {
            Status::unknown(message)
        }
        nri::EventError::Conflict { .. } => Status::failed_precondition(message),
        nri::EventError::Unsupported(_) => Status::unimplemented(message),
    }
}

/// The status a failed image operation answers with.
pub fn image_status(error: ImageError) -> Status {
    let message = error.to_string();
    if error.is_out_of_space() {
        return Status::resource_exhausted(format!(
            "{message} (the filesystem of crisp's storage root is full)"
        ));
    }
    match error {
        ImageError::BadLayer {
            source: storage::UnpackError::TooLarge { .. },
            ..
        } => Status::resource_exhausted(format!(
            "{message} (image.max_layer_unpacked_bytes, image.max_image_unpacked_bytes and image.max_expansion_ratio set the limits)"
        )),
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
        ImageError::DigestMismatch { .. } | ImageError::WrongSize { .. } => {
            Status::data_loss(message)
        }
        ImageError::Stalled { .. } | ImageError::Deadline { .. } => {
            Status::deadline_exceeded(message)
        }
        ImageError::Store(_) | ImageError::Internal(_) => Status::internal(message),
    }
}

/// The status a failed runtime operation answers with.
pub fn handler_status(error: HandlerError) -> Status {
    use HandlerError as E;
    let message = error.to_string();
    match error {
        E::NotFound { .. } => Status::not_found(message),
        E::Timeout { .. } => Status::deadline_exceeded(message),
        E::Unsupported { .. } => Status::invalid_argument(message),
        E::Runtime { .. } | E::Monitor { .. } => Status::unknown(message),
        E::Spawn { .. } | E::Io { .. } => Status::internal(message),
        E::Precondition { .. } => Status::failed_precondition(message),
        E::Exhausted { .. } => Status::resource_exhausted(message),
        // A code the agent chose (or its connection's: Unavailable, Cancelled); never OK.
        E::Agent {
            code: tonic::Code::Ok,
            ..
        } => Status::unknown(message),
        E::Agent { code, .. } => Status::new(code, message),
        E::Vm {
            timed_out: true, ..
        } => Status::deadline_exceeded(message),
        E::Vm { .. } => Status::unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(code: tonic::Code) -> HandlerError {
        HandlerError::Agent {
            handler: "microvm".into(),
            operation: "start".into(),
            id: "c1".into(),
            code,
            message: "exec: no-such-command: executable file not found".into(),
        }
    }

    #[test]
    fn an_agent_failure_keeps_its_code_but_never_reads_as_success() {
        let refused = handler_status(agent(tonic::Code::FailedPrecondition));
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("no-such-command"), "{refused:?}");
        assert_eq!(
            handler_status(agent(tonic::Code::Ok)).code(),
            tonic::Code::Unknown
        );
    }
}
