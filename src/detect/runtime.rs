//! ONNX Runtime itself: finding and loading the library, and opening a session with the first
//! execution provider that works (TensorRT -> CUDA -> CPU, each behind a cargo feature).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use super::Error;
use super::config::{DetectConfig, Provider};

/// The ONNX Runtime minor version this build needs at least (ort's `api-31` feature).
pub const ORT_MINOR: u32 = ort::MINOR_VERSION;

/// Where `scripts/install-deps.sh --system` puts the library; the shipped config and unit name
/// the file in it.
pub const SYSTEM_LIBRARY_DIR: &str = "/opt/affectd/onnxruntime/lib";

/// Where affectd looks for ONNX Runtime when neither the config nor `ORT_DYLIB_PATH` names it:
/// `<exe dir>/../lib/affectd/`, [`SYSTEM_LIBRARY_DIR`], and, for a developer's own runs only,
/// the working directory's `.venv` (never as root or under systemd, where the working
/// directory is no place to load code from).
pub fn library_search_list() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        dirs.push(exe_dir.join("../lib/affectd"));
    }
    dirs.push(PathBuf::from(SYSTEM_LIBRARY_DIR));
    if !searches_working_directory() {
        return dirs;
    }
    if let Ok(entries) = std::fs::read_dir(".venv/lib") {
        let mut pys: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages/onnxruntime/capi"))
            .collect();
        pys.sort();
        dirs.extend(pys);
    } else {
        dirs.push(PathBuf::from(
            ".venv/lib/python3*/site-packages/onnxruntime/capi",
        ));
    }
    dirs
}

/// Whether `./.venv` may be searched: not as root, not as a systemd service
/// (`INVOCATION_ID` is set for every unit's processes).
fn searches_working_directory() -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    !root && std::env::var_os("INVOCATION_ID").is_none()
}

/// The library file in `dir`: `libonnxruntime.so.1.<minor>.<patch>`, newest first, else a plain
/// `libonnxruntime.so`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(u32, u32, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("libonnxruntime.so")?;
            let mut parts = ver.trim_start_matches('.').split('.');
            let _major = parts.next();
            let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
            let patch = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
            Some((minor, patch, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, _, p)| p)
}

/// Picks the library: config, then `ORT_DYLIB_PATH`, then the search list. A named file must
/// exist; the error says who named it.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, Error> {
    let named = configured
        .map(|p| ("[detect] ort_library", p.to_owned()))
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(|p| ("ORT_DYLIB_PATH", PathBuf::from(p)))
        });
    if let Some((who, path)) = named {
        if !path.is_file() {
            return Err(Error::Library {
                problem: format!(
                    "{who} names {}, which does not exist; install ONNX Runtime 1.{ORT_MINOR} \
                     or newer (pip install onnxruntime==1.{ORT_MINOR}.1) and point it at \
                     onnxruntime/capi/libonnxruntime.so.1.{ORT_MINOR}.*",
                    path.display()
                ),
            });
        }
        return Ok(path);
    }
    let dirs = library_search_list();
    dirs.iter()
        .find_map(|d| library_in(d))
        .ok_or_else(|| Error::Library {
            problem: format!(
                "ONNX Runtime (libonnxruntime.so.1.{ORT_MINOR} or newer) not found; set \
                 [detect] ort_library or ORT_DYLIB_PATH, or install it (pip install \
                 onnxruntime==1.{ORT_MINOR}.1). Tried: {}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// The process's ONNX Runtime environment: one per process, created on first use.
static ENVIRONMENT: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);

pub(crate) fn environment(
    configured: Option<&Path>,
) -> Result<ort::environment::Environment, Error> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, env)) = slot.as_ref() {
        if configured.is_some_and(|c| c != path) {
            tracing::warn!(
                loaded = %path.display(),
                "ONNX Runtime is already loaded in this process; ignoring another ort_library"
            );
        }
        return Ok(env.clone());
    }
    let path = find_library(configured)?;
    let env = ort::init_from(&path)
        .map_err(|e| Error::Library {
            problem: e.to_string(),
        })?
        .with_name("affectd")
        .with_telemetry(false)
        .build()?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    *slot = Some((path, env.clone()));
    Ok(env)
}

/// Logs each unavailable provider only once per process and section.
static WARNED: OnceLock<Mutex<Vec<(&'static str, Provider)>>> = OnceLock::new();

fn warn_once(section: &'static str, p: Provider, why: &str) {
    let mut warned = WARNED
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&(section, p)) {
        warned.push((section, p));
        tracing::warn!(
            section,
            provider = p.name(),
            reason = why,
            "execution provider unavailable; trying the next one"
        );
    }
}

/// How to open a session: what the detector's `[detect]` and the encoder's `[model]` say.
#[derive(Debug, Clone)]
pub struct SessionSpec<'a> {
    /// The config section asking, for log lines and errors (`detect`, `model`).
    pub section: &'static str,
    /// The library to load when ONNX Runtime is not loaded yet (see [`find_library`]).
    pub ort_library: Option<&'a Path>,
    /// Execution providers to try, in order; the first that works is used.
    pub providers: &'a [Provider],
    /// Intra-op threads; 0 lets ONNX Runtime choose.
    pub threads: usize,
    /// TensorRT only: build fp16 engines.
    pub trt_fp16: bool,
    /// TensorRT only: where built engines are cached.
    pub trt_cache_dir: &'a Path,
}

impl<'a> SessionSpec<'a> {
    /// The detector's sessions, as `[detect]` says.
    pub fn detect(cfg: &'a DetectConfig) -> Self {
        Self {
            section: "detect",
            ort_library: cfg.ort_library.as_deref(),
            providers: &cfg.providers,
            threads: cfg.threads,
            trt_fp16: cfg.trt_fp16,
            trt_cache_dir: &cfg.trt_cache_dir,
        }
    }
}

/// Loads ONNX Runtime (once per process) and opens `model` with the first provider of
/// `cfg.providers` that works.
pub(super) fn open_session(cfg: &DetectConfig, model: &Path) -> Result<(Session, Provider), Error> {
    open_with(&SessionSpec::detect(cfg), model)
}

/// Loads ONNX Runtime (once per process) and opens `model` with the first provider of
/// `spec.providers` that works: every graph optimisation, `spec.threads` intra-op threads, no
/// spinning. An unavailable provider is logged once per process and section, then skipped.
pub fn open_with(spec: &SessionSpec<'_>, model: &Path) -> Result<(Session, Provider), Error> {
    let env = environment(spec.ort_library)?;
    let mut last: Option<Error> = None;
    for &p in spec.providers {
        let eps = match execution_provider(p, spec, model) {
            Ok(eps) => eps,
            Err(why) => {
                warn_once(spec.section, p, &why);
                continue;
            }
        };
        // No spin-waiting between runs: the detector and the encoder share the cores, and
        // ONNX Runtime's idle threads spinning after every run starve the other.
        let builder = Session::builder(&env)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort::Error::from)?
            .with_intra_op_spinning(false)
            .map_err(ort::Error::from)?;
        let builder = if spec.threads > 0 {
            builder
                .with_intra_threads(spec.threads)
                .map_err(ort::Error::from)?
        } else {
            builder
        };
        let built = builder
            .with_execution_providers(eps)
            .map_err(ort::Error::from)
            .and_then(|mut b| b.commit_from_file(model));
        match built {
            Ok(session) => return Ok((session, p)),
            Err(e) if p != Provider::Cpu => {
                warn_once(spec.section, p, &e.to_string());
                last = Some(e.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or(Error::Library {
        problem: format!(
            "no configured execution provider is usable; add \"cpu\" to [{}] providers",
            spec.section
        ),
    }))
}

#[allow(unused_variables)]
fn execution_provider(
    p: Provider,
    spec: &SessionSpec<'_>,
    model: &Path,
) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, String> {
    #[allow(unused_imports)]
    use ort::ep::ExecutionProvider;
    match p {
        Provider::Cpu => Ok(vec![ort::ep::CPU::default().build().error_on_failure()]),
        #[cfg(feature = "tensorrt")]
        Provider::Tensorrt => {
            if !ort::ep::TensorRT::is_available().unwrap_or(false) {
                return Err(
                    "this ONNX Runtime has no TensorRT provider (install onnxruntime-gpu)".into(),
                );
            }
            let cache = spec.trt_cache_dir;
            std::fs::create_dir_all(cache)
                .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
            let cached = std::fs::read_dir(cache)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".engine"))
                })
                .unwrap_or(false);
            if !cached {
                tracing::info!(
                    model = %model.display(),
                    cache = %cache.display(),
                    "building the TensorRT engine; this can take several minutes on first start"
                );
            }
            Ok(vec![
                ort::ep::TensorRT::default()
                    .with_fp16(spec.trt_fp16)
                    .with_engine_cache(true)
                    .with_engine_cache_path(cache.display())
                    .build()
                    .error_on_failure(),
            ])
        }
        #[cfg(not(feature = "tensorrt"))]
        Provider::Tensorrt => Err("affectd was built without the `tensorrt` feature".into()),
        #[cfg(feature = "cuda")]
        Provider::Cuda => {
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(
                    "this ONNX Runtime has no CUDA provider (install onnxruntime-gpu)".into(),
                );
            }
            Ok(vec![ort::ep::CUDA::default().build().error_on_failure()])
        }
        #[cfg(not(feature = "cuda"))]
        Provider::Cuda => Err("affectd was built without the `cuda` feature".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_found_by_version_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "libonnxruntime.so.1.22.0",
            "libonnxruntime.so.1.31.1",
            "other.so",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = library_in(dir.path()).unwrap();
        assert!(found.ends_with("libonnxruntime.so.1.31.1"), "{found:?}");
        assert!(library_in(&dir.path().join("missing")).is_none());
        let lib = dir.path().join("libonnxruntime.so.1.31.1");
        assert_eq!(find_library(Some(&lib)).unwrap(), lib);
        let e = find_library(Some(Path::new("/x/lib.so"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ONNX Runtime library: [detect] ort_library names /x/lib.so, which"),
            "{e}"
        );
    }
}
