//! `t2v store info|export|import`: what a store holds, and moving it between backends (for
//! example from the embedded default to a Qdrant server) through the project's dump format
//! (docs/schema.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use task2vec_qdrant::IndexPrecision;

use crate::store_args::{self, StoreArgs};

/// `t2v store ...`.
#[derive(Args, Debug)]
pub struct StoreCmdArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Where the store is, its vector space and how many tasks and experts it holds.
    Info(InfoArgs),
    /// Write every task, expert and the trivial embedding to a dump folder.
    Export(DumpArgs),
    /// Read a dump folder into the store (created in the dump's space if absent).
    Import(DumpArgs),
}

/// Flags of `t2v store info`.
#[derive(Args, Debug)]
struct InfoArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// Flags of `t2v store export|import`.
#[derive(Args, Debug)]
struct DumpArgs {
    /// The dump folder.
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `t2v store ...`.
pub fn run(args: StoreCmdArgs) -> Result<()> {
    match args.command {
        StoreCommand::Info(a) => {
            let resolved = a.store.resolve()?;
            let store = store_args::open_existing(&resolved.store)?;
            let space = store.space();
            println!("store      {}", store_args::describe(&resolved.store));
            println!(
                "probe      {} (weights {}), {}×{} px",
                space.probe_arch,
                space.weights_sha256,
                space.preprocess.crop,
                space.preprocess.crop
            );
            println!(
                "estimator  {}, bn {:?}, skip_stages {}, dimension {}",
                space.estimator_name(),
                space.bn,
                space.skip_stages,
                space.dimension
            );
            println!(
                "index      {:?}, {} values, {}",
                store.transform(),
                store.transform().len(space),
                match store.index_precision() {
                    IndexPrecision::Int8 => "int8 in RAM (f32 originals on disk)",
                    IndexPrecision::F32 => "f32 in RAM",
                }
            );
            println!("tasks      {}", store.count_tasks()?);
            println!("experts    {}", store.count_experts()?);
            println!(
                "trivial    {}",
                if store.trivial().is_some() {
                    "set"
                } else {
                    "not set (select needs it unless --alpha 0)"
                }
            );
            Ok(())
        }
        StoreCommand::Export(a) => {
            let resolved = a.store.resolve()?;
            let store = store_args::open_existing(&resolved.store)?;
            let summary = store
                .export_dump(&a.dir)
                .with_context(|| format!("exporting to {}", a.dir.display()))?;
            println!(
                "exported {} tasks and {} experts to {}",
                summary.tasks,
                summary.experts,
                a.dir.display()
            );
            Ok(())
        }
        StoreCommand::Import(a) => {
            let resolved = a.store.resolve()?;
            let summary = task2vec_qdrant::Store::import_dump_into(&resolved.store, &a.dir)
                .with_context(|| format!("importing {}", a.dir.display()))?;
            println!(
                "imported {} tasks and {} experts into {}",
                summary.tasks,
                summary.experts,
                store_args::describe(&resolved.store)
            );
            Ok(())
        }
    }
}
