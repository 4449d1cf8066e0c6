//! Turning a decoded image into the tensor a probe expects.

use serde::{Deserialize, Serialize};

/// How a probe wants its input images: resize so the shorter side is `resize_shorter`
/// (bilinear, antialiased when shrinking, as PIL's `BILINEAR`), centre-crop `crop`×`crop`, then
/// `x = (pixel - mean) / std` per RGB channel with pixels in 0..=255, layout CHW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Target length of the shorter side after resizing.
    pub resize_shorter: u32,
    /// Side of the square centre crop.
    pub crop: u32,
    /// Per-channel mean, in pixel units (0..=255).
    pub mean: [f32; 3],
    /// Per-channel standard deviation, in pixel units.
    pub std: [f32; 3],
}

impl Preprocess {
    /// EfficientNet-Lite's convention: 256 → 224, `(p - 127) / 128`.
    pub fn efficientnet_lite() -> Self {
        Preprocess { resize_shorter: 256, crop: 224, mean: [127.0; 3], std: [128.0; 3] }
    }

    /// torchvision's ImageNet convention: 256 → 224, ImageNet mean and std.
    pub fn imagenet() -> Self {
        Preprocess {
            resize_shorter: 256,
            crop: 224,
            mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
            std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
        }
    }

    /// The same normalisation at another input size (crop `size`, shorter side `size * 8 / 7`),
    /// for small-image probes such as ResNet at 32 px.
    pub fn at_size(&self, size: u32) -> Self {
        Preprocess { resize_shorter: (size * 8).div_ceil(7), crop: size, ..self.clone() }
    }
}
