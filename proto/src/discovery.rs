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

/// Reflection (v1) listing `services` (the fully-qualified names of what this server serves,
/// whose descriptors are in `herald.v1` or `extra`, for example the health service's) and
/// itself: a client lists only what it can call, and describe, here.
pub fn reflection_v1(
    extra: &[&'static [u8]],
    services: &[&str],
) -> Result<ServerReflectionServer<impl ServerReflection>, ReflectionError> {
    builder(extra, services, "grpc.reflection.v1.ServerReflection").build_v1()
}

/// Reflection (v1alpha) over the same services as [`reflection_v1`], listing itself.
pub fn reflection_v1alpha(
    extra: &[&'static [u8]],
    services: &[&str],
) -> Result<ServerReflectionAlphaServer<impl ServerReflectionAlpha>, ReflectionError> {
    builder(extra, services, "grpc.reflection.v1alpha.ServerReflection").build_v1alpha()
}

/// The builder over herald.v1 and `extra`, listing `services` and `reflection`: the reflection
/// service of the protocol version it answers, the one whose descriptor it holds.
fn builder(
    extra: &[&'static [u8]],
    services: &[&str],
    reflection: &str,
) -> tonic_reflection::server::Builder<'static> {
    let builder = extra.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET),
        |builder, set| builder.register_encoded_file_descriptor_set(set),
    );
    services
        .iter()
        .copied()
        .chain([reflection])
        .fold(builder, |builder, name| builder.with_service_name(name))
}
