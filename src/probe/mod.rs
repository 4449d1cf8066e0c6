//! Probe networks: fixed pretrained feature extractors that run forward *and backward* in candle.
//!
//! A probe is split into *stages* (the stem, each residual block, the head convolution). The
//! Task2Vec `skip_layers` setting starts the network at a later stage: activations below it are
//! computed once, cached, and fed to [`Probe::forward_stages`]. Parameters are candle [`Var`]s
//! so the Fisher estimators can take gradients with respect to them.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::dataset::Preprocess;
use crate::{Error, Result};

pub mod efficientnet_lite;
pub mod imagenet;
pub mod layers;
pub mod ops;
pub mod resnet;
pub mod spec;
pub mod weights;

/// How batch normalisation behaves in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Use the stored running statistics (inference behaviour).
    Eval,
    /// Use the current batch's mean and biased variance, with gradients through them (what the
    /// reference Task2Vec code does by calling `model.train()`). Running statistics are never
    /// updated: the probe stays fixed.
    Train,
}

/// Options of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Batch-norm behaviour.
    pub bn: BnMode,
    /// Record the graph so gradients with respect to the probe's parameters can be taken. When
    /// false the weights are used detached: cheaper, no graph kept alive.
    pub grad: bool,
}

impl Forward {
    /// Inference: BN in eval mode, no gradient graph.
    pub const INFERENCE: Forward = Forward {
        bn: BnMode::Eval,
        grad: false,
    };
}

/// What a parameter is, which decides how Task2Vec averages its Fisher per filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A dense convolution kernel `[out, in, kh, kw]` (1×1 convolutions included).
    Conv,
    /// A depthwise convolution kernel `[channels, 1, kh, kw]`.
    Depthwise,
    /// A batch-norm scale (gamma), one value per channel.
    BnWeight,
    /// A batch-norm shift (beta), one value per channel.
    BnBias,
    /// The shipped classifier's weight `[classes, features]` (never part of an embedding).
    ClassifierWeight,
    /// The shipped classifier's bias.
    ClassifierBias,
}

/// One trainable tensor of a probe, in the network's module order.
#[derive(Debug, Clone)]
pub struct ProbeParam {
    /// Full parameter name in the PyTorch checkpoint layout, e.g. `_blocks.1._expand_conv.weight`.
    pub name: String,
    /// The module that owns it, e.g. `_blocks.1._expand_conv`.
    pub module: String,
    /// What it is.
    pub kind: ParamKind,
    /// The stage the parameter belongs to (see [`Probe::num_stages`]); `None` for the classifier.
    pub stage: Option<usize>,
    /// The tensor itself.
    pub var: Var,
}

/// Facts about a loaded probe, recorded in every embedding made with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Architecture id, e.g. `efficientnet-lite0`, `resnet18`.
    pub arch: String,
    /// SHA-256 (hex) of the weights as loaded (tensor names, shapes and bytes), so two probes with
    /// the same architecture but different weights are told apart.
    pub weights_sha256: String,
    /// Length of the penultimate feature vector.
    pub feature_dim: usize,
    /// Number of classes of the shipped classifier (1000 for ImageNet-1k).
    pub num_classes: usize,
    /// Number of stages `forward_stages` accepts.
    pub num_stages: usize,
    /// How images must be prepared for this probe.
    pub preprocess: Preprocess,
}

/// A perturbation of every convolution's output during a forward pass: the hook through which
/// the variational Fisher adds its weight noise (local reparametrisation, see
/// `crate::fisher::variational`). Used by [`Probe::forward_stages_perturbed`].
pub trait ConvPerturbation {
    /// A tensor to add to the raw output of convolution `module` (before its batch norm), or
    /// `None` to leave it as it is.
    ///
    /// `input` is the convolution's input; `conv(a, k)` applies this layer's convolution (same
    /// stride, padding and groups, no bias) to any input `a` shaped like `input` and any kernel
    /// `k` shaped like the layer's weight, differentiably in both.
    fn perturb(
        &self,
        module: &str,
        input: &Tensor,
        conv: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Option<Tensor>>;
}

/// A probe network.
pub trait Probe: Send + Sync {
    /// Facts about this probe.
    fn info(&self) -> &ProbeInfo;

    /// Runs stages `from..to` on `x` (the input image batch `[N, 3, H, W]` when `from == 0`, the
    /// cached output of stage `from - 1` otherwise). With `to == num_stages` the result is the
    /// pooled penultimate features `[N, feature_dim]`.
    fn forward_stages(&self, x: &Tensor, from: usize, to: usize, fwd: Forward) -> Result<Tensor>;

    /// [`Probe::forward_stages`] with `hook` adding a perturbation to the output of every
    /// convolution, before its batch norm. Probes that do not support it return
    /// [`Error::Mismatch`] (the default).
    fn forward_stages_perturbed(
        &self,
        x: &Tensor,
        from: usize,
        to: usize,
        fwd: Forward,
        hook: &dyn ConvPerturbation,
    ) -> Result<Tensor> {
        let _ = (x, from, to, fwd, hook);
        Err(Error::Mismatch(format!(
            "probe `{}` does not support perturbed forward passes (needed by the variational \
             Fisher)",
            self.info().arch
        )))
    }

    /// Applies the shipped classifier to pooled features, giving logits `[N, num_classes]`.
    fn classify(&self, features: &Tensor, fwd: Forward) -> Result<Tensor>;

    /// Every parameter in module order (the order of PyTorch's `named_modules()`), classifier last.
    fn params(&self) -> &[ProbeParam];

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// The dtype of the weights.
    fn dtype(&self) -> DType;

    /// Pooled penultimate features of an image batch.
    fn features(&self, images: &Tensor, fwd: Forward) -> Result<Tensor> {
        self.forward_stages(images, 0, self.info().num_stages, fwd)
    }

    /// ImageNet logits of an image batch.
    fn logits(&self, images: &Tensor, fwd: Forward) -> Result<Tensor> {
        let f = self.features(images, fwd)?;
        self.classify(&f, fwd)
    }
}
