//! `t2v tasks add|list|rm`: the stored tasks, by hand (the daemon keeps them in sync with
//! watched folders on its own).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use uuid::Uuid;

use task2vec_qdrant::TaskSummary;

use crate::probe_args::ProbeArgs;
use crate::select::{open_for_query, Source};
use crate::store_args::{self, EmbedPlan, StoreArgs, Target};
use crate::table::Table;
use crate::zoo::parse_pairs;

/// `t2v tasks ...`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Subcommand, Debug)]
enum TasksCommand {
    /// Embed datasets (or read embedding files) and store them as tasks.
    Add(AddArgs),
    /// List the stored tasks.
    List(ListArgs),
    /// Remove stored tasks, by id or by dataset path.
    Rm(RmArgs),
}

/// Flags of `t2v tasks add`.
#[derive(Args, Debug)]
struct AddArgs {
    /// Datasets or .t2v.safetensors files.
    #[arg(required = true, value_name = "DATASET|FILE")]
    targets: Vec<String>,

    /// A label, KEY=VALUE (repeatable), filterable in `t2v similar --tag`.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    probe: ProbeArgs,
}

/// Flags of `t2v tasks list`.
#[derive(Args, Debug)]
struct ListArgs {
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    store: StoreArgs,
}

/// Flags of `t2v tasks rm`.
#[derive(Args, Debug)]
struct RmArgs {
    /// Task ids or dataset paths.
    #[arg(required = true, value_name = "ID|DATASET")]
    targets: Vec<String>,

    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `t2v tasks ...`.
pub fn run(args: TasksArgs) -> Result<()> {
    match args.command {
        TasksCommand::Add(a) => add(a),
        TasksCommand::List(a) => list(a),
        TasksCommand::Rm(a) => rm(a),
    }
}

fn add(a: AddArgs) -> Result<()> {
    let tags = parse_pairs(&a.tags, "--tag")?;
    let resolved = a.store.resolve()?;
    let mut store = store_args::existing_store(&resolved.store)?;
    let mut plan: Option<EmbedPlan> = None;
    for target in &a.targets {
        let e = match Target::parse(target) {
            Target::File(p) => store_args::load_embedding(&p)?,
            Target::Dataset(p) => {
                if plan.is_none() {
                    plan = Some(EmbedPlan::new(
                        store.as_ref(),
                        &a.probe,
                        &resolved.embedding,
                    )?);
                }
                let need_trivial = store.as_ref().is_none_or(|s| s.trivial_mark().is_none());
                let p_ref = plan.as_ref().context("embedding plan")?;
                let (e, t) = p_ref.embed(&p, need_trivial)?;
                if store.is_none() {
                    store = Some(store_args::open_for(&resolved.store, &e)?);
                }
                if let (Some(t), Some(s)) = (t, store.as_ref()) {
                    s.set_trivial(&t).context("storing the trivial embedding")?;
                }
                e
            }
            Target::Task(id) => bail!("{id} is already a stored task"),
        };
        if store.is_none() {
            store = Some(store_args::open_for(&resolved.store, &e)?);
        }
        let s = store.as_ref().context("store")?;
        let id = s.upsert_task(&e, &tags)?;
        println!("stored task {id}  {}", e.meta.dataset.path);
    }
    if let Some(s) = &store {
        s.flush();
    }
    Ok(())
}

fn list(a: ListArgs) -> Result<()> {
    let resolved = a.store.resolve()?;
    let tasks: Vec<TaskSummary> = match open_for_query(&resolved)? {
        Source::Store(store) => store.list_tasks()?,
        Source::Daemon(client) => client.tasks()?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&tasks)?);
        return Ok(());
    }
    if tasks.is_empty() {
        println!("no tasks in {}", store_args::describe(&resolved.store));
        return Ok(());
    }
    let mut t = Table::new(&["id", "classes", "samples", "stored", "dataset"]);
    for task in &tasks {
        t.row(vec![
            task.id.to_string(),
            task.n_classes.to_string(),
            task.samples.to_string(),
            task.stored_at.clone(),
            task.dataset_uri.clone(),
        ]);
    }
    print!("{t}");
    Ok(())
}

fn rm(a: RmArgs) -> Result<()> {
    let resolved = a.store.resolve()?;
    let store = store_args::open_existing(&resolved.store)?;
    let mut missing = Vec::new();
    for target in &a.targets {
        let id: Option<Uuid> = match target.parse::<Uuid>() {
            Ok(id) => Some(id),
            Err(_) => {
                let path = PathBuf::from(target);
                let uri = std::fs::canonicalize(&path).unwrap_or(path);
                store
                    .find_task_by_uri(&uri.to_string_lossy())?
                    .map(|t| t.id)
            }
        };
        match id {
            Some(id) if store.delete_task(id)? => println!("removed task {id}  ({target})"),
            _ => missing.push(target.as_str()),
        }
    }
    store.flush();
    if !missing.is_empty() {
        bail!("no stored task for {}", missing.join(", "));
    }
    Ok(())
}
