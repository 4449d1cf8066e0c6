//! The binary's start-up contract: configuration errors exit with status 2 naming the key and
//! where its value came from; a probe that cannot be loaded exits with 1; `--print-config`
//! shows the validated, layered configuration.

mod common;

use std::process::Command;

use common::TestEnv;

fn daemon(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_t2v-daemon"))
        .args(args)
        .current_dir(env.tmp.path())
        .envs(vars.iter().copied())
        .output()
        .expect("run t2v-daemon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_key_and_origin() {
    let env = TestEnv::new("");
    let file = env.tmp.path().join("bad.toml");
    std::fs::write(&file, "[watch]\nquiet_secs = -1\n").unwrap();
    let (code, _, err) = daemon(&env, &["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("watch.quiet_secs") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&file, "[daemon]\nconcurency = 2\n").unwrap();
    let (code, _, err) = daemon(&env, &["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("daemon.concurency") && err.contains("unknown key"),
        "{err}"
    );

    let config = env.config.to_str().unwrap();
    let (code, _, err) = daemon(
        &env,
        &["--config", config],
        &[("T2V__HTTP__ADDR", "not-an-address")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("http.addr") && err.contains("T2V__HTTP__ADDR"),
        "{err}"
    );
}

#[test]
fn print_config_shows_the_layers_merged() {
    let env = TestEnv::new("");
    let config = env.config.to_str().unwrap();
    let (code, out, err) = daemon(
        &env,
        &["--config", config, "--print-config"],
        &[
            ("T2V__DAEMON__CONCURRENCY", "3"),
            ("T2V__STORE__BACKEND", "remote"),
            ("T2V__STORE__URL", "http://qdrant:6334"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["daemon"]["concurrency"], 3);
    assert_eq!(doc["store"]["backend"], "remote");
    assert_eq!(doc["store"]["url"], "http://qdrant:6334");
    // From the user file over the built-in defaults.
    assert_eq!(doc["embedding"]["image_size"], 32);
    assert_eq!(doc["watch"]["quiet_secs"], 1.0);
}

#[test]
fn missing_probe_weights_exit_1() {
    let env = TestEnv::new("");
    let config = env.config.to_str().unwrap();
    let (code, _, err) = daemon(
        &env,
        &["--config", config],
        &[("T2V__PROBE__WEIGHTS", "/nonexistent/weights.pth")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/weights.pth"), "{err}");
}
