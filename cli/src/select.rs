//! `t2v select` (which expert to fine-tune for a task) and `t2v similar` (which stored tasks are
//! nearest), on the store, or through the daemon while it owns the embedded store.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use task2vec::embedding::{EmbedSettings, Embedding};
use task2vec_qdrant::{
    RankedExpert, SelectOptions, SimilarOptions, SimilarTask, Store, TaskFilter,
};

use crate::probe_args::ProbeArgs;
use crate::store_args::{self, EmbedPlan, Resolved, StoreArgs, Target};
use crate::table::Table;
use crate::zoo::parse_pairs;

/// Flags of `t2v select`.
#[derive(Args, Debug)]
pub struct SelectArgs {
    /// The new task: a dataset (embedded now with the store's probe and settings), an
    /// embedding file (.t2v.safetensors) or a stored task's id.
    #[arg(value_name = "DATASET|FILE|ID")]
    target: String,

    /// Weight of the expert's task complexity in d_asym = d_sym − alpha · d_sym(expert, t0).
    #[arg(long, default_value_t = SelectOptions::default().alpha)]
    alpha: f64,

    /// Experts fetched by cosine from Qdrant before the exact re-rank.
    #[arg(long, default_value_t = SelectOptions::default().prefetch)]
    prefetch: usize,

    /// Experts shown.
    #[arg(long, short = 'n', default_value_t = SelectOptions::default().limit)]
    limit: usize,

    /// JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    probe: ProbeArgs,
}

/// Flags of `t2v similar`.
#[derive(Args, Debug)]
pub struct SimilarArgs {
    /// The task: a dataset (embedded now with the store's probe and settings), an embedding
    /// file (.t2v.safetensors) or a stored task's id.
    #[arg(value_name = "DATASET|FILE|ID")]
    target: String,

    /// Tasks shown.
    #[arg(long, short = 'n', default_value_t = 10)]
    limit: usize,

    /// Tasks fetched by cosine from Qdrant before the exact d_sym re-rank.
    #[arg(long, default_value_t = 100)]
    prefetch: usize,

    /// Only tasks embedded from at least N images.
    #[arg(long, value_name = "N")]
    min_samples: Option<usize>,

    /// Only tasks with at least N classes.
    #[arg(long, value_name = "N")]
    min_classes: Option<usize>,

    /// Only tasks with this tag, KEY=VALUE (repeatable: all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,

    /// JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    probe: ProbeArgs,
}

/// Runs `t2v select`.
pub fn run_select(a: SelectArgs) -> Result<()> {
    let options = SelectOptions {
        alpha: a.alpha,
        prefetch: a.prefetch.max(a.limit),
        limit: a.limit,
    };
    let resolved = a.store.resolve()?;
    let target = Target::parse(&a.target);
    let ranked = match open_for_query(&resolved)? {
        Source::Store(store) => match &target {
            Target::Task(id) => store.select_experts_for_task(*id, &options)?,
            _ => {
                let e = query_embedding(&store, &target, &a.probe, &resolved.embedding)?;
                store.select_experts(&e, &options)?
            }
        },
        Source::Daemon(client) => {
            let params = task2vec_daemon::SelectParams {
                alpha: Some(options.alpha),
                limit: Some(options.limit),
                prefetch: Some(options.prefetch),
            };
            client.select(&daemon_target(&target)?, &params)?.results
        }
    };
    if a.json {
        let v = json!({"target": a.target, "alpha": options.alpha, "prefetch": options.prefetch,
                       "experts": ranked});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_ranked(&ranked, options.alpha);
    Ok(())
}

fn print_ranked(ranked: &[RankedExpert], alpha: f64) {
    if ranked.is_empty() {
        println!("no experts in the store (add some with `t2v zoo add`)");
        return;
    }
    let mut t = Table::new(&[
        "rank",
        "expert",
        "name",
        "d_asym",
        "d_sym",
        "complexity",
        "cosine",
    ]);
    for (i, r) in ranked.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            r.key.clone(),
            r.name.clone(),
            format!("{:.5}", r.d_asym),
            format!("{:.5}", r.d_sym),
            format!("{:.5}", r.complexity),
            format!("{:.4}", r.cosine),
        ]);
    }
    print!("{t}");
    println!(
        "d_asym = d_sym(expert, task) - {alpha} * complexity; complexity = d_sym(expert, t0); \
         lower d_asym is better"
    );
}

/// Runs `t2v similar`.
pub fn run_similar(a: SimilarArgs) -> Result<()> {
    let options = SimilarOptions {
        limit: a.limit,
        prefetch: a.prefetch.max(a.limit),
        filter: TaskFilter {
            min_samples: a.min_samples,
            min_classes: a.min_classes,
            tags: parse_pairs(&a.tags, "--tag")?,
        },
    };
    let resolved = a.store.resolve()?;
    let target = Target::parse(&a.target);
    let similar = match open_for_query(&resolved)? {
        Source::Store(store) => match &target {
            Target::Task(id) => store.similar_to_task(*id, &options)?,
            _ => {
                let e = query_embedding(&store, &target, &a.probe, &resolved.embedding)?;
                store.similar_tasks(&e, &options)?
            }
        },
        Source::Daemon(client) => {
            let params = task2vec_daemon::SimilarParams {
                limit: Some(options.limit),
                prefetch: Some(options.prefetch),
                min_samples: options.filter.min_samples,
                min_classes: options.filter.min_classes,
                tags: options.filter.tags.clone(),
            };
            client.similar(&daemon_target(&target)?, &params)?.results
        }
    };
    if a.json {
        let v = json!({"target": a.target, "tasks": similar});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_similar(&similar);
    Ok(())
}

fn print_similar(similar: &[SimilarTask]) {
    if similar.is_empty() {
        println!("no stored task matches");
        return;
    }
    let mut t = Table::new(&["rank", "d_sym", "classes", "samples", "dataset", "id"]);
    for (i, s) in similar.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            format!("{:.5}", s.d_sym),
            s.n_classes.to_string(),
            s.samples.to_string(),
            s.dataset_uri.clone(),
            s.id.to_string(),
        ]);
    }
    print!("{t}");
}

/// Where queries are answered.
pub enum Source {
    /// The store itself.
    Store(Box<Store>),
    /// The daemon, which holds the embedded store open.
    Daemon(task2vec_daemon::DaemonClient),
}

/// Opens the store; if the embedded store is held by the running daemon, asks the daemon.
pub fn open_for_query(resolved: &Resolved) -> Result<Source> {
    match store_args::open_existing(&resolved.store) {
        Ok(store) => Ok(Source::Store(Box::new(store))),
        Err(e) if store_args::is_locked(&e) => Ok(Source::Daemon(daemon_client(resolved)?)),
        Err(e) => Err(e),
    }
}

/// The client of the daemon that holds the embedded store (the store was found locked).
pub(crate) fn daemon_client(resolved: &Resolved) -> Result<task2vec_daemon::DaemonClient> {
    let addr = resolved
        .daemon
        .clone()
        .context("the store is in use by another process and no daemon is configured")?;
    eprintln!("the store is held by the daemon: asking it at {addr}");
    Ok(task2vec_daemon::DaemonClient::new(addr))
}

/// The daemon resolves datasets and task ids itself.
pub(crate) fn daemon_target(target: &Target) -> Result<task2vec_daemon::Target> {
    Ok(match target {
        Target::Task(id) => task2vec_daemon::Target::TaskId(*id),
        Target::Dataset(p) => task2vec_daemon::Target::Dataset(
            std::fs::canonicalize(p).with_context(|| format!("dataset {}", p.display()))?,
        ),
        Target::File(p) => anyhow::bail!(
            "the daemon holds the store and answers for datasets and task ids, not embedding \
             files: pass the dataset of {} instead, or stop the daemon",
            p.display()
        ),
    })
}

/// The target's embedding in the store's space: read from a file, or the dataset embedded
/// with the store's probe and settings (its stored task when the store already holds it
/// unchanged).
fn query_embedding(
    store: &Store,
    target: &Target,
    probe: &ProbeArgs,
    base: &EmbedSettings,
) -> Result<Embedding> {
    match target {
        Target::File(p) => store_args::load_embedding(p),
        Target::Task(id) => Ok(store
            .get_task(*id)?
            .with_context(|| format!("no stored task with id {id}"))?
            .embedding),
        Target::Dataset(p) => {
            // The store may already hold this very dataset, unchanged: no need to embed it.
            let dataset = store_args::open_dataset(p)?;
            let uri = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            if let Some(t) = store.find_task_by_uri(&uri.to_string_lossy())? {
                if t.fingerprint == dataset.fingerprint() {
                    if let Some(stored) = store.get_task(t.id)? {
                        eprintln!("using the stored embedding of {}", uri.display());
                        return Ok(stored.embedding);
                    }
                }
            }
            drop(dataset);
            let plan = EmbedPlan::for_store(store, probe, base)?;
            Ok(plan.embed(p, false)?.0)
        }
    }
}
