//! Filter averaging: from a Fisher diagonal to the Task2Vec vector, and the vector's layout.
//!
//! The reference `extract_embedding` walks the probe's modules in order, skips the classifier,
//! and for every module with a weight Fisher reshapes it to `[out, -1]` and takes the mean of
//! each row: one value per convolution filter, one per batch-norm channel (gamma). Batch-norm
//! shifts (beta), biases and the classifier never appear. The [`LayoutEntry`] list says which
//! slice of the vector belongs to which module, so vectors can be checked, compared and cut
//! per layer.

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::fisher::FisherDiag;
use crate::probe::ParamKind;
use crate::{Error, Result};

/// What kind of module a slice of the embedding comes from (the names of
/// `fisher_layout.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutKind {
    /// A dense convolution (stem, 1×1, k×k): one value per output filter.
    Conv,
    /// A depthwise convolution: one value per channel.
    Depthwise,
    /// A batch norm's scale (gamma): one value per channel.
    Bn,
}

/// One module's slice of the embedding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutEntry {
    /// The module, e.g. `_blocks.1._expand_conv`.
    pub module: String,
    /// The parameter, e.g. `_blocks.1._expand_conv.weight`.
    pub param: String,
    /// The module kind.
    pub kind: LayoutKind,
    /// Shape of the parameter.
    pub weight_shape: Vec<usize>,
    /// Values this module contributes (output filters or channels).
    pub n_filters: usize,
    /// Parameter entries averaged into each value (`numel / n_filters`).
    pub values_per_filter: usize,
    /// Index of the module's first value in the embedding.
    pub offset: usize,
}

/// The layout kind of a parameter, or `None` when the parameter never enters the embedding
/// (batch-norm beta, classifier) or only enters it with batch norms included.
fn layout_kind(kind: ParamKind, include_bn: bool) -> Option<LayoutKind> {
    match kind {
        ParamKind::Conv => Some(LayoutKind::Conv),
        ParamKind::Depthwise => Some(LayoutKind::Depthwise),
        ParamKind::BnWeight if include_bn => Some(LayoutKind::Bn),
        _ => None,
    }
}

/// Averages a Fisher diagonal per filter into the Task2Vec vector (f32) and its layout.
///
/// Every convolution kernel (dense or depthwise) is reshaped to `[out, -1]` and each row
/// averaged (the mean is taken in f64); batch-norm gammas are kept as they are when
/// `include_bn` (the reference Monte-Carlo embedding includes them); batch-norm betas, biases
/// and classifier parameters never enter. Per-filter diagonals (the variational estimator's
/// `[out]`) are taken as they are. Order is the order of `diag.params` (module order).
///
/// Errors: [`Error::Mismatch`] when a diagonal's shape fits neither its parameter's shape nor
/// one value per filter.
pub fn filter_average(diag: &FisherDiag, include_bn: bool) -> Result<(Vec<f32>, Vec<LayoutEntry>)> {
    let mut values = Vec::new();
    let mut layout = Vec::new();
    for p in &diag.params {
        let Some(kind) = layout_kind(p.kind, include_bn) else {
            continue;
        };
        let shape = &p.weight_shape;
        let n_filters = shape.first().copied().unwrap_or(0);
        let numel: usize = shape.iter().product();
        if n_filters == 0 {
            return Err(Error::Mismatch(format!(
                "Fisher of `{}`: parameter shape {shape:?} has no filters",
                p.name
            )));
        }
        let per_filter = numel / n_filters;
        let d = p.diag.dims();
        let flat = p
            .diag
            .detach()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let offset = values.len();
        if d == shape.as_slice() {
            values.extend(
                flat.chunks(per_filter)
                    .map(|row| (row.iter().sum::<f64>() / per_filter as f64) as f32),
            );
        } else if d == [n_filters] {
            values.extend(flat.iter().map(|&v| v as f32));
        } else {
            return Err(Error::Mismatch(format!(
                "Fisher of `{}` has shape {d:?}: fits neither the parameter {shape:?} \
                 nor one value per filter [{n_filters}]",
                p.name
            )));
        }
        layout.push(LayoutEntry {
            module: p.module.clone(),
            param: p.name.clone(),
            kind,
            weight_shape: shape.clone(),
            n_filters,
            values_per_filter: per_filter,
            offset,
        });
    }
    Ok((values, layout))
}

/// Total length of the vector a layout describes.
pub fn layout_length(layout: &[LayoutEntry]) -> usize {
    layout.last().map_or(0, |e| e.offset + e.n_filters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fisher::ParamFisher;
    use candle_core::{Device, Tensor};

    fn param(name: &str, kind: ParamKind, shape: &[usize], diag: Tensor) -> ParamFisher {
        ParamFisher {
            name: format!("{name}.weight"),
            module: name.to_string(),
            kind,
            diag,
            weight_shape: shape.to_vec(),
        }
    }

    fn diag(params: Vec<ParamFisher>) -> FisherDiag {
        FisherDiag {
            params,
            samples: 1,
            scale: Vec::new(),
            losses: Vec::new(),
        }
    }

    #[test]
    fn rows_are_averaged_bn_gammas_kept_betas_and_classifier_dropped() {
        let dev = Device::Cpu;
        let conv = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((2, 3, 2, 1))
            .unwrap();
        let gamma = Tensor::new(&[5f32, 7.0], &dev).unwrap();
        let beta = Tensor::new(&[9f32, 9.0], &dev).unwrap();
        let fc = Tensor::ones((3, 2), DType::F32, &dev).unwrap();
        let d = diag(vec![
            param("c", ParamKind::Conv, &[2, 3, 2, 1], conv),
            param("bn", ParamKind::BnWeight, &[2], gamma),
            ParamFisher {
                name: "bn.bias".into(),
                ..param("bn", ParamKind::BnBias, &[2], beta)
            },
            param("fc", ParamKind::ClassifierWeight, &[3, 2], fc),
        ]);
        let (v, layout) = filter_average(&d, true).unwrap();
        assert_eq!(v, vec![2.5, 8.5, 5.0, 7.0]);
        assert_eq!(layout.len(), 2);
        assert_eq!(layout[0].values_per_filter, 6);
        assert_eq!((layout[1].kind, layout[1].offset), (LayoutKind::Bn, 2));
        assert_eq!(layout_length(&layout), 4);

        let (v, layout) = filter_average(&d, false).unwrap();
        assert_eq!(v, vec![2.5, 8.5]);
        assert_eq!(layout.len(), 1);
    }

    #[test]
    fn per_filter_diagonals_are_taken_as_they_are_and_bad_shapes_rejected() {
        let dev = Device::Cpu;
        let per_filter = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        let d = diag(vec![param(
            "dw",
            ParamKind::Depthwise,
            &[3, 1, 3, 3],
            per_filter,
        )]);
        let (v, layout) = filter_average(&d, false).unwrap();
        assert_eq!(v, vec![1.0, 2.0, 3.0]);
        assert_eq!(layout[0].kind, LayoutKind::Depthwise);
        assert_eq!(layout[0].values_per_filter, 9);

        let wrong = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let d = diag(vec![param(
            "dw",
            ParamKind::Depthwise,
            &[3, 1, 3, 3],
            wrong,
        )]);
        let e = filter_average(&d, false).unwrap_err();
        assert!(e.to_string().contains("dw.weight"), "{e}");
    }
}
