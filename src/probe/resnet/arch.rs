//! The ResNet variants and the exact list of tensors each one's torchvision checkpoint holds.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::probe::ParamKind;
use crate::{Error, Result};

/// A ResNet variant, in torchvision's definition (v1.5: a bottleneck block strides on its 3×3
/// convolution, not on its first 1×1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResNetArch {
    /// 18 layers: basic blocks `[2, 2, 2, 2]`, 512 features.
    #[serde(rename = "resnet18")]
    ResNet18,
    /// 34 layers: basic blocks `[3, 4, 6, 3]`, 512 features.
    #[serde(rename = "resnet34")]
    ResNet34,
    /// 50 layers: bottleneck blocks `[3, 4, 6, 3]`, 2048 features.
    #[serde(rename = "resnet50")]
    ResNet50,
}

/// Channels of the stem and the width (`planes`) of each of the four layers.
const STEM_CHANNELS: usize = 64;
const PLANES: [usize; 4] = [64, 128, 256, 512];

impl ResNetArch {
    /// Every variant, smallest first.
    pub const ALL: [ResNetArch; 3] = [
        ResNetArch::ResNet18,
        ResNetArch::ResNet34,
        ResNetArch::ResNet50,
    ];

    /// The architecture id recorded in [`crate::probe::ProbeInfo::arch`]: `resnet18`, ...
    pub fn name(self) -> &'static str {
        match self {
            ResNetArch::ResNet18 => "resnet18",
            ResNetArch::ResNet34 => "resnet34",
            ResNetArch::ResNet50 => "resnet50",
        }
    }

    /// Number of residual blocks in each of `layer1` .. `layer4`.
    pub fn blocks_per_layer(self) -> [usize; 4] {
        match self {
            ResNetArch::ResNet18 => [2, 2, 2, 2],
            ResNetArch::ResNet34 | ResNetArch::ResNet50 => [3, 4, 6, 3],
        }
    }

    /// Whether the blocks are bottlenecks (1×1, 3×3, 1×1 with 4× expansion) rather than basic
    /// blocks (two 3×3).
    pub fn bottleneck(self) -> bool {
        matches!(self, ResNetArch::ResNet50)
    }

    /// Output channels of a block relative to its width: 4 for bottlenecks, 1 for basic blocks.
    pub fn expansion(self) -> usize {
        if self.bottleneck() {
            4
        } else {
            1
        }
    }

    /// Length of the pooled penultimate feature vector: 512 or 2048.
    pub fn feature_dim(self) -> usize {
        PLANES[3] * self.expansion()
    }

    /// Number of residual blocks over the four layers.
    pub fn num_blocks(self) -> usize {
        self.blocks_per_layer().iter().sum()
    }

    /// Number of probe stages: the stem, then one per residual block.
    pub fn num_stages(self) -> usize {
        1 + self.num_blocks()
    }

    /// The block plan, in order: for each block its layer (0-based), index inside the layer,
    /// input channels, width, and stride.
    pub(crate) fn plan(self) -> Vec<BlockPlan> {
        let mut out = Vec::with_capacity(self.num_blocks());
        let mut in_ch = STEM_CHANNELS;
        for (layer, (&n, &planes)) in self
            .blocks_per_layer()
            .iter()
            .zip(PLANES.iter())
            .enumerate()
        {
            for index in 0..n {
                let stride = if layer > 0 && index == 0 { 2 } else { 1 };
                let out_ch = planes * self.expansion();
                out.push(BlockPlan {
                    layer,
                    index,
                    in_ch,
                    planes,
                    out_ch,
                    stride,
                });
                in_ch = out_ch;
            }
        }
        out
    }

    /// Every tensor a checkpoint of this architecture holds with `num_classes` classifier
    /// outputs, in `named_modules()` order. `num_batches_tracked` is not listed: it is optional
    /// (checkpoints saved before PyTorch 0.4.1 lack it) and unused.
    pub(crate) fn layout(self, num_classes: usize) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        conv_spec(&mut out, "conv1", [STEM_CHANNELS, 3, 7, 7], Some(0));
        bn_spec(&mut out, "bn1", STEM_CHANNELS, Some(0));
        for (i, b) in self.plan().into_iter().enumerate() {
            let stage = Some(i + 1);
            let prefix = format!("layer{}.{}", b.layer + 1, b.index);
            let convs: Vec<[usize; 4]> = if self.bottleneck() {
                vec![
                    [b.planes, b.in_ch, 1, 1],
                    [b.planes, b.planes, 3, 3],
                    [b.out_ch, b.planes, 1, 1],
                ]
            } else {
                vec![[b.planes, b.in_ch, 3, 3], [b.out_ch, b.planes, 3, 3]]
            };
            for (j, shape) in convs.into_iter().enumerate() {
                conv_spec(&mut out, &format!("{prefix}.conv{}", j + 1), shape, stage);
                bn_spec(&mut out, &format!("{prefix}.bn{}", j + 1), shape[0], stage);
            }
            if b.has_downsample() {
                conv_spec(
                    &mut out,
                    &format!("{prefix}.downsample.0"),
                    [b.out_ch, b.in_ch, 1, 1],
                    stage,
                );
                bn_spec(&mut out, &format!("{prefix}.downsample.1"), b.out_ch, stage);
            }
        }
        let f = self.feature_dim();
        out.push(TensorSpec::param(
            "fc",
            "weight",
            vec![num_classes, f],
            ParamKind::ClassifierWeight,
            None,
        ));
        out.push(TensorSpec::param(
            "fc",
            "bias",
            vec![num_classes],
            ParamKind::ClassifierBias,
            None,
        ));
        out
    }

    /// Name and shape of every tensor a torchvision checkpoint of this variant holds with a
    /// `num_classes`-way classifier, in `named_modules()` order (parameters, then running
    /// statistics, within each module). The optional `*.num_batches_tracked` counters are not
    /// listed.
    pub fn checkpoint_shapes(self, num_classes: usize) -> Vec<(String, Vec<usize>)> {
        self.layout(num_classes)
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect()
    }

    /// Recognises the architecture from a checkpoint's key names: the number of blocks in each
    /// layer and whether blocks have a `conv3`.
    pub fn detect(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        Self::detect_from_names(tensors.keys().map(String::as_str))
    }

    /// [`ResNetArch::detect`] on bare key names.
    pub fn detect_from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut blocks = [0usize; 4];
        let mut bottleneck = false;
        let mut any = false;
        for name in names {
            any = true;
            let Some(rest) = name.strip_prefix("layer") else {
                continue;
            };
            let mut parts = rest.split('.');
            let (Some(layer), Some(index), Some(module)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(layer), Ok(index)) = (layer.parse::<usize>(), index.parse::<usize>()) else {
                continue;
            };
            if !(1..=4).contains(&layer) {
                continue;
            }
            blocks[layer - 1] = blocks[layer - 1].max(index + 1);
            bottleneck |= module == "conv3";
        }
        if !any {
            return Err(Error::Mismatch(
                "cannot detect the ResNet variant: no tensors".into(),
            ));
        }
        Self::ALL
            .into_iter()
            .find(|a| a.blocks_per_layer() == blocks && a.bottleneck() == bottleneck)
            .ok_or_else(|| {
                Error::Mismatch(format!(
                    "cannot detect the ResNet variant: the keys describe {} blocks {:?}, which is \
                     none of resnet18 (basic [2, 2, 2, 2]), resnet34 (basic [3, 4, 6, 3]) or \
                     resnet50 (bottleneck [3, 4, 6, 3]); expected torchvision key names such as \
                     `layer1.0.conv1.weight`",
                    if bottleneck { "bottleneck" } else { "basic" },
                    blocks
                ))
            })
    }
}

impl fmt::Display for ResNetArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ResNetArch {
    type Err = Error;

    /// Parses `resnet18`, `resnet34` or `resnet50` (case-insensitive, `-` and `_` ignored).
    fn from_str(s: &str) -> Result<Self> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_lowercase();
        Self::ALL
            .into_iter()
            .find(|a| a.name() == norm)
            .ok_or_else(|| {
                Error::Mismatch(format!(
                    "unknown ResNet variant `{s}` (expected resnet18, resnet34 or resnet50)"
                ))
            })
    }
}

/// One residual block of the plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockPlan {
    /// 0-based layer (`layer1` is 0).
    pub layer: usize,
    /// Index inside the layer.
    pub index: usize,
    /// Input channels.
    pub in_ch: usize,
    /// Width of the inner convolutions.
    pub planes: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Stride of the block (on its 3×3 convolution and on the downsample).
    pub stride: usize,
}

impl BlockPlan {
    /// A projection shortcut is needed when the block changes resolution or width (torchvision's
    /// rule).
    pub fn has_downsample(&self) -> bool {
        self.stride != 1 || self.in_ch != self.out_ch
    }
}

/// One tensor of a checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct TensorSpec {
    /// Full key, e.g. `layer1.0.bn1.running_var`.
    pub name: String,
    /// Owning module, e.g. `layer1.0.bn1`.
    pub module: String,
    /// Expected shape.
    pub shape: Vec<usize>,
    /// `Some` for trainable parameters, `None` for BN running statistics.
    pub kind: Option<ParamKind>,
    /// Probe stage of the owning module (`None` for the classifier).
    pub stage: Option<usize>,
}

impl TensorSpec {
    fn param(
        module: &str,
        leaf: &str,
        shape: Vec<usize>,
        kind: ParamKind,
        stage: Option<usize>,
    ) -> Self {
        TensorSpec {
            name: format!("{module}.{leaf}"),
            module: module.to_string(),
            shape,
            kind: Some(kind),
            stage,
        }
    }

    fn buffer(module: &str, leaf: &str, shape: Vec<usize>, stage: Option<usize>) -> Self {
        TensorSpec {
            name: format!("{module}.{leaf}"),
            module: module.to_string(),
            shape,
            kind: None,
            stage,
        }
    }
}

fn conv_spec(out: &mut Vec<TensorSpec>, module: &str, shape: [usize; 4], stage: Option<usize>) {
    out.push(TensorSpec::param(
        module,
        "weight",
        shape.to_vec(),
        ParamKind::Conv,
        stage,
    ));
}

fn bn_spec(out: &mut Vec<TensorSpec>, module: &str, c: usize, stage: Option<usize>) {
    out.push(TensorSpec::param(
        module,
        "weight",
        vec![c],
        ParamKind::BnWeight,
        stage,
    ));
    out.push(TensorSpec::param(
        module,
        "bias",
        vec![c],
        ParamKind::BnBias,
        stage,
    ));
    out.push(TensorSpec::buffer(module, "running_mean", vec![c], stage));
    out.push(TensorSpec::buffer(module, "running_var", vec![c], stage));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_torchvision_parameter_counts() {
        // torchvision: sum(p.numel() for p in resnetXX().parameters()).
        for (arch, expected) in [
            (ResNetArch::ResNet18, 11_689_512usize),
            (ResNetArch::ResNet34, 21_797_672),
            (ResNetArch::ResNet50, 25_557_032),
        ] {
            let n: usize = arch
                .layout(1000)
                .iter()
                .filter(|s| s.kind.is_some())
                .map(|s| s.shape.iter().product::<usize>())
                .sum();
            assert_eq!(n, expected, "{arch}");
        }
    }

    #[test]
    fn downsample_only_where_torchvision_has_one() {
        let with_ds = |a: ResNetArch| -> Vec<String> {
            a.plan()
                .iter()
                .filter(|b| b.has_downsample())
                .map(|b| format!("layer{}.{}", b.layer + 1, b.index))
                .collect()
        };
        assert_eq!(
            with_ds(ResNetArch::ResNet18),
            ["layer2.0", "layer3.0", "layer4.0"]
        );
        assert_eq!(
            with_ds(ResNetArch::ResNet50),
            ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
        );
    }

    #[test]
    fn names_round_trip() {
        for a in ResNetArch::ALL {
            assert_eq!(a.name().parse::<ResNetArch>().unwrap(), a);
        }
        assert_eq!(
            "ResNet-50".parse::<ResNetArch>().unwrap(),
            ResNetArch::ResNet50
        );
        assert!("resnet101".parse::<ResNetArch>().is_err());
    }
}
