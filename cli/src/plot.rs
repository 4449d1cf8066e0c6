//! PNG pictures of a distance matrix: a heat-map in dendrogram order with the tree above it,
//! and a 2-D map of the tasks.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::task_map::{mds_2d, Clustering};

/// Fonts looked for, in order (Debian's `fonts-dejavu-core` provides the first).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font for labels once; false when none is found (pictures then have no
/// text, and a warning says why).
fn fonts_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!(
            "no TrueType font found (install fonts-dejavu-core): pictures have no labels"
        );
        false
    })
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// Viridis-like colour ramp for t in [0, 1].
fn ramp(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The heat-map: rows and columns in dendrogram order, the tree drawn above, names on the
/// left, each cell's value written in it when there is room.
pub fn heatmap(
    path: &Path,
    names: &[String],
    d: &[Vec<f64>],
    clusters: &Clustering,
    title: &str,
) -> Result<()> {
    let n = names.len();
    let text = fonts_ready();
    let cell: i32 = (560 / n.max(1) as i32).clamp(12, 80);
    let label_w: i32 = 12
        + 8 * names
            .iter()
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
            .min(40) as i32;
    let tree_h: i32 = 120;
    let (x0, y0) = (label_w, 40 + tree_h);
    let width = (x0 + cell * n as i32 + 110) as u32;
    let height = (y0 + cell * n as i32 + 20) as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;

    let finite: Vec<f64> = d
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let lo = finite
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let hi = finite.iter().copied().fold(0.0, f64::max).max(lo + 1e-12);
    let pos: Vec<usize> = {
        let mut p = vec![0; n];
        for (slot, &i) in clusters.order.iter().enumerate() {
            p[i] = slot;
        }
        p
    };

    for (r, &i) in clusters.order.iter().enumerate() {
        for (c, &j) in clusters.order.iter().enumerate() {
            let v = d[i][j];
            let (x, y) = (x0 + c as i32 * cell, y0 + r as i32 * cell);
            let colour = if v.is_finite() {
                ramp((v - lo) / (hi - lo))
            } else {
                RGBColor(200, 200, 200)
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                colour.filled(),
            ))
            .map_err(err)?;
            if text && cell >= 40 {
                let ink = if (v - lo) / (hi - lo) > 0.6 {
                    BLACK
                } else {
                    WHITE
                };
                let style = ("sans-serif", 11).into_font().color(&ink);
                root.draw(&Text::new(
                    format!("{v:.3}"),
                    (x + 3, y + cell / 2 - 6),
                    style,
                ))
                .map_err(err)?;
            }
        }
        if text {
            let style = ("sans-serif", 13).into_font().color(&BLACK);
            root.draw(&Text::new(
                names[i].clone(),
                (6, y0 + r as i32 * cell + cell / 2 - 7),
                style,
            ))
            .map_err(err)?;
        }
    }

    // The dendrogram above the columns: each merge is a bracket at its height.
    let top = clusters.merges.last().map_or(1.0, |m| m.2).max(1e-12);
    let mut x_of: Vec<f64> = (0..n)
        .map(|i| x0 as f64 + (pos[i] as f64 + 0.5) * cell as f64)
        .collect();
    let mut h_of: Vec<f64> = vec![0.0; n];
    let y_at = |h: f64| (y0 as f64 - 4.0 - h / top * (tree_h as f64 - 10.0)) as i32;
    for &(a, b, h) in &clusters.merges {
        let (xa, xb) = (x_of[a], x_of[b]);
        let (ya, yb, ym) = (y_at(h_of[a]), y_at(h_of[b]), y_at(h));
        let line = [
            (xa as i32, ya),
            (xa as i32, ym),
            (xb as i32, ym),
            (xb as i32, yb),
        ];
        root.draw(&PathElement::new(line.to_vec(), BLACK.stroke_width(1)))
            .map_err(err)?;
        x_of.push((xa + xb) / 2.0);
        h_of.push(h);
    }

    // Colour bar.
    let bx = x0 + cell * n as i32 + 20;
    let bh = cell * n as i32;
    for k in 0..bh {
        let t = 1.0 - k as f64 / bh.max(1) as f64;
        root.draw(&Rectangle::new(
            [(bx, y0 + k), (bx + 16, y0 + k + 1)],
            ramp(t).filled(),
        ))
        .map_err(err)?;
    }
    if text {
        let style = ("sans-serif", 11).into_font().color(&BLACK);
        root.draw(&Text::new(format!("{hi:.3}"), (bx + 20, y0), style.clone()))
            .map_err(err)?;
        root.draw(&Text::new(
            format!("{lo:.3}"),
            (bx + 20, y0 + bh - 12),
            style,
        ))
        .map_err(err)?;
        let style = ("sans-serif", 15).into_font().color(&BLACK);
        root.draw(&Text::new(title.to_string(), (6, 8), style))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The 2-D map: classical MDS of the (symmetrised) matrix, one labelled point per task.
pub fn map(path: &Path, names: &[String], d: &[Vec<f64>], title: &str) -> Result<()> {
    let xy = mds_2d(d);
    let text = fonts_ready();
    let (w, h) = (720u32, 600u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (xmin, xmax) = xy
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (ymin, ymax) = xy
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let span = (xmax - xmin).max(ymax - ymin).max(1e-12);
    let (cx, cy) = ((xmin + xmax) / 2.0, (ymin + ymax) / 2.0);
    let margin = 90.0;
    let scale = (w.min(h) as f64 - 2.0 * margin) / span;
    let to_px = |p: (f64, f64)| {
        (
            (w as f64 / 2.0 + (p.0 - cx) * scale) as i32,
            (h as f64 / 2.0 - (p.1 - cy) * scale) as i32,
        )
    };
    for (i, &p) in xy.iter().enumerate() {
        let (x, y) = to_px(p);
        let colour = Palette99::pick(i).to_rgba();
        root.draw(&Circle::new((x, y), 7, colour.filled()))
            .map_err(err)?;
        if text {
            let style = ("sans-serif", 13).into_font().color(&BLACK);
            root.draw(&Text::new(names[i].clone(), (x + 10, y - 6), style))
                .map_err(err)?;
        }
    }
    if text {
        let style = ("sans-serif", 15).into_font().color(&BLACK);
        root.draw(&Text::new(title.to_string(), (8, 8), style))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
