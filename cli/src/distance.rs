//! `t2v distance`: every Task2Vec distance between two embedding files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use task2vec::distance::{distance, Distance, DistanceOptions, EmbeddingView};
use task2vec::embedding::Embedding;

/// Flags of `t2v distance`.
#[derive(Args, Debug)]
pub struct DistanceArgs {
    /// The first embedding (for asymmetric distances, the source).
    a: PathBuf,
    /// The second embedding (the target).
    b: PathBuf,
    /// Only this distance (default: all of them).
    #[arg(long, value_name = "NAME")]
    distance: Option<Distance>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Loads both files, refuses incomparable ones, prints the distances.
pub fn run(args: DistanceArgs) -> Result<()> {
    let a = load(&args.a)?;
    let b = load(&args.b)?;
    a.check_comparable(&b).with_context(|| {
        format!(
            "{} and {} cannot be compared",
            args.a.display(),
            args.b.display()
        )
    })?;
    let kinds: Vec<Distance> = match args.distance {
        Some(d) => vec![d],
        None => Distance::ALL.to_vec(),
    };
    let opts = DistanceOptions::default();
    let mut rows = Vec::new();
    for kind in kinds {
        let d = distance(kind, view(&a), view(&b), &opts)
            .with_context(|| format!("computing {kind}"))?;
        rows.push((kind, d));
    }
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, d)| (k.name().to_string(), serde_json::json!(d)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        for (kind, d) in rows {
            println!("{:<18} {d:.6}", kind.name());
        }
    }
    Ok(())
}

/// Reads an embedding file, naming it on failure.
pub fn load(path: &std::path::Path) -> Result<Embedding> {
    Embedding::load(path).with_context(|| format!("reading embedding {}", path.display()))
}

/// The distance module's view of an embedding.
pub fn view(e: &Embedding) -> EmbeddingView<'_> {
    EmbeddingView::with_scale(&e.hessian, &e.scale)
}
