//! The CRI v1 gRPC services.

mod image;
mod runtime;
mod status;

pub use image::ImageService;
pub use runtime::RuntimeService;

/// The answer of every RPC whose issue has not landed yet.
pub(crate) fn unimplemented(rpc: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("{rpc} is not implemented by crisp yet"))
}

/// Implements a CRI service trait: the given items as written, plus a method answering
/// `Unimplemented` for each listed RPC. It wraps the whole impl because `async_trait`
/// must see every `async fn` of it.
macro_rules! cri_service_impl {
    (
        impl ($($trait:tt)*) for $ty:ty {
            $($item:tt)*
        }
        unimplemented {
            $($method:ident($req:ident) -> $resp:ty, $name:literal;)*
        }
    ) => {
        #[tonic::async_trait]
        impl $($trait)* for $ty {
            $($item)*
            $(
                async fn $method(
                    &self,
                    _request: tonic::Request<cri_proto::v1::$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    Err(crate::cri::unimplemented($name))
                }
            )*
        }
    };
}
pub(crate) use cri_service_impl;
