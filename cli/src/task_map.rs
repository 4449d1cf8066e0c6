//! Arranging tasks for a person to look at: a dendrogram order that puts similar tasks side
//! by side, and 2-D coordinates whose distances follow the distance matrix.

use kodama::{linkage, Method};
use nalgebra::{DMatrix, SymmetricEigen};

/// The merge tree of average-linkage clustering, and the leaf order it implies.
pub struct Clustering {
    /// Leaves left to right.
    pub order: Vec<usize>,
    /// Merges in order: the two clusters joined (ids < n are leaves, n + k is merge k) and
    /// the distance at which they joined.
    pub merges: Vec<(usize, usize, f64)>,
}

/// Average-linkage (UPGMA) clustering of a square distance matrix. An asymmetric matrix is
/// symmetrised as (d + dᵀ) / 2 first; NaN distances count as the largest finite one.
pub fn cluster(d: &[Vec<f64>]) -> Clustering {
    let n = d.len();
    if n < 2 {
        return Clustering {
            order: (0..n).collect(),
            merges: Vec::new(),
        };
    }
    let max = d
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let mut condensed = Vec::with_capacity(n * (n - 1) / 2);
    for (i, row) in d.iter().enumerate() {
        for (j, &dij) in row.iter().enumerate().skip(i + 1) {
            let v = (dij + d[j][i]) / 2.0;
            condensed.push(if v.is_finite() { v } else { max });
        }
    }
    let dendrogram = linkage(&mut condensed, n, Method::Average);
    let merges: Vec<(usize, usize, f64)> = dendrogram
        .steps()
        .iter()
        .map(|s| (s.cluster1, s.cluster2, s.dissimilarity))
        .collect();
    let mut order = Vec::with_capacity(n);
    leaves(n, &merges, n + merges.len() - 1, &mut order);
    Clustering { order, merges }
}

fn leaves(n: usize, merges: &[(usize, usize, f64)], id: usize, out: &mut Vec<usize>) {
    if id < n {
        out.push(id);
    } else {
        let (a, b, _) = merges[id - n];
        leaves(n, merges, a, out);
        leaves(n, merges, b, out);
    }
}

/// Classical multidimensional scaling into two dimensions: points whose Euclidean distances
/// best match `d` (symmetrised; NaN treated as the largest finite distance).
pub fn mds_2d(d: &[Vec<f64>]) -> Vec<(f64, f64)> {
    let n = d.len();
    if n == 0 {
        return Vec::new();
    }
    let max = d
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let sq = DMatrix::from_fn(n, n, |i, j| {
        let v = (d[i][j] + d[j][i]) / 2.0;
        let v = if v.is_finite() { v } else { max };
        if i == j {
            0.0
        } else {
            v * v
        }
    });
    // B = -1/2 J D² J with J the centring matrix.
    let j = DMatrix::<f64>::identity(n, n) - DMatrix::from_element(n, n, 1.0 / n as f64);
    let b = &j * sq * &j * -0.5;
    let eig = SymmetricEigen::new(b);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let coord = |k: usize, i: usize| -> f64 {
        match idx.get(k) {
            Some(&c) => eig.eigenvectors[(i, c)] * eig.eigenvalues[c].max(0.0).sqrt(),
            None => 0.0,
        }
    };
    (0..n).map(|i| (coord(0, i), coord(1, i))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(points: &[f64]) -> Vec<Vec<f64>> {
        points
            .iter()
            .map(|a| points.iter().map(|b| (a - b).abs()).collect())
            .collect()
    }

    #[test]
    fn clustering_puts_near_points_side_by_side() {
        // Two tight groups {0, 2} and {1, 3}, listed interleaved.
        let d = line(&[0.0, 10.0, 0.1, 10.2]);
        let c = cluster(&d);
        let pos = |i: usize| c.order.iter().position(|&x| x == i).unwrap();
        assert_eq!(pos(0).abs_diff(pos(2)), 1);
        assert_eq!(pos(1).abs_diff(pos(3)), 1);
        assert_eq!(c.merges.len(), 3);
    }

    #[test]
    fn mds_recovers_distances_of_planar_points() {
        let pts: [(f64, f64); 4] = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0), (1.0, 1.0)];
        let d: Vec<Vec<f64>> = pts
            .iter()
            .map(|a| {
                pts.iter()
                    .map(|b| ((a.0 - b.0) * (a.0 - b.0) + (a.1 - b.1) * (a.1 - b.1)).sqrt())
                    .collect()
            })
            .collect();
        let xy = mds_2d(&d);
        for i in 0..4 {
            for j in 0..4 {
                let e = ((xy[i].0 - xy[j].0).powi(2) + (xy[i].1 - xy[j].1).powi(2)).sqrt();
                assert!((e - d[i][j]).abs() < 1e-9, "{i},{j}: {e} vs {}", d[i][j]);
            }
        }
    }
}
