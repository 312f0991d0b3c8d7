//! ONNX: the protobuf types of the format (generated once from the official `onnx.proto`,
//! see `proto`), a small graph builder, the EmotionCLIP exporter (`affectd export-onnx`) and
//! CPU sessions of ONNX Runtime for the exported graphs.

pub mod export;
pub mod graph;
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto;
pub mod session;

pub use export::{
    AttentionForm, Error, ExportArgs, ExportManifest, Precision, WeightsSource, export,
};
