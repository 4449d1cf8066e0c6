//! `t2v-daemon [--config FILE]`: the indexing daemon (see the `task2vec-daemon` crate).
//!
//! Exit codes: 0 after a clean stop (SIGINT or SIGTERM), 2 for a configuration error, 1 for
//! any other start-up failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use task2vec_daemon::{load_config, run_until_signal, Error};
use tracing_subscriber::EnvFilter;

/// Watches dataset folders and keeps their Task2Vec embeddings in the store.
#[derive(Parser, Debug)]
#[command(name = "t2v-daemon", version, about)]
struct Args {
    /// Configuration file (TOML) over the built-in defaults (config/default.toml);
    /// T2V__SECTION__KEY environment variables override both.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the validated configuration as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    // Before any large allocation: freed activations stay in the process.
    task2vec::malloc::retain_freed_memory();
    let args = Args::parse();
    let config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("t2v-daemon: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        return match serde_json::to_string_pretty(&config) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("t2v-daemon: {e}");
                ExitCode::from(1)
            }
        };
    }
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|e| {
        eprintln!(
            "t2v-daemon: log.level `{}`: {e}; using `info`",
            config.log.level
        );
        EnvFilter::new("info")
    });
    task2vec_daemon::init_logging(config.log.format, filter);
    match run_until_signal(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("t2v-daemon: {e}");
            ExitCode::from(if matches!(e, Error::Config { .. }) {
                2
            } else {
                1
            })
        }
    }
}
