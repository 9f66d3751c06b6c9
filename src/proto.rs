//! The code generated from `proto/` by `build.rs`, and the descriptor set that server reflection
//! serves. Only [`crate::service`], [`crate::server`] and [`crate::request`] (which turns a
//! `CancelRequest` into domain types) touch these types.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

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

/// prost's codec with buffers sized for this API's messages, which are tiny: tonic's default
/// allocates 8 KiB per call for decoding and as much for encoding, which made up a large part of
/// the memory a call in flight holds. The buffers still grow when a message needs it.
pub struct SmallMessageCodec<T, U>(PhantomData<(T, U)>);

/// The first size of a call's encode and decode buffers: a CancelRequest with two typical IDs is
/// under 100 bytes, a CancelResponse 5.
const BUFFER_SIZE: usize = 256;

/// When a stream of messages yields to the runtime: tonic's default (unary calls never reach it).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

// === impl SmallMessageCodec ===

impl<T, U> Default for SmallMessageCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> std::fmt::Debug for SmallMessageCodec<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmallMessageCodec")
    }
}

impl<T, U> Codec for SmallMessageCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}
