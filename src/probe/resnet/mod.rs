//! ResNet-18/34/50 probes in torchvision's layout, forward and backward in candle.
//!
//! The network is torchvision's `resnet18` / `resnet34` / `resnet50` (v1.5 bottlenecks): stem
//! `conv1` (7×7, stride 2) → `bn1` → ReLU → max-pool (3×3, stride 2, padding 1), four layers of
//! residual blocks, global average pooling and the `fc` classifier. Every batch norm uses
//! eps = 1e-5.
//!
//! **Stages.** Stage 0 is the stem (through the max-pool); stage `i ≥ 1` is the `i`-th residual
//! block in order (`layer1.0` is stage 1). ResNet-18 has 9 stages, ResNet-34 and ResNet-50 have
//! 17. The global average pooling is part of the last stage, so `forward_stages(x, 0, num_stages)`
//! returns the pooled features `[N, feature_dim]`.
//!
//! **Input size.** Any size works; 224×224 is the ImageNet convention. The network downsamples
//! 32×: a CIFAR-style 32×32 input reaches `layer4` at 1×1 (16 after `conv1`, 8 after the
//! max-pool, then 8, 4, 2, 1 through the layers). With BN in [`BnMode::Train`](crate::probe::BnMode)
//! the batch statistics of `layer4` are then taken over N values only; a batch of one image
//! gives zero variance there, so each of those batch norms outputs its bias (PyTorch refuses such
//! a batch instead).
//!
//! **Gradients.** On the CPU the convolutions' backward pass is made of forward convolutions
//! (see `conv.rs`): faster than candle's, and correct for non-square inputs. On other devices
//! candle's own backward is used, whose transposed convolution takes its output padding from the
//! height alone: there, gradients need square inputs (or a height and width of the same parity),
//! which the probes' centre crops are. The max-pool is differentiable on every device (see
//! [`max_pool_3x3_s2_p1`]). Gradients flow to the parameters when [`Forward::grad`] is set, and
//! to the input whenever it is a tracked tensor.

mod arch;
mod block;
mod conv;
mod max_pool;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

pub use arch::ResNetArch;
pub use max_pool::max_pool_3x3_s2_p1;

use self::arch::TensorSpec;
use self::block::{Block, Conv, ConvBn};
use crate::dataset::Preprocess;
use crate::probe::layers::{global_avg_pool, param, BatchNorm};
use crate::probe::ops::Activation;
use crate::probe::{Forward, Probe, ProbeInfo, ProbeParam};
use crate::{Error, Result};

/// Batch-norm epsilon of every torchvision ResNet.
pub const BN_EPS: f64 = 1e-5;

/// A torchvision ResNet as a Task2Vec probe.
#[derive(Debug)]
pub struct ResNet {
    arch: ResNetArch,
    info: ProbeInfo,
    stem: ConvBn,
    blocks: Vec<Block>,
    fc_weight: Var,
    fc_bias: Var,
    params: Vec<ProbeParam>,
    device: Device,
    dtype: DType,
}

impl ResNet {
    /// Builds the network from a torchvision state dict.
    ///
    /// Strict, as PyTorch's `load_state_dict(strict=True)`: every tensor of `arch` must be
    /// present with its exact shape, and no other key may be; `*.num_batches_tracked` is
    /// accepted and ignored, or may be absent (old checkpoints lack it). The classifier may have
    /// any number of classes. Tensors are converted to `dtype` (a float type) on `device`.
    /// Errors are [`Error::Mismatch`] naming the offending keys.
    pub fn from_tensors(
        arch: ResNetArch,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
        weights_sha256: String,
    ) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Mismatch(format!(
                "{arch}: weights dtype must be a float type, not {dtype:?}"
            )));
        }
        let num_classes = classifier_classes(tensors);
        let layout = arch.layout(num_classes);
        check_keys(arch, &layout, tensors)?;

        let mut vars: HashMap<&str, Var> = HashMap::new();
        let mut buffers: HashMap<&str, Tensor> = HashMap::new();
        let mut params = Vec::new();
        for spec in &layout {
            // Present and well-shaped: `check_keys` said so.
            let t = &tensors[&spec.name];
            if !t.dtype().is_float() {
                return Err(Error::Mismatch(format!(
                    "{arch}: tensor `{}` has dtype {:?}, expected a float type",
                    spec.name,
                    t.dtype()
                )));
            }
            let t = t.to_dtype(dtype)?.to_device(device)?;
            match spec.kind {
                Some(kind) => {
                    let var = Var::from_tensor(&t)?;
                    params.push(ProbeParam {
                        name: spec.name.clone(),
                        module: spec.module.clone(),
                        kind,
                        stage: spec.stage,
                        var: var.clone(),
                    });
                    vars.insert(spec.name.as_str(), var);
                }
                None => {
                    buffers.insert(spec.name.as_str(), t);
                }
            }
        }
        let conv = |module: &str, stride: usize, padding: usize| Conv {
            weight: vars[format!("{module}.weight").as_str()].clone(),
            stride,
            padding,
        };
        let bn = |module: &str| BatchNorm {
            weight: vars[format!("{module}.weight").as_str()].clone(),
            bias: vars[format!("{module}.bias").as_str()].clone(),
            running_mean: buffers[format!("{module}.running_mean").as_str()].clone(),
            running_var: buffers[format!("{module}.running_var").as_str()].clone(),
            eps: BN_EPS,
        };
        let conv_bn = |c: &str, b: &str, stride: usize, padding: usize| ConvBn {
            conv: conv(c, stride, padding),
            bn: bn(b),
        };

        let stem = conv_bn("conv1", "bn1", 2, 3);
        let mut blocks = Vec::with_capacity(arch.num_blocks());
        for b in arch.plan() {
            let p = format!("layer{}.{}", b.layer + 1, b.index);
            let cb = |j: usize, stride: usize, padding: usize| {
                conv_bn(
                    &format!("{p}.conv{j}"),
                    &format!("{p}.bn{j}"),
                    stride,
                    padding,
                )
            };
            let branch = if arch.bottleneck() {
                vec![cb(1, 1, 0), cb(2, b.stride, 1), cb(3, 1, 0)]
            } else {
                vec![cb(1, b.stride, 1), cb(2, 1, 1)]
            };
            let downsample = b.has_downsample().then(|| {
                conv_bn(
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    b.stride,
                    0,
                )
            });
            blocks.push(Block { branch, downsample });
        }

        let info = ProbeInfo {
            arch: arch.name().to_string(),
            weights_sha256,
            feature_dim: arch.feature_dim(),
            num_classes,
            num_stages: arch.num_stages(),
            preprocess: Preprocess::imagenet(),
        };
        Ok(ResNet {
            arch,
            info,
            stem,
            blocks,
            fc_weight: vars["fc.weight"].clone(),
            fc_bias: vars["fc.bias"].clone(),
            params,
            device: device.clone(),
            dtype,
        })
    }

    /// Loads a torchvision checkpoint (safetensors, zip-format or legacy `.pth`). With
    /// `arch: None` the variant is detected from the key names. The recorded
    /// `weights_sha256` is that of the tensors as read (see
    /// [`crate::probe::weights::tensors_sha256`]). Errors name the file.
    pub fn load(
        path: &Path,
        arch: Option<ResNetArch>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let list = crate::probe::weights::read_tensors(path)?;
        let sha = crate::probe::weights::tensors_sha256(&list)?;
        let mut map = HashMap::with_capacity(list.len());
        for (name, t) in list {
            if map.insert(name.clone(), t).is_some() {
                return Err(Error::weights(path, format!("key `{name}` appears twice")));
            }
        }
        let in_file = |e: Error| match e {
            Error::Mismatch(what) => Error::weights(path, what),
            other => other,
        };
        let arch = match arch {
            Some(a) => a,
            None => ResNetArch::detect(&map).map_err(in_file)?,
        };
        Self::from_tensors(arch, &map, device, dtype, sha).map_err(in_file)
    }

    /// The variant.
    pub fn arch(&self) -> ResNetArch {
        self.arch
    }

    fn check_input(&self, x: &Tensor, from: usize) -> Result<()> {
        if x.dtype() != self.dtype {
            return Err(Error::Mismatch(format!(
                "{}: input dtype {:?} differs from the weights' {:?}",
                self.arch,
                x.dtype(),
                self.dtype
            )));
        }
        if from == 0 && (x.rank() != 4 || x.dim(1)? != 3) {
            return Err(Error::Mismatch(format!(
                "{}: input images must be [N, 3, H, W], got {:?}",
                self.arch,
                x.dims()
            )));
        }
        Ok(())
    }
}

impl Probe for ResNet {
    fn info(&self) -> &ProbeInfo {
        &self.info
    }

    fn forward_stages(&self, x: &Tensor, from: usize, to: usize, fwd: Forward) -> Result<Tensor> {
        let n = self.info.num_stages;
        if from > to || to > n {
            return Err(Error::Mismatch(format!(
                "{}: stages {from}..{to} out of range (the probe has {n} stages)",
                self.arch
            )));
        }
        self.check_input(x, from)?;
        let mut h = x.clone();
        for stage in from..to {
            h = if stage == 0 {
                max_pool_3x3_s2_p1(&self.stem.forward(&h, fwd, Activation::Relu)?)?
            } else {
                self.blocks[stage - 1].forward(&h, fwd)?
            };
            if stage == n - 1 {
                h = global_avg_pool(&h)?;
            }
        }
        Ok(h)
    }

    fn classify(&self, features: &Tensor, fwd: Forward) -> Result<Tensor> {
        let f = self.info.feature_dim;
        if features.rank() != 2 || features.dim(1)? != f {
            return Err(Error::Mismatch(format!(
                "{}: features must be [N, {f}], got {:?}",
                self.arch,
                features.dims()
            )));
        }
        let w = param(&self.fc_weight, fwd);
        let b = param(&self.fc_bias, fwd);
        Ok(features.matmul(&w.t()?)?.broadcast_add(&b)?)
    }

    fn params(&self) -> &[ProbeParam] {
        &self.params
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Number of classes of the checkpoint's classifier: the first dimension of a 2-D `fc.weight`.
/// Without one, 1000 (ImageNet), so that the strict check reports `fc.weight` among the other
/// problems.
fn classifier_classes(tensors: &HashMap<String, Tensor>) -> usize {
    match tensors.get("fc.weight").map(|w| w.dims()) {
        Some(&[k, _]) if k > 0 => k,
        _ => 1000,
    }
}

/// Strict key and shape check; lists every problem (the first few of each kind).
fn check_keys(
    arch: ResNetArch,
    layout: &[TensorSpec],
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    const SHOWN: usize = 5;
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for spec in layout {
        match tensors.get(&spec.name) {
            None => missing.push(format!("`{}`", spec.name)),
            Some(t) if t.dims() != spec.shape.as_slice() => wrong.push(format!(
                "`{}` is {:?}, expected {:?}",
                spec.name,
                t.dims(),
                spec.shape
            )),
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = layout.iter().map(|s| s.name.as_str()).collect();
    let mut unexpected: Vec<String> = tensors
        .iter()
        .filter(|(k, t)| {
            if known.contains(k.as_str()) {
                return false;
            }
            // `num_batches_tracked` of a known batch norm: a scalar counter, unused.
            match k.strip_suffix(".num_batches_tracked") {
                Some(module) => {
                    !(known.contains(format!("{module}.running_mean").as_str())
                        && t.elem_count() == 1)
                }
                None => true,
            }
        })
        .map(|(k, _)| format!("`{k}`"))
        .collect();
    unexpected.sort();
    if missing.is_empty() && wrong.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let list = |what: &str, items: &[String]| -> Option<String> {
        if items.is_empty() {
            return None;
        }
        let more = items.len().saturating_sub(SHOWN);
        let shown = items[..items.len().min(SHOWN)].join(", ");
        Some(if more > 0 {
            format!("{} {what}: {shown} and {more} more", items.len())
        } else {
            format!("{} {what}: {shown}", items.len())
        })
    };
    let mut parts: Vec<String> = [
        list("missing", &missing),
        list("with the wrong shape", &wrong),
        list("unexpected", &unexpected),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Ok(other) = ResNetArch::detect(tensors) {
        if other != arch {
            parts.push(format!("the keys look like {other}"));
        }
    }
    Err(Error::Mismatch(format!(
        "{arch} weights do not fit: {}",
        parts.join("; ")
    )))
}
