//! File-system events from `notify`, forwarded raw: the watcher's callback only maps a path to
//! its dataset folder and hands it on; quiet periods and decisions are the indexer's.
//!
//! Events can be lost (the kernel queue overflows, the watcher fails, a network file system
//! sends none). Every such case becomes a [`WatchMsg::Rescan`]: the indexer rescans every root
//! and, after a watcher error, recreates the watchers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::discover::dataset_of;

/// Events buffered between the watcher and the indexer; beyond this, events are dropped and a
/// rescan is asked for instead.
pub(crate) const EVENT_BUFFER: usize = 4096;

/// What the watcher tells the indexer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchMsg {
    /// Something changed in this dataset folder (absolute path under its canonical root).
    Touched {
        /// The dataset folder.
        dataset: PathBuf,
        /// Look at it at once: its completion marker changed, or the folder itself was
        /// created, removed or renamed.
        urgent: bool,
    },
    /// Events may have been lost: rescan. `recreate`: the watchers failed and must be made
    /// again.
    Rescan {
        /// Why, for the log.
        reason: String,
        /// Make the watchers again.
        recreate: bool,
    },
}

/// The running watchers; dropping this stops them.
pub(crate) struct Watchers {
    _inner: Vec<Box<dyn Watcher + Send>>,
}

/// Starts one recursive watcher per root (canonical paths). `poll`: poll at that interval
/// instead of using the OS's events. `overflow` is set when an event could not be buffered.
pub(crate) fn start(
    roots: &[PathBuf],
    marker: &str,
    poll: Option<Duration>,
    tx: mpsc::Sender<WatchMsg>,
    overflow: Arc<AtomicBool>,
) -> notify::Result<Watchers> {
    let mut inner: Vec<Box<dyn Watcher + Send>> = Vec::new();
    for root in roots {
        let handler = handler(
            root.clone(),
            marker.to_string(),
            tx.clone(),
            overflow.clone(),
        );
        let mut w: Box<dyn Watcher + Send> = match poll {
            Some(interval) => Box::new(notify::PollWatcher::new(
                handler,
                notify::Config::default().with_poll_interval(interval),
            )?),
            None => Box::new(notify::recommended_watcher(handler)?),
        };
        w.watch(root, RecursiveMode::Recursive)?;
        inner.push(w);
    }
    Ok(Watchers { _inner: inner })
}

/// The callback of one root's watcher.
fn handler(
    root: PathBuf,
    marker: String,
    tx: mpsc::Sender<WatchMsg>,
    overflow: Arc<AtomicBool>,
) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
    move |res| {
        let send = |msg: WatchMsg| {
            if tx.try_send(msg).is_err() {
                overflow.store(true, Ordering::Relaxed);
            }
        };
        match res {
            Ok(event) => {
                if event.need_rescan() {
                    send(WatchMsg::Rescan {
                        reason: "the kernel dropped file events".into(),
                        recreate: false,
                    });
                    return;
                }
                // Reads do not change a dataset.
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                for path in &event.paths {
                    if path == &root {
                        send(WatchMsg::Rescan {
                            reason: format!("root {} itself changed", root.display()),
                            recreate: true,
                        });
                    } else if let Some((dataset, is_marker)) = dataset_of(&root, path, &marker) {
                        let urgent = is_marker || path == &dataset;
                        send(WatchMsg::Touched { dataset, urgent });
                    }
                }
            }
            Err(e) => send(WatchMsg::Rescan {
                reason: format!("watcher error on {}: {e}", root.display()),
                recreate: true,
            }),
        }
    }
}
