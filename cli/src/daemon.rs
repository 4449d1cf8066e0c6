//! `t2v daemon`: the indexing daemon from the same binary (see the `daemon/` crate; `t2v-daemon`
//! is the stand-alone form).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use task2vec_daemon::config::LogFormat;
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
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    task2vec::threads::configure_threads(config.probe.threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(task2vec_daemon::run(
        config,
        task2vec_daemon::shutdown_signal(),
    ));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result.context("daemon")
}
