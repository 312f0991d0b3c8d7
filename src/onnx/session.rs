//! ONNX Runtime sessions for exported graphs on the CPU, loading the library the way the
//! detector does (`[detect] ort_library` / `ORT_DYLIB_PATH` / the search list).

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::detect::Error;

/// Opens `model` on the CPU provider with every graph optimisation, `threads` intra-op
/// threads (0: ONNX Runtime's default) and no spinning. With `optimized_model`, ONNX Runtime
/// also writes the optimised graph there (to count what it fused).
pub fn open_cpu(
    model: &Path,
    threads: usize,
    optimized_model: Option<&Path>,
) -> Result<Session, Error> {
    let env = crate::detect::ort_environment(None)?;
    let mut builder = Session::builder(&env)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort::Error::from)?
        .with_intra_op_spinning(false)
        .map_err(ort::Error::from)?;
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(ort::Error::from)?;
    }
    if let Some(path) = optimized_model {
        builder = builder
            .with_optimized_model_path(path)
            .map_err(ort::Error::from)?;
    }
    Ok(builder.commit_from_file(model)?)
}
