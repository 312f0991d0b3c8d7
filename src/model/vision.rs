//! The subject-aware frame encoder: OpenCLIP's `VisualTransformer` with the subject (HMN)
//! token of subject-aware prompting (paper Sec. 3.3 and appendix B; upstream
//! `src/models/base.py`, `VisualTransformer.forward`).

use candle_core::{DType, IndexOp, Module, Result, Tensor, bail};
use candle_nn::{Init, VarBuilder};

use super::VisionConfig;
use super::transformer::{LN_EPS, LayerNorm, Transformer, layer_norm};

/// Keys under `backbone.visual`.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// `conv1.weight` [width, 3, P, P] flattened to [width, 3*P*P]: the patchify convolution
    /// has kernel = stride = P and no bias, so it is one matmul over unfolded patches.
    pub(crate) conv1: Tensor,
    pub(crate) class_embedding: Tensor,
    pub(crate) positional_embedding: Tensor,
    pub(crate) ln_pre: LayerNorm,
    pub(crate) transformer: Transformer,
    pub(crate) ln_post: LayerNorm,
    pub(crate) proj: Tensor,
    image_size: usize,
    pub(crate) patch_size: usize,
    pub(crate) grid_size: usize,
    width: usize,
}

/// Every intermediate of one frame-encoder pass (for parity tests and inspection).
#[derive(Debug, Clone)]
pub struct FrameTrace {
    /// [N, G*G]: the fraction of each patch covered by the subject mask.
    pub patch_weights: Tensor,
    /// [N, width]: the subject token before `ln_pre`.
    pub hmn_token: Tensor,
    /// [N, G*G+2, width]: class, patches, subject token, before `ln_pre`.
    pub tokens_pre_ln: Tensor,
    /// [N, G*G+2, width]: after `ln_pre`.
    pub tokens_post_ln_pre: Tensor,
    /// Output of each transformer block, [N, G*G+2, width].
    pub block_outputs: Vec<Tensor>,
    /// [N, width]: `ln_post` of the class token.
    pub cls_post_ln: Tensor,
    /// [N, embed_dim]: the frame feature.
    pub features: Tensor,
}

impl VisionTransformer {
    pub fn new(vb: VarBuilder, cfg: &VisionConfig, embed_dim: usize) -> Result<Self> {
        let (w, p, g) = (cfg.width, cfg.patch_size, cfg.grid_size());
        let scale = Init::Randn {
            mean: 0.,
            stdev: (w as f64).powf(-0.5),
        };
        let conv_init = Init::Randn {
            mean: 0.,
            stdev: ((3 * p * p) as f64).powf(-0.5),
        };
        let conv1 = vb
            .pp("conv1")
            .get_with_hints((w, 3, p, p), "weight", conv_init)?
            .reshape((w, 3 * p * p))?;
        Ok(Self {
            conv1,
            class_embedding: vb.get_with_hints(w, "class_embedding", scale)?,
            positional_embedding: vb.get_with_hints(
                (g * g + 1, w),
                "positional_embedding",
                scale,
            )?,
            ln_pre: layer_norm(w, LN_EPS, vb.pp("ln_pre"))?,
            transformer: Transformer::new(
                vb.pp("transformer"),
                w,
                cfg.layers,
                cfg.heads(),
                cfg.mlp_width(),
            )?,
            ln_post: layer_norm(w, LN_EPS, vb.pp("ln_post"))?,
            proj: vb.get_with_hints((w, embed_dim), "proj", scale)?,
            image_size: cfg.image_size,
            patch_size: p,
            grid_size: g,
            width: w,
        })
    }

    /// Subject weight of each patch: mean of the mask over the patch's pixel block
    /// (upstream `AvgPool2d(kernel_size=patch_size)`). `mask` [N, H, W], 0/1 of any dtype.
    pub fn patch_weights(&self, mask: &Tensor) -> Result<Tensor> {
        let (n, h, w) = mask.dims3()?;
        if h != self.image_size || w != self.image_size {
            bail!(
                "mask is {h}x{w}, the frame encoder needs {0}x{0}",
                self.image_size
            )
        }
        let (g, p) = (self.grid_size, self.patch_size);
        mask.to_dtype(DType::F32)?
            .reshape((n, g, p, g, p))?
            .mean(4)?
            .mean(2)?
            .reshape((n, g * g))
    }

    /// The subject token: patch weights times the *patch* rows of the positional embedding
    /// (not the class row), summed; no scaling, no normalisation. [N, G*G] -> [N, width].
    pub fn subject_token(&self, patch_weights: &Tensor) -> Result<Tensor> {
        let patch_pos = self.positional_embedding.i(1..)?;
        patch_weights.matmul(&patch_pos)
    }

    /// Token sequence before `ln_pre`: [class, patches] + positional embedding, then the
    /// subject token appended (it gets no positional embedding of its own).
    fn embed(&self, pixels: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, c, h, w) = pixels.dims4()?;
        if c != 3 || h != self.image_size || w != self.image_size {
            bail!(
                "pixels are [{n}, {c}, {h}, {w}], the frame encoder needs [N, 3, {0}, {0}]",
                self.image_size
            )
        }
        if mask.dim(0)? != n {
            bail!("{} masks for {n} frames", mask.dim(0)?)
        }
        let (g, p) = (self.grid_size, self.patch_size);
        let patches = pixels
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n, g * g, 3 * p * p))?
            .broadcast_matmul(&self.conv1.t()?)?;
        let class = self
            .class_embedding
            .reshape((1, 1, self.width))?
            .broadcast_as((n, 1, self.width))?
            .to_dtype(patches.dtype())?;
        let x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.positional_embedding)?;
        let weights = self.patch_weights(mask)?.to_dtype(x.dtype())?;
        let hmn = self.subject_token(&weights)?;
        let x = Tensor::cat(&[&x, &hmn.unsqueeze(1)?], 1)?;
        Ok((x, weights, hmn))
    }

    /// Frame features [N, embed_dim] and subject tokens [N, width] for `pixels` [N, 3, S, S]
    /// (ImageNet-normalised) and subject masks `mask` [N, S, S].
    pub fn forward(&self, pixels: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x, _, hmn) = self.embed(pixels, mask)?;
        // Only the class token is read out: the last block runs for it alone (`trace` keeps
        // every token of every block; the parity tests hold both to the same numbers).
        let cls = self.transformer.forward_first(&self.ln_pre.forward(&x)?)?;
        let cls = self.ln_post.forward(&cls)?;
        Ok((cls.matmul(&self.proj)?, hmn))
    }

    /// Same as `forward`, keeping every intermediate.
    pub fn trace(&self, pixels: &Tensor, mask: &Tensor) -> Result<FrameTrace> {
        self.transformer.held()?;
        let (tokens_pre_ln, patch_weights, hmn_token) = self.embed(pixels, mask)?;
        let tokens_post_ln_pre = self.ln_pre.forward(&tokens_pre_ln)?;
        let mut block_outputs = Vec::with_capacity(self.transformer.resblocks.len());
        let mut x = tokens_post_ln_pre.clone();
        for block in &self.transformer.resblocks {
            x = block.forward(&x, None)?;
            block_outputs.push(x.clone());
        }
        let cls_post_ln = self.ln_post.forward(&x.i((.., 0, ..))?)?;
        let features = cls_post_ln.matmul(&self.proj)?;
        Ok(FrameTrace {
            patch_weights,
            hmn_token,
            tokens_pre_ln,
            tokens_post_ln_pre,
            block_outputs,
            cls_post_ln,
            features,
        })
    }

    /// Whether the blocks' weights were released (`EmotionClip::release`).
    pub fn is_released(&self) -> bool {
        self.transformer.is_released()
    }

    /// Token width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }
}
