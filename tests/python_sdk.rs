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

/// The suite in a virtual environment of `python` (made once, in Cargo's
/// test tmp dir as `name`), the package installed from the tree.
fn suite(python: &str, name: &str) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sdk = repo.join("sdk/python");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        run(
            &format!("making the virtual environment (needs {python} with venv)"),
            Command::new(python).arg("-m").arg("venv").arg(&venv),
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
        &format!("the Python SDK's tests on {python}"),
        Command::new(bin.join("pytest"))
            .args(["-q", "-rs", "-p", "no:cacheprovider", "tests"])
            .current_dir(&sdk)
            .env("TASKGRID_BIN", env!("CARGO_BIN_EXE_taskgrid")),
    );
}

#[test]
fn the_python_sdk_passes_its_tests() {
    suite("python3", "python-sdk");
}

/// The oldest Python the package supports (`requires-python >= 3.9`),
/// where the machine has it (`python3.9` on PATH, as pyenv provides on
/// the project's machines); said and passed over where it has not.
#[test]
fn the_python_sdk_passes_its_tests_on_python_3_9() {
    let found = Command::new("python3.9")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("python3.9 is not on this machine: the SDK's tests ran on python3 only");
        return;
    }
    suite("python3.9", "python-sdk-3.9");
}
