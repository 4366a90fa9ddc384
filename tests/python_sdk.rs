//! The Python SDK (`sdk/python`) passes its own tests — pytest, against
//! real `taskgrid server` processes of this build and its own worker and
//! client — inside `cargo test`, so one command still runs everything.
//!
//! Needs Python 3.9+ with `venv` and pip (and PyPI, or a pip cache, the
//! first time): the environment is made once in Cargo's test tmp dir and
//! the package is reinstalled from the tree at every run.

use std::path::Path;
use std::process::Command;

fn run(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_python_sdk_passes_its_tests() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sdk = repo.join("sdk/python");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-sdk");
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        run(
            "making the virtual environment (needs python3 with venv)",
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
        );
    }
    let pip = |args: &[&str]| {
        let mut c = Command::new(bin.join("pip"));
        c.args(["install", "-q", "--disable-pip-version-check"])
            .args(args)
            .current_dir(repo);
        c
    };
    run(
        "installing the SDK's dependencies",
        &mut pip(&["./sdk/python[test]"]),
    );
    run(
        "installing the SDK from the tree",
        &mut pip(&["--no-deps", "--force-reinstall", "./sdk/python"]),
    );
    run(
        "the Python SDK's tests",
        Command::new(bin.join("pytest"))
            .args(["-q", "-p", "no:cacheprovider", "tests"])
            .current_dir(&sdk)
            .env("TASKGRID_BIN", env!("CARGO_BIN_EXE_taskgrid")),
    );
}
