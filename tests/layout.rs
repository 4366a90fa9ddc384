//! The crate boundaries that keep users from paying for what they do not
//! run: a remote worker compiles no SQLite, axum or HTTP server; a handler
//! author compiles no gRPC; the HTTP client and the TUI compile no gRPC
//! and no protoc; an embedded runtime compiles no HTTP or gRPC server. Checked on the resolved dependency graph (`cargo tree`,
//! normal and build dependencies, features as that crate alone selects
//! them), so a new dependency that breaks a boundary fails here.

use std::collections::BTreeMap;
use std::process::Command;

/// Each package `crate` compiles, by name, with the features enabled on it.
fn graph(krate: &str) -> BTreeMap<String, Vec<String>> {
    graph_with(krate, &[])
}

/// [`graph`] with extra `cargo tree` flags (`--no-default-features`).
fn graph_with(krate: &str, extra: &[&str]) -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-p", krate, "-e", "normal,build"])
        .args(["--prefix", "none", "-f", "{p}|{f}"])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {krate} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((package, features)) = line.split_once('|') else {
            continue;
        };
        let Some(name) = package.split_whitespace().next() else {
            continue;
        };
        let entry = packages.entry(name.to_owned()).or_default();
        for f in features.trim_end_matches(" (*)").split(',') {
            let f = f.trim();
            if !f.is_empty() && !entry.iter().any(|e| e == f) {
                entry.push(f.to_owned());
            }
        }
    }
    assert!(
        packages.contains_key(krate),
        "cargo tree -p {krate} did not list {krate} itself: {packages:?}"
    );
    packages
}

fn assert_absent(krate: &str, graph: &BTreeMap<String, Vec<String>>, forbidden: &[&str]) {
    for name in forbidden {
        assert!(
            !graph.contains_key(*name),
            "{krate} must not compile {name}, but its dependency graph holds it"
        );
    }
}

fn assert_feature_off(
    krate: &str,
    graph: &BTreeMap<String, Vec<String>>,
    package: &str,
    feature: &str,
) {
    if let Some(features) = graph.get(package) {
        assert!(
            !features.iter().any(|f| f == feature),
            "{krate} must not enable {package}'s {feature:?} feature, but it does: {features:?}"
        );
    }
}

#[test]
fn a_remote_worker_compiles_no_store_and_no_server() {
    let g = graph("taskgrid-worker");
    assert_absent(
        "taskgrid-worker",
        &g,
        &[
            "taskgrid-runtime",
            "taskgrid-store",
            "taskgrid-api",
            "rusqlite",
            "libsqlite3-sys",
            "axum",
        ],
    );
    for (package, feature) in [
        ("hyper", "server"),
        ("tonic", "server"),
        ("tonic", "router"),
    ] {
        assert_feature_off("taskgrid-worker", &g, package, feature);
    }
    // the worker does speak gRPC: the check above is about the server half
    assert!(
        g.contains_key("tonic"),
        "the worker should use tonic's client"
    );
    assert!(g.contains_key("taskgrid-sdk"));
}

#[test]
fn a_handler_author_compiles_serde_and_tokio_sync_only() {
    let g = graph("taskgrid-sdk");
    assert_absent(
        "taskgrid-sdk",
        &g,
        &[
            "taskgrid-proto",
            "taskgrid-store",
            "tonic",
            "prost",
            "hyper",
            "axum",
            "rusqlite",
        ],
    );
    assert_feature_off("taskgrid-sdk", &g, "tokio", "rt");
    assert_feature_off("taskgrid-sdk", &g, "tokio", "net");
}

#[test]
fn the_http_client_and_the_tui_compile_no_grpc() {
    for krate in ["taskgrid-api", "taskgrid-client", "taskgrid-tui"] {
        let g = graph(krate);
        assert_absent(
            krate,
            &g,
            &[
                "taskgrid-proto",
                "taskgrid-runtime",
                "taskgrid-store",
                "tonic",
                "prost",
                "protoc-bin-vendored",
                "axum",
                "rusqlite",
            ],
        );
    }
}

#[test]
fn sqlite_is_a_feature_of_the_store_and_the_runtime() {
    for krate in ["taskgrid-store", "taskgrid-runtime"] {
        let g = graph_with(krate, &["--no-default-features"]);
        assert_absent(krate, &g, &["rusqlite", "libsqlite3-sys"]);
        let g = graph(krate);
        assert!(
            g.contains_key("rusqlite"),
            "{krate} with default features should have SQLite"
        );
    }
}

#[test]
fn an_embedded_system_on_the_memory_store_compiles_no_server() {
    let g = graph_with("taskgrid-runtime", &["--no-default-features"]);
    assert_absent(
        "taskgrid-runtime (no default features)",
        &g,
        &[
            "taskgrid-server",
            "taskgrid-proto",
            "axum",
            "tonic",
            "hyper",
            "prost",
            "rusqlite",
        ],
    );
    // with its default features it adds SQLite, still no server
    let g = graph("taskgrid-runtime");
    assert_absent(
        "taskgrid-runtime",
        &g,
        &["taskgrid-server", "axum", "tonic", "hyper"],
    );
}

/// The files (modules) of the runtime import one another in no circle:
/// each part can be read, and changed, knowing only what it builds on.
#[test]
fn the_runtime_modules_import_each_other_in_no_circle() {
    use std::collections::{BTreeSet, HashMap};
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/taskgrid-runtime/src");
    let read = |name: &str| std::fs::read_to_string(src.join(name)).expect("a runtime source file");
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("the runtime's src") {
        let name = entry
            .expect("an entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(m) = name.strip_suffix(".rs")
            && m != "lib"
        {
            modules.insert(m.to_owned());
        }
    }
    // What lib.rs re-exports, by name: `crate::TaskSystem` means `system`.
    let mut exported: HashMap<String, String> = HashMap::new();
    for line in read("lib.rs").lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for n in names.split(|c: char| !c.is_alphanumeric() && c != '_') {
            if !n.is_empty() {
                exported.insert(n.to_owned(), module.to_owned());
            }
        }
    }
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut edges: HashMap<String, BTreeSet<String>> = HashMap::new();
    for m in &modules {
        let code: String = read(&format!("{m}.rs"))
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut deps = BTreeSet::new();
        for part in code.split("crate::").skip(1) {
            let named = match part.strip_prefix('{') {
                Some(group) => words(group.split('}').next().unwrap_or("")),
                None => words(part).into_iter().take(1).collect(),
            };
            for n in named {
                let target = if modules.contains(&n) {
                    Some(n)
                } else {
                    exported.get(&n).cloned()
                };
                if let Some(t) = target.filter(|t| t != m && modules.contains(t)) {
                    deps.insert(t);
                }
            }
        }
        edges.insert(m.clone(), deps);
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &HashMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!(
                "the runtime's modules import each other in a circle: {} -> {m}",
                path[at..].join(" -> ")
            );
        }
        path.push(m.to_owned());
        for d in edges.get(m).into_iter().flatten() {
            visit(d, edges, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
    assert!(
        edges.get("inner").is_some_and(|d| d.contains("publisher")),
        "the parser should see inner's imports: {edges:?}"
    );
}
