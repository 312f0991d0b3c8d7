//! ONNX: the protobuf types of the format (generated once from the official `onnx.proto`,
//! see `proto`), a small graph builder (`graph`), the EmotionCLIP exporter (`layers` writes
//! the model's layers as nodes, `export` assembles the two graphs and their manifest, `cli` is
//! `affectd export-onnx`, `quantize` its int8 weights and check) and ONNX Runtime sessions
//! for the exported graphs: the daemon's export cache (`cache`) and its encoder sessions
//! (`serve`).

pub mod cache;
pub mod cli;
pub mod export;
pub mod graph;
mod layers;
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto;
pub mod quantize;
pub mod serve;
pub mod session;

pub use cli::ExportArgs;
pub use export::{
    AttentionForm, Error, ExportManifest, ExportOptions, Int8Attention, Int8MatMul, Precision,
    WeightsSource, export, export_with,
};
