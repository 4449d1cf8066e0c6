//! The layers of a ResNet: bias-free convolutions and the two kinds of residual block.

use candle_core::{Tensor, Var};

use crate::probe::layers::{param, BatchNorm};
use crate::probe::ops::{add_relu, Activation};
use crate::probe::Forward;
use crate::Result;

/// A convolution without bias (every ResNet convolution is followed by a batch norm).
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    /// Kernel `[out, in, k, k]`.
    pub weight: Var,
    pub stride: usize,
    pub padding: usize,
}

impl Conv {
    pub fn forward(&self, x: &Tensor, fwd: Forward) -> Result<Tensor> {
        super::conv::conv2d(x, &param(&self.weight, fwd), self.stride, self.padding)
    }
}

/// A convolution followed by its batch norm.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    pub conv: Conv,
    pub bn: BatchNorm,
}

impl ConvBn {
    /// The convolution, its batch norm and `act` (fused with the batch norm in training mode).
    pub fn forward(&self, x: &Tensor, fwd: Forward, act: Activation) -> Result<Tensor> {
        self.bn.forward_act(&self.conv.forward(x, fwd)?, fwd, act)
    }
}

/// A residual block: `relu(branch(x) + shortcut(x))`, where the branch is `conv1, bn1, relu,
/// conv2, bn2` (basic block) or `conv1, bn1, relu, conv2, bn2, relu, conv3, bn3` (bottleneck),
/// and the shortcut is the identity or `downsample` (1×1 strided convolution and batch norm).
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// The branch's convolutions in order; ReLU between them, not after the last.
    pub branch: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

impl Block {
    pub fn forward(&self, x: &Tensor, fwd: Forward) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.branch.len() - 1;
        for (i, layer) in self.branch.iter().enumerate() {
            let act = if i < last {
                Activation::Relu
            } else {
                Activation::Identity
            };
            h = layer.forward(&h, fwd, act)?;
        }
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward(x, fwd, Activation::Identity)?,
            None => x.clone(),
        };
        add_relu(&h, &shortcut)
    }
}
