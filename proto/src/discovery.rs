//! gRPC reflection for every Herald server: clients such as `grpcurl` or a Python client list
//! and call the services without the `.proto` files (both the v1 and the older v1alpha protocol,
//! which different clients speak).

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ServerReflectionAlpha,
    ServerReflectionServer as ServerReflectionAlphaServer,
};

/// Why the reflection services could not be built (the checked-in descriptors are broken).
pub type ReflectionError = tonic_reflection::server::Error;

/// Reflection (v1) over `herald.v1` and the descriptors in `extra` (for example the health
/// service's).
pub fn reflection_v1(
    extra: &[&'static [u8]],
) -> Result<ServerReflectionServer<impl ServerReflection>, ReflectionError> {
    builder(extra).build_v1()
}

/// Reflection (v1alpha) over the same descriptors as [`reflection_v1`].
pub fn reflection_v1alpha(
    extra: &[&'static [u8]],
) -> Result<ServerReflectionAlphaServer<impl ServerReflectionAlpha>, ReflectionError> {
    builder(extra).build_v1alpha()
}

fn builder(extra: &[&'static [u8]]) -> tonic_reflection::server::Builder<'static> {
    extra.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET),
        |builder, set| builder.register_encoded_file_descriptor_set(set),
    )
}
