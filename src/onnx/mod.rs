//! ONNX: the protobuf types of the format (generated once from the official `onnx.proto`,
//! see `proto`), a small graph builder, the EmotionCLIP exporter (`affectd export-onnx`) and
//! ONNX Runtime sessions for the exported graphs: the daemon's export cache (`cache`) and its
//! encoder sessions (`serve`).

pub mod cache;
pub mod export;
pub mod graph;
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto;
pub mod quantize;
pub mod serve;
pub mod session;

pub use export::{
    AttentionForm, Error, ExportArgs, ExportManifest, ExportOptions, Int8Attention, Int8MatMul,
    Precision, WeightsSource, export, export_with,
};
