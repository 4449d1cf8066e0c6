//! The container files stay valid without a Docker engine: the Dockerfile's instructions are
//! exactly the "Build steps" docker/README.md documents, its stages have the required shape,
//! and `docker-compose config` accepts the compose file (when Debian's `docker-compose` is
//! installed; CI installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn docker_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Dockerfile's instructions: comments and blank lines dropped, continuation lines
/// joined, whitespace collapsed.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(collapse(&current));
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );
    out
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The lines of the first fenced block after the `## Build steps` heading of the README.
fn documented_steps(readme: &str) -> Vec<String> {
    let after = readme
        .split_once("## Build steps")
        .map(|(_, rest)| rest)
        .expect("docker/README.md has a `## Build steps` section");
    let block = after
        .split_once("```text")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("a ```text block in `## Build steps`");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(collapse)
        .collect()
}

#[test]
fn dockerfile_build_steps_match_the_readme() {
    let dir = docker_dir();
    let steps = instructions(&read(&dir.join("Dockerfile")));
    let documented = documented_steps(&read(&dir.join("README.md")));
    if steps != documented {
        let width = steps.len().max(documented.len());
        let mut diff = String::new();
        for i in 0..width {
            let a = steps.get(i).map(String::as_str).unwrap_or("<none>");
            let b = documented.get(i).map(String::as_str).unwrap_or("<none>");
            if a != b {
                diff.push_str(&format!(
                    "step {i}:\n  Dockerfile: {a}\n  README:     {b}\n"
                ));
            }
        }
        panic!("docker/Dockerfile and the build steps of docker/README.md differ:\n{diff}");
    }
}

#[test]
fn dockerfile_is_multi_stage_cpu_and_non_root() {
    let dir = docker_dir();
    let steps = instructions(&read(&dir.join("Dockerfile")));
    let froms: Vec<&String> = steps.iter().filter(|s| s.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1.95"),
        "the builder uses the project's toolchain: {}",
        froms[0]
    );
    let runtime_from = steps
        .iter()
        .rposition(|s| s.starts_with("FROM "))
        .expect("a last stage");
    let runtime = &steps[runtime_from..];
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("RUN cargo build --release") && s.contains("t2v-daemon")),
        "the daemon is built in release mode"
    );
    assert!(
        !steps.iter().any(|s| s.to_lowercase().contains("cuda")),
        "a CPU build"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|s| s.strip_prefix("USER "))
        .expect("the runtime stage sets a USER");
    assert!(
        user != "root" && user != "0" && !user.starts_with("0:"),
        "non-root user, not {user}"
    );
    assert!(
        runtime
            .iter()
            .any(|s| s == "COPY config/default.toml /etc/t2v/daemon.toml"),
        "the default configuration is in the image"
    );
    let entry = runtime
        .iter()
        .find_map(|s| s.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    assert!(entry.contains("t2v-daemon"), "{entry}");
    // Everything copied from the build context exists.
    let root = dir.parent().expect("workspace root");
    for s in &steps {
        if let Some(args) = s.strip_prefix("COPY ") {
            if args.starts_with("--from=") {
                continue;
            }
            let src = args.split_whitespace().next().expect("COPY source");
            assert!(root.join(src).exists(), "COPY source {src} missing");
        }
    }
}

#[test]
fn compose_file_parses_with_docker_compose() {
    let dir = docker_dir();
    let out = match Command::new("docker-compose")
        .arg("-f")
        .arg(dir.join("docker-compose.yml"))
        .arg("config")
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: docker-compose is not installed (apt-get install docker-compose)");
            return;
        }
        Err(e) => panic!("running docker-compose: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{stderr}"
    );
    for needle in [
        "image: qdrant/qdrant:",
        "T2V__STORE__BACKEND: remote",
        "T2V__STORE__URL: http://qdrant:6334",
        "t2v-data:/data",
        ":/datasets:ro",
        "dockerfile: docker/Dockerfile",
    ] {
        assert!(stdout.contains(needle), "`{needle}` not in:\n{stdout}");
    }
}
