//! The code generated from `proto/` by `build.rs`, and the descriptor set that server reflection
//! serves. Only [`crate::service`] and [`crate::server`] touch these types.

/// The `graph.print.v1` package: `PrintJobService`, `CancelRequest` and `CancelResponse`.
#[allow(clippy::all, missing_docs)]
pub mod graph_print_v1 {
    tonic::include_proto!("graph.print.v1");
}

pub use graph_print_v1::{
    CancelRequest, CancelResponse,
    print_job_service_client::PrintJobServiceClient,
    print_job_service_server::{PrintJobService, PrintJobServiceServer},
};

/// The encoded `FileDescriptorSet` of everything under `proto/`, plus `google.rpc`'s error
/// details, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("print_job_service_descriptor");
