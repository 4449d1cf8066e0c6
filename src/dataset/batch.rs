//! A batch of decoded, preprocessed images, ready for a probe.

use candle_core::{Device, Tensor};

use super::skip::Skipped;
use crate::{Error, Result};

/// Images that decoded, preprocessed to CHW floats, with their labels; and the ones that did
/// not, with reasons. Made by [`super::Dataset::load_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len() * 3 * side * side` floats: each image's CHW planes, images in order.
    pub data: Vec<f32>,
    /// Side of each (square) image.
    pub side: usize,
    /// Class index of each image.
    pub labels: Vec<usize>,
    /// Dataset index of each image (those of skipped images are absent).
    pub indices: Vec<usize>,
    /// Images that could not be decoded, with reasons; each was also logged.
    pub skipped: Vec<Skipped>,
}

impl Batch {
    /// Number of images that decoded.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if no image decoded.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as an `[n, 3, side, side]` f32 tensor.
    pub fn images(&self, device: &Device) -> Result<Tensor> {
        let (n, s) = (self.len(), self.side);
        if self.data.len() != n * 3 * s * s {
            return Err(Error::Mismatch(format!(
                "batch holds {} floats for {n} images of 3×{s}×{s}",
                self.data.len()
            )));
        }
        Ok(Tensor::from_slice(&self.data, (n, 3, s, s), device)?)
    }

    /// The labels as an `[n]` u32 tensor (what candle's cross-entropy takes).
    pub fn label_tensor(&self, device: &Device) -> Result<Tensor> {
        let labels: Vec<u32> = self.labels.iter().map(|&y| y as u32).collect();
        Ok(Tensor::from_vec(labels, self.len(), device)?)
    }
}
