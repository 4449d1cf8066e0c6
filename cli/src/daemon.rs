//! `t2v daemon`: the indexing daemon from the same binary (see the `daemon/` crate; `t2v-daemon`
//! is the stand-alone form).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tracing_subscriber::EnvFilter;

/// Flags of `t2v daemon`.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Configuration file (TOML) over the built-in defaults (config/default.toml);
    /// T2V__SECTION__KEY environment variables override both.
    #[arg(long, short, env = "T2V_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Runs the daemon until SIGINT or SIGTERM, logging as its configuration says.
pub fn run(args: DaemonArgs, verbose: u8) -> Result<()> {
    let config = task2vec_daemon::load_config(args.config.as_deref())
        .context("reading the configuration")?;
    let level = match verbose {
        0 => config.log.level.clone(),
        1 => "debug".into(),
        _ => "trace".into(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .with_context(|| format!("log.level `{level}`"))?;
    task2vec_daemon::init_logging(config.log.format, filter);
    task2vec_daemon::run_until_signal(config).context("daemon")
}
