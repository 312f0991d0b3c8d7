//! `affectd export-onnx`: the exporter on the command line. Writes both graphs and the
//! manifest into `--out`; int8 is checked against the f32 export on captured windows
//! (`--check-windows`) and refused below `--min-cosine` unless `--force`.

use std::path::PathBuf;

use super::export::{
    AttentionForm, Error, ExportOptions, Int8Attention, Int8MatMul, MANIFEST_FILE, Precision,
    WeightsSource, build,
};
use crate::model::{EmotionClip, EmotionClipConfig};

/// Arguments of `affectd export-onnx`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Weights: `.safetensors` or the official release `.pt` (official key names).
    #[arg(long = "model", value_name = "W")]
    pub model: PathBuf,
    /// Model config JSON in the official layout; default: the ViT-B/32 preset.
    #[arg(long = "model-config", value_name = "C.json")]
    pub model_config: Option<PathBuf>,
    /// Output folder: frame_encoder.onnx, temporal_encoder.onnx, manifest.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// f32; fp16 (f16 weights and activations, f32 inputs and outputs: for the CUDA and
    /// TensorRT providers); int8 (int8 MatMul weights per output channel, activations
    /// quantised at run time: for the CPU; checked against f32 on --check-windows).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Spell attention out in plain opset-17 ops instead of ONNX Runtime's fused
    /// `com.microsoft.Attention` (for runtimes without contrib ops).
    #[arg(long)]
    pub standard_attention: bool,
    /// int8: a capture dataset (`[capture] dir`) whose windows the int8 graphs are compared
    /// on against the f32 graphs (video and frame cosine, top-1 zero-shot agreement).
    #[arg(long, value_name = "DIR")]
    pub check_windows: Option<PathBuf>,
    /// int8: compare on at most this many windows, evenly spaced through the dataset.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub check_limit: usize,
    /// int8: refuse below this mean video-embedding cosine to f32.
    #[arg(long, value_name = "C", default_value_t = super::quantize::MIN_COSINE)]
    pub min_cosine: f32,
    /// int8: write the export even below --min-cosine, or without --check-windows.
    #[arg(long)]
    pub force: bool,
    /// int8: how each quantised MatMul is written (default: the fastest measured here).
    #[arg(
        long,
        value_enum,
        hide = true,
        default_value = "dynamic-quantize-mat-mul"
    )]
    pub int8_matmul: Int8MatMulArg,
    /// int8: how attention's QKV projection is written.
    #[arg(long, value_enum, hide = true, default_value = "q-attention")]
    pub int8_attention: Int8AttentionArg,
    /// int8: quantise the temporal encoder too.
    #[arg(long, hide = true)]
    pub int8_temporal: bool,
}

/// [`Int8MatMul`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Int8MatMulArg {
    DynamicQuantizeMatMul,
    MatMulIntegerToFloat,
    MatMulInteger,
}

/// [`Int8Attention`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Int8AttentionArg {
    QAttention,
    Standard,
    F32,
}

impl ExportArgs {
    fn options(&self) -> ExportOptions {
        let form = if self.standard_attention {
            AttentionForm::Standard
        } else {
            AttentionForm::Contrib
        };
        ExportOptions {
            int8_matmul: match self.int8_matmul {
                Int8MatMulArg::DynamicQuantizeMatMul => Int8MatMul::DynamicQuantizeMatMul,
                Int8MatMulArg::MatMulIntegerToFloat => Int8MatMul::MatMulIntegerToFloat,
                Int8MatMulArg::MatMulInteger => Int8MatMul::MatMulInteger,
            },
            int8_attention: match self.int8_attention {
                Int8AttentionArg::QAttention => Int8Attention::QAttention,
                Int8AttentionArg::Standard => Int8Attention::Standard,
                Int8AttentionArg::F32 => Int8Attention::F32,
            },
            int8_temporal: self.int8_temporal,
            ..ExportOptions::new(self.precision, form)
        }
    }
}

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "affectd-export-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|error| Error::Io {
            path: dir.clone(),
            error,
        })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `affectd export-onnx`.
pub fn run(args: &ExportArgs) -> Result<(), Error> {
    let opts = args.options();
    let int8 = opts.precision == Precision::Int8;
    if !int8 && (args.check_windows.is_some() || args.force) {
        return Err(Error::Usage(
            "--check-windows and --force are for --precision int8".into(),
        ));
    }
    if int8 && args.check_windows.is_none() && !args.force {
        return Err(Error::Usage(
            "--precision int8 is checked against f32 on captured windows: give \
             --check-windows DIR (a capture dataset, `[capture] dir`), or --force to write it \
             unchecked"
                .into(),
        ));
    }
    let windows = match &args.check_windows {
        Some(dir) => {
            let w = crate::train::data::CapturedWindows::open(dir)
                .map_err(|e| Error::Usage(format!("--check-windows {}: {e:#}", dir.display())))?;
            Some(w)
        }
        None => None,
    };
    let cfg = match &args.model_config {
        Some(path) => EmotionClipConfig::from_json_file(path)?,
        None => EmotionClipConfig::vit_b32(),
    };
    if let (Some(w), Some(dir)) = (&windows, &args.check_windows) {
        w.check_fits(&cfg, "the model")
            .map_err(|e| Error::Usage(format!("--check-windows {}: {e:#}", dir.display())))?;
    }
    let sha256 = crate::digest::sha256_file(&args.model).map_err(|error| Error::Io {
        path: args.model.clone(),
        error,
    })?;
    let model = EmotionClip::load(&args.model, &cfg, &candle_core::Device::Cpu)?;
    let source = WeightsSource::File { sha256 };
    let mut built = build(&model, &source, &opts)?;
    if let (Some(windows), Some(dir)) = (&windows, &args.check_windows) {
        // Both exports to scratch folders, compared there; the int8 one reaches `out` only
        // when it passes (or is forced).
        let reference = Scratch::new("f32")?;
        build(
            &model,
            &source,
            &ExportOptions::new(Precision::F32, opts.attention),
        )?
        .write(&reference.0)?;
        let candidate = Scratch::new("int8")?;
        built.write(&candidate.0)?;
        let mut check = super::quantize::compare(
            &model,
            &reference.0,
            &candidate.0,
            windows,
            &dir.display().to_string(),
            args.check_limit,
            args.min_cosine,
        )?;
        println!("{}", check.report());
        if !check.passed {
            if !args.force {
                return Err(Error::Refused(format!(
                    "int8 refused: mean video-embedding cosine to f32 {:.5} is below {} \
                     (nothing written to {}; --force writes it anyway)",
                    check.video_cosine_mean,
                    args.min_cosine,
                    args.out.display()
                )));
            }
            check.forced = true;
            println!(
                "below --min-cosine {}, written because of --force",
                args.min_cosine
            );
        }
        if let Some(info) = &mut built.manifest.int8 {
            info.check = Some(check);
        }
    } else if int8 {
        println!("int8 written unchecked (--force without --check-windows)");
    }
    let m = built.write(&args.out)?;
    println!(
        "wrote {} ({}), {} ({}) and {} ({}) to {}",
        m.frame_encoder.file,
        &m.frame_encoder.sha256[..12],
        m.temporal_encoder.file,
        &m.temporal_encoder.sha256[..12],
        MANIFEST_FILE,
        m.precision.name(),
        args.out.display()
    );
    Ok(())
}
