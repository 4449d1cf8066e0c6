//! Turning a decoded image into the tensor a probe expects.

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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
        Preprocess {
            resize_shorter: 256,
            crop: 224,
            mean: [127.0; 3],
            std: [128.0; 3],
        }
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
        Preprocess {
            resize_shorter: (size * 8).div_ceil(7),
            crop: size,
            ..self.clone()
        }
    }
}

impl Preprocess {
    /// The size an image of `width`×`height` is resized to before cropping: the shorter side
    /// becomes `resize_shorter`, the longer one `int(resize_shorter * long / short)` (truncated,
    /// as torchvision computes it in Python floats).
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let s = self.resize_shorter;
        let (short, long) = if width <= height {
            (width, height)
        } else {
            (height, width)
        };
        if short == 0 {
            return (width.min(s), height.min(s));
        }
        let new_long = (f64::from(s) * f64::from(long) / f64::from(short)) as u32;
        if width <= height {
            (s, new_long)
        } else {
            (new_long, s)
        }
    }

    /// Resizes (Pillow-exact antialiased bilinear), centre-crops and normalises one image.
    ///
    /// Returns `3 * crop * crop` floats in CHW order (R plane, then G, then B). The crop's
    /// top-left corner is `round((w - crop) / 2)`, `round((h - crop) / 2)` with Python's
    /// round-half-to-even, as torchvision's `center_crop`. If the resized image is smaller than
    /// the crop (only when `crop > resize_shorter`), it is padded with black like torchvision.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let (rw, rh) = self.resized_size(w, h);
        let resized = super::resample::bilinear(img, rw, rh);
        let crop = self.crop as usize;
        let left = crop_origin(rw, self.crop);
        let top = crop_origin(rh, self.crop);
        let plane = crop * crop;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..crop {
            let sy = top + y as i64;
            for x in 0..crop {
                let sx = left + x as i64;
                let inside = sx >= 0 && sy >= 0 && sx < i64::from(rw) && sy < i64::from(rh);
                let p = if inside {
                    resized.get_pixel(sx as u32, sy as u32).0
                } else {
                    [0; 3]
                };
                for c in 0..3 {
                    out[c * plane + y * crop + x] = (f32::from(p[c]) - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }

    /// Builds the `[n, 3, crop, crop]` f32 tensor of `n` preprocessed images laid end to end
    /// (as [`Preprocess::apply`] makes them and [`super::Batch::data`] holds them).
    pub fn to_tensor(&self, data: Vec<f32>, n: usize, device: &Device) -> Result<Tensor> {
        let side = self.crop as usize;
        if data.len() != n * 3 * side * side {
            return Err(Error::Mismatch(format!(
                "{} floats cannot be {n} images of 3×{side}×{side}",
                data.len()
            )));
        }
        Ok(Tensor::from_vec(data, (n, 3, side, side), device)?)
    }
}

/// Where a centred crop of `crop` starts along a side of `len`: torchvision's
/// `int(round((len - crop) / 2))` (half to even), or its symmetric padding when `crop > len`.
fn crop_origin(len: u32, crop: u32) -> i64 {
    if crop > len {
        -(i64::from(crop - len) / 2)
    } else {
        (f64::from(len - crop) / 2.0).round_ties_even() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_truncates_the_long_side_like_torchvision() {
        let p = Preprocess::efficientnet_lite();
        // int(256 * 1024 / 683) = int(383.81) = 383
        assert_eq!(p.resized_size(1024, 683), (383, 256));
        assert_eq!(p.resized_size(683, 1024), (256, 383));
        assert_eq!(p.resized_size(28, 28), (256, 256));
        assert_eq!(p.resized_size(500, 375), (341, 256));
    }

    #[test]
    fn crop_origin_rounds_half_to_even_like_python() {
        assert_eq!(crop_origin(383, 224), 80); // 79.5 → 80
        assert_eq!(crop_origin(387, 224), 82); // 81.5 → 82
        assert_eq!(crop_origin(385, 224), 80); // 80.5 → 80, not 81
        assert_eq!(crop_origin(256, 224), 16);
        assert_eq!(crop_origin(200, 224), -12);
    }

    #[test]
    fn apply_normalises_per_channel_in_chw_order() {
        let p = Preprocess {
            resize_shorter: 4,
            crop: 2,
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
        };
        let img = RgbImage::from_pixel(4, 4, image::Rgb([50, 60, 80]));
        let v = p.apply(&img);
        assert_eq!(
            v,
            vec![20.0, 20.0, 20.0, 20.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
        );
    }

    #[test]
    fn to_tensor_checks_the_length() {
        let p = Preprocess {
            resize_shorter: 2,
            crop: 2,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let t = p.to_tensor(vec![0.0; 24], 2, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 2, 2]);
        assert!(matches!(
            p.to_tensor(vec![0.0; 23], 2, &Device::Cpu),
            Err(Error::Mismatch(_))
        ));
    }
}
