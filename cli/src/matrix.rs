//! `t2v matrix`: the distance matrix of many embeddings, as CSV, JSON and pictures.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use task2vec::distance::{cdist, Distance, DistanceOptions, EmbeddingView};

use crate::distance::{load, view};
use crate::{plot, task_map};

/// Flags of `t2v matrix`.
#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// Embedding files (two or more). Each task is named after its file.
    #[arg(required = true, num_args = 2.., value_name = "EMB")]
    embeddings: Vec<PathBuf>,
    /// Which distance.
    #[arg(long, default_value = "cosine", value_name = "NAME")]
    distance: Distance,
    /// Output prefix: writes PREFIX.csv, PREFIX.json, PREFIX-heatmap.png and PREFIX-map.png.
    #[arg(long, default_value = "task-matrix", value_name = "PREFIX")]
    out: PathBuf,
}

/// Computes the matrix (row = source, column = target) and writes the four files.
pub fn run(args: MatrixArgs) -> Result<()> {
    let embs = args
        .embeddings
        .iter()
        .map(|p| load(p))
        .collect::<Result<Vec<_>>>()?;
    for (p, e) in args.embeddings.iter().zip(&embs).skip(1) {
        embs[0].check_comparable(e).with_context(|| {
            format!(
                "{} cannot be compared with {}",
                p.display(),
                args.embeddings[0].display()
            )
        })?;
    }
    let names: Vec<String> = args.embeddings.iter().map(|p| task_name(p)).collect();
    let views: Vec<EmbeddingView> = embs.iter().map(view).collect();
    let d = cdist(args.distance, &views, &views, &DistanceOptions::default())?;

    let with_ext = |suffix: &str| {
        let mut s = args.out.clone().into_os_string();
        s.push(suffix);
        PathBuf::from(s)
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let mut csv = String::from("source");
    for n in &names {
        csv.push(',');
        csv.push_str(&csv_field(n));
    }
    csv.push('\n');
    for (n, row) in names.iter().zip(&d) {
        csv.push_str(&csv_field(n));
        for v in row {
            csv.push_str(&format!(",{v}"));
        }
        csv.push('\n');
    }
    let csv_path = with_ext(".csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;

    let clusters = task_map::cluster(&d);
    let json = serde_json::json!({
        "distance": args.distance.name(),
        "tasks": names,
        "files": args.embeddings,
        "matrix": d.iter().map(|r| r.iter().map(|v| if v.is_finite() { serde_json::json!(v) } else { serde_json::json!(v.to_string()) }).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "dendrogram_order": clusters.order,
    });
    let json_path = with_ext(".json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;

    let title = format!("Task2Vec {} distance", args.distance.name());
    let heat = with_ext("-heatmap.png");
    plot::heatmap(&heat, &names, &d, &clusters, &title)?;
    let map = with_ext("-map.png");
    plot::map(
        &map,
        &names,
        &d,
        &format!("{title}: 2-D map (classical MDS)"),
    )?;
    for p in [&csv_path, &json_path, &heat, &map] {
        println!("wrote {}", p.display());
    }
    if !args.distance.is_symmetric() {
        println!(
            "note: {} is asymmetric; rows are sources, columns targets",
            args.distance.name()
        );
    }
    Ok(())
}

/// A task's name from its file: the file name without `.t2v.safetensors` / `.safetensors`.
fn task_name(path: &std::path::Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    for suffix in [".t2v.safetensors", ".safetensors"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return stem.to_string();
        }
    }
    name
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
