//! `t2v zoo add|list|rm`: the experts (pretrained models) selection ranks. While the daemon
//! holds the embedded store, each goes through its HTTP API instead.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use task2vec_qdrant::{Expert, Store};
use uuid::Uuid;

use crate::probe_args::ProbeArgs;
use crate::select;
use crate::store_args::{self, EmbedPlan, StoreArgs, Target};
use crate::table::Table;

/// `t2v zoo ...`.
#[derive(Args, Debug)]
pub struct ZooArgs {
    #[command(subcommand)]
    command: ZooCommand,
}

#[derive(Subcommand, Debug)]
enum ZooCommand {
    /// Add an expert (or replace the one with the same id), with the task it was trained on.
    Add(AddArgs),
    /// List the experts.
    List(ListArgs),
    /// Remove experts by id.
    Rm(RmArgs),
}

/// Flags of `t2v zoo add`.
#[derive(Args, Debug)]
struct AddArgs {
    /// The expert's id (unique in the zoo; adding the same id again replaces it).
    #[arg(long)]
    id: String,

    /// Display name (default: the id).
    #[arg(long)]
    name: Option<String>,

    /// Where its weights are (any URI; stored, not read).
    #[arg(long, value_name = "URI", default_value = "")]
    weights_uri: String,

    /// The task it was trained on: a dataset (embedded now with the store's settings), an
    /// embedding file (.t2v.safetensors) or a stored task's id.
    #[arg(long, value_name = "DATASET|FILE|ID")]
    trained_on: String,

    /// A free-form label, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,

    /// A metric, KEY=NUMBER (repeatable), e.g. accuracy=0.93.
    #[arg(long = "metric", value_name = "KEY=NUMBER")]
    metrics: Vec<String>,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    probe: ProbeArgs,
}

/// Flags of `t2v zoo list`.
#[derive(Args, Debug)]
struct ListArgs {
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    store: StoreArgs,
}

/// Flags of `t2v zoo rm`.
#[derive(Args, Debug)]
struct RmArgs {
    /// Expert ids.
    #[arg(required = true)]
    ids: Vec<String>,

    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `t2v zoo ...`.
pub fn run(args: ZooArgs) -> Result<()> {
    match args.command {
        ZooCommand::Add(a) => add(a),
        ZooCommand::List(a) => list(a),
        ZooCommand::Rm(a) => rm(a),
    }
}

/// `KEY=VALUE` pairs.
pub fn parse_pairs(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("{what} `{p}`: expected KEY=VALUE"),
        })
        .collect()
}

fn add(a: AddArgs) -> Result<()> {
    let metrics = parse_pairs(&a.metrics, "--metric")?
        .into_iter()
        .map(|(k, v)| {
            v.trim()
                .parse::<f64>()
                .map(|x| (k.clone(), x))
                .with_context(|| format!("--metric {k}={v}: not a number"))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    let expert = Expert {
        key: a.id.clone(),
        name: a.name.clone().unwrap_or_else(|| a.id.clone()),
        weights_uri: a.weights_uri.clone(),
        tags: parse_pairs(&a.tags, "--tag")?,
        metrics,
    };
    let resolved = a.store.resolve()?;
    let target = Target::parse(&a.trained_on);
    let existing = match store_args::existing_store(&resolved.store) {
        Ok(s) => s,
        Err(e) if store_args::is_locked(&e) => {
            let client = select::daemon_client(&resolved)?;
            let added = client.add_expert(&expert, &select::daemon_target(&target)?)?;
            if added.trivial_added {
                eprintln!("the daemon stored the trivial embedding (random labels) too");
            }
            println!(
                "expert {} ({}) trained on {} stored as point {} by the daemon at {}",
                expert.key,
                expert.name,
                added.trained_on.dataset,
                added.id,
                client.base_url()
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let (embedding, trivial, store) = match target {
        Target::Task(id) => {
            let store = existing.context("there is no store yet: it holds no task")?;
            let task = store
                .get_task(id)?
                .with_context(|| format!("no stored task with id {id}"))?;
            (task.embedding, None, store)
        }
        Target::File(path) => {
            let e = store_args::load_embedding(&path)?;
            let store = match existing {
                Some(s) => s,
                None => store_args::open_for(&resolved.store, &e)?,
            };
            (e, None, store)
        }
        Target::Dataset(path) => {
            let plan = EmbedPlan::new(existing.as_ref(), &a.probe, &resolved.embedding)?;
            let need_trivial = existing.as_ref().is_none_or(|s| s.trivial_mark().is_none());
            let (e, t) = plan.embed(&path, need_trivial)?;
            let store = match existing {
                Some(s) => s,
                None => store_args::open_for(&resolved.store, &e)?,
            };
            (e, t, store)
        }
    };
    if let Some(t) = trivial {
        store
            .set_trivial(&t)
            .context("storing the trivial embedding")?;
        eprintln!("stored the trivial embedding (random labels) for the asymmetric distance");
    }
    let id = store.upsert_expert(&expert, &embedding)?;
    store.flush();
    println!(
        "expert {} ({}) trained on {} stored as point {id} in {}",
        expert.key,
        expert.name,
        embedding.meta.dataset.path,
        store_args::describe(&resolved.store)
    );
    Ok(())
}

fn list(a: ListArgs) -> Result<()> {
    let resolved = a.store.resolve()?;
    let experts: Vec<(Uuid, Expert)> = match store_args::open_existing(&resolved.store) {
        Ok(store) => store.list_experts()?,
        Err(e) if store_args::is_locked(&e) => select::daemon_client(&resolved)?
            .experts()?
            .into_iter()
            .map(|i| (i.point_id, i.expert))
            .collect(),
        Err(e) => return Err(e),
    };
    if a.json {
        let v: Vec<_> = experts
            .iter()
            .map(|(id, e)| {
                json!({"point_id": id, "id": e.key, "name": e.name, "weights_uri": e.weights_uri,
                       "tags": e.tags, "metrics": e.metrics})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if experts.is_empty() {
        println!(
            "no experts in {} (add one with `t2v zoo add`)",
            store_args::describe(&resolved.store)
        );
        return Ok(());
    }
    let mut t = Table::new(&["id", "name", "weights", "tags", "metrics"]);
    for (_, e) in &experts {
        t.row(vec![
            e.key.clone(),
            e.name.clone(),
            e.weights_uri.clone(),
            join_pairs(e.tags.iter().map(|(k, v)| (k, v.clone()))),
            join_pairs(e.metrics.iter().map(|(k, v)| (k, format!("{v}")))),
        ]);
    }
    print!("{t}");
    Ok(())
}

fn join_pairs<'a>(pairs: impl Iterator<Item = (&'a String, String)>) -> String {
    pairs
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn rm(a: RmArgs) -> Result<()> {
    let resolved = a.store.resolve()?;
    let mut missing = Vec::new();
    match store_args::open_existing(&resolved.store) {
        Ok(store) => {
            let store: Store = store;
            for key in &a.ids {
                if store.delete_expert(store.expert_id(key))? {
                    println!("removed expert {key}");
                } else {
                    missing.push(key.as_str());
                }
            }
            store.flush();
        }
        Err(e) if store_args::is_locked(&e) => {
            let client = select::daemon_client(&resolved)?;
            for key in &a.ids {
                match client.remove_expert(key) {
                    Ok(_) => println!("removed expert {key}"),
                    Err(task2vec_daemon::Error::Client {
                        status: Some(404), ..
                    }) => missing.push(key.as_str()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(e) => return Err(e),
    }
    if !missing.is_empty() {
        bail!("no expert with id {}", missing.join(", "));
    }
    Ok(())
}
