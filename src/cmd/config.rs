//! `taskgrid.toml`: every setting of `taskgrid server` and `taskgrid worker`
//! in a file, and `taskgrid config check|example`.
//!
//! The file has a `[server]` and a `[worker]` table whose keys are the long
//! flags of those commands (`data-dir = "/var/lib/taskgrid"`, `retain =
//! "14d"`, `queue-limit = { emails = 10000 }`; `data_dir` is read as
//! `data-dir`). `taskgrid up` reads `[server]`, and from `[worker]` the
//! flags it has of its own (`slots`, `label`).
//!
//! The layering is clap's: a file value becomes the flag's default, so a
//! flag on the command line wins over its environment variable, which wins
//! over the file, which wins over the built-in default — and a file value
//! goes through the same parser as the flag. Keys and values are checked
//! before anything starts: an unknown key or a bad value is an error that
//! names the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use toml::Spanned;

/// The file's name, in the current directory or `$XDG_CONFIG_HOME/taskgrid/`.
pub(crate) const FILE_NAME: &str = "taskgrid.toml";

/// The file's tables, and the command each one configures.
const SECTIONS: [&str; 2] = ["server", "worker"];

/// Flags no file sets (they are about the command line itself).
const NOT_IN_FILE: [&str; 3] = ["help", "version", "config"];

/// Options of `taskgrid config`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Check the configuration file and print the effective settings of
    /// `server` and `worker`, each with where it came from (environment,
    /// file and line, default).
    Check,
    /// Print a taskgrid.toml with every key, its description and its
    /// default (keys without a default are commented out).
    Example,
}

/// One `key = value` of the file.
#[derive(Debug, Clone)]
struct Entry {
    /// The flag's id in clap (the field name).
    id: clap::Id,
    /// The key as written.
    key: String,
    line: usize,
    values: Vec<String>,
}

/// A read and checked configuration file.
#[derive(Debug, Clone)]
pub(crate) struct File {
    path: PathBuf,
    /// Per section, its entries.
    sections: BTreeMap<&'static str, Vec<Entry>>,
}

/// Which file to read: `--config PATH` (or `TASKGRID_CONFIG`), which must
/// exist; else `./taskgrid.toml`; else `$XDG_CONFIG_HOME/taskgrid/taskgrid.toml`
/// (`~/.config/taskgrid/…` when the variable is unset); else none.
pub(crate) fn locate(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("{}: no such configuration file (--config)", p.display());
        }
        return Ok(Some(p.to_owned()));
    }
    let here = PathBuf::from(FILE_NAME);
    if here.is_file() {
        return Ok(Some(here));
    }
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    Ok(dir
        .map(|d| d.join("taskgrid").join(FILE_NAME))
        .filter(|p| p.is_file()))
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// A TOML value as the strings a flag would be given.
fn flag_values(value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            toml::Value::Datetime(d) => Ok(d.to_string()),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                Err("a list or table may hold only strings, numbers and booleans".into())
            }
        }
    };
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        // `label = { gpu = "a100" }`, `queue-limit = { emails = 10000 }`.
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| scalar(v).map(|v| format!("{k}={v}")))
            .collect(),
        v => scalar(v).map(|s| vec![s]),
    }
}

/// Whether the flag takes no value (`--full-sync`).
fn is_switch(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Whether the flag may be given more than once.
fn is_list(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

impl File {
    /// Reads and checks `path` against the commands it configures (`cli`
    /// holds them as subcommands): syntax, tables, keys, and each value
    /// through its flag's parser.
    pub(crate) fn read(path: &Path, cli: &Command) -> anyhow::Result<File> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the configuration file", path.display()))?;
        Self::parse(path, &text, cli)
    }

    fn parse(path: &Path, text: &str, cli: &Command) -> anyhow::Result<File> {
        type Table = BTreeMap<Spanned<String>, Spanned<toml::Value>>;
        let at = |line: usize| format!("{}:{line}", path.display());
        let doc: BTreeMap<Spanned<String>, Spanned<Table>> = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            anyhow::anyhow!("{}: {}", at(line), e.message())
        })?;
        let mut sections = BTreeMap::new();
        for (name, table) in doc {
            let line = line_of(text, name.span().start);
            let Some(section) = SECTIONS.iter().find(|s| **s == name.get_ref().as_str()) else {
                bail!(
                    "{}: unknown table [{}] (a configuration file has [server] and [worker])",
                    at(line),
                    name.get_ref()
                );
            };
            let Some(command) = cli.find_subcommand(section) else {
                bail!("{}: no command `{section}`", at(line));
            };
            let mut entries = Vec::new();
            for (key, value) in table.into_inner() {
                let line = line_of(text, key.span().start);
                let key = key.into_inner();
                let flag = key.replace('_', "-");
                let Some(arg) = command
                    .get_arguments()
                    .find(|a| a.get_long() == Some(flag.as_str()))
                    .filter(|a| !NOT_IN_FILE.contains(&a.get_id().as_str()))
                else {
                    bail!(
                        "{}: unknown key `{key}` in [{section}] (`taskgrid {section} --help` lists the flags; each is a key, as in `data-dir`)",
                        at(line)
                    );
                };
                let values = flag_values(value.get_ref())
                    .map_err(|e| anyhow::anyhow!("{}: `{key}`: {e}", at(line)))?;
                if is_switch(arg) {
                    if !value.get_ref().is_bool() {
                        bail!("{}: `{key}` is a switch: write true or false", at(line));
                    }
                } else {
                    if values.len() != 1 && !is_list(arg) {
                        bail!("{}: `{key}` takes one value, not a list", at(line));
                    }
                    // Through the flag's own parser, alone (its relations
                    // to other flags are the command line's business).
                    let alone = Command::new(*section).no_binary_name(true).arg(
                        clap::Arg::new("value")
                            .long(flag.clone())
                            .value_name(key.clone())
                            .allow_hyphen_values(true)
                            .value_parser(arg.get_value_parser().clone()),
                    );
                    for v in &values {
                        alone
                            .clone()
                            .try_get_matches_from([format!("--{flag}"), v.clone()])
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "{}: `{key}`: {}",
                                    at(line),
                                    clap_message(&e.to_string())
                                )
                            })?;
                    }
                }
                entries.push(Entry {
                    id: arg.get_id().clone(),
                    key,
                    line,
                    values,
                });
            }
            sections.insert(*section, entries);
        }
        Ok(File {
            path: path.to_owned(),
            sections,
        })
    }

    /// `cli` with this file's values as the defaults of the flags of
    /// `server`, `worker` and `up`.
    pub(crate) fn apply(&self, mut cli: Command) -> Command {
        for (section, entries) in &self.sections {
            cli = cli.mut_subcommand(*section, |c| set_defaults(c, entries));
        }
        // `up` is a coordinator with a local worker: all of [server], and
        // from [worker] what `up` has that a server has not.
        let server_ids: Vec<clap::Id> = cli
            .find_subcommand("server")
            .map(|s| s.get_arguments().map(|a| a.get_id().clone()).collect())
            .unwrap_or_default();
        let up_ids: Vec<clap::Id> = cli
            .find_subcommand("up")
            .map(|s| s.get_arguments().map(|a| a.get_id().clone()).collect())
            .unwrap_or_default();
        let for_up: Vec<Entry> = self
            .entries("server")
            .iter()
            .chain(
                self.entries("worker")
                    .iter()
                    .filter(|e| !server_ids.contains(&e.id)),
            )
            .filter(|e| up_ids.contains(&e.id))
            .cloned()
            .collect();
        cli.mut_subcommand("up", |c| set_defaults(c, &for_up))
    }

    fn entries(&self, section: &str) -> &[Entry] {
        self.sections.get(section).map_or(&[], Vec::as_slice)
    }

    /// Where `id` of `section` was set in the file, as `PATH:LINE`.
    fn origin(&self, section: &str, id: &clap::Id) -> Option<String> {
        self.entries(section)
            .iter()
            .find(|e| &e.id == id)
            .map(|e| format!("{}:{} ({})", self.path.display(), e.line, e.key))
    }
}

fn set_defaults(mut c: Command, entries: &[Entry]) -> Command {
    for e in entries {
        let values = e.values.clone();
        c = c.mut_arg(e.id.clone(), |a| a.default_values(values));
    }
    c
}

/// A clap error's message without its `error: ` prefix and usage lines.
fn clap_message(rendered: &str) -> String {
    rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

/// The configuration file for this command line: its `--config` (or
/// `TASKGRID_CONFIG`) when given, else one found in the usual places —
/// read only for the commands it configures (`server`, `worker`, `up`,
/// `config`), so that a broken file does not stop `taskgrid list`.
pub(crate) fn for_command_line(
    cli: &Command,
    argv: &[std::ffi::OsString],
) -> anyhow::Result<Option<File>> {
    let first = cli.clone().ignore_errors(true).try_get_matches_from(argv);
    let Ok(m) = first else {
        return Ok(None);
    };
    let Some(sub) = m.subcommand_name() else {
        return Ok(None);
    };
    if !matches!(sub, "server" | "worker" | "up" | "config") {
        return Ok(None);
    }
    let explicit = m
        .subcommand()
        .and_then(|(_, s)| s.get_one::<PathBuf>("config").cloned())
        .or_else(|| m.get_one::<PathBuf>("config").cloned());
    match locate(explicit.as_deref())? {
        Some(path) => File::read(&path, cli).map(Some),
        None => Ok(None),
    }
}

/// `taskgrid config check|example`.
pub(crate) fn run(args: Args, cli: &Command, file: Option<&File>) -> anyhow::Result<i32> {
    match args.command {
        Sub::Check => print(&check(cli, file)?),
        Sub::Example => print(&example(cli)),
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) is no error.
fn print(text: &str) -> anyhow::Result<i32> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// Prints the effective settings of `server` and `worker` as a
/// taskgrid.toml, each with its origin.
fn check(cli: &Command, file: Option<&File>) -> anyhow::Result<String> {
    let mut out = match file {
        Some(f) => format!("# configuration file: {} (no errors)\n", f.path.display()),
        None => format!(
            "# no configuration file (looked for ./{FILE_NAME} and $XDG_CONFIG_HOME/taskgrid/{FILE_NAME})\n"
        ),
    };
    let original = cli;
    let cli = match file {
        Some(f) => f.apply(cli.clone()),
        None => cli.clone(),
    };
    for section in SECTIONS {
        let m = cli
            .clone()
            .try_get_matches_from(["taskgrid", section])
            .map_err(|e| anyhow::anyhow!("[{section}]: {}", clap_message(&e.to_string())))?;
        let Some((_, m)) = m.subcommand() else {
            bail!("no command `{section}`");
        };
        let Some(command) = cli.find_subcommand(section) else {
            bail!("no command `{section}`");
        };
        out.push_str(&format!("\n[{section}]\n"));
        // In the order of `--help` (a file's value moves its flag last in
        // the changed command).
        let order: Vec<clap::Id> = original
            .find_subcommand(section)
            .map(|c| settings(c).map(|a| a.get_id().clone()).collect())
            .unwrap_or_default();
        for id in &order {
            let Some(arg) = command.get_arguments().find(|a| a.get_id() == id) else {
                continue;
            };
            let id = arg.get_id();
            let key = arg.get_long().unwrap_or(id.as_str());
            let origin = match m.value_source(id.as_str()) {
                Some(ValueSource::EnvVariable) => format!(
                    "environment {}",
                    arg.get_env()
                        .map(|e| e.to_string_lossy())
                        .unwrap_or_default()
                ),
                Some(ValueSource::DefaultValue) => file
                    .and_then(|f| f.origin(section, id))
                    .unwrap_or_else(|| "default".into()),
                Some(ValueSource::CommandLine) => "command line".into(),
                _ => "not set".into(),
            };
            let line = match raw(m, id.as_str()) {
                Some(_) if arg.is_hide_env_values_set() => {
                    format!("{key} = \"(hidden)\"  # {origin}")
                }
                Some(values) => format!("{key} = {}  # {origin}", toml_value(arg, &values)),
                None => format!("# {key} is not set"),
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The flags of `command` a file may set.
fn settings(command: &Command) -> impl Iterator<Item = &clap::Arg> {
    command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !NOT_IN_FILE.contains(&a.get_id().as_str()))
}

/// The raw values of `id` in `m`, if it has any.
fn raw(m: &ArgMatches, id: &str) -> Option<Vec<String>> {
    let values: Vec<String> = m
        .try_get_raw(id)
        .ok()??
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    (!values.is_empty()).then_some(values)
}

/// Values as TOML: a switch as a boolean, numbers bare, the rest quoted;
/// a repeatable flag as a list.
fn toml_value(arg: &clap::Arg, values: &[String]) -> String {
    let one = |v: &String| -> String {
        if is_switch(arg) || v.parse::<i64>().is_ok() {
            v.clone()
        } else {
            // A JSON string is a TOML basic string.
            serde_json::Value::String(v.clone()).to_string()
        }
    };
    if is_list(arg) {
        format!(
            "[{}]",
            values.iter().map(one).collect::<Vec<_>>().join(", ")
        )
    } else {
        values.first().map(one).unwrap_or_default()
    }
}

/// `text` in lines of at most `width` characters, broken between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// A taskgrid.toml with every key of `server` and `worker`: its help as a
/// comment, then the key with its default, or commented out without one.
pub(crate) fn example(cli: &Command) -> String {
    let mut out = String::from(
        "# taskgrid.toml: settings of `taskgrid server` (and `taskgrid up`) and\n\
         # `taskgrid worker`. Each key is the long flag of that command. A flag\n\
         # on the command line wins over its environment variable, which wins\n\
         # over this file, which wins over the default shown here.\n",
    );
    for section in SECTIONS {
        let Some(command) = cli.find_subcommand(section) else {
            continue;
        };
        out.push_str(&format!("\n[{section}]\n"));
        for arg in settings(command) {
            let key = arg.get_long().unwrap_or(arg.get_id().as_str());
            let help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            for line in help.lines() {
                for part in wrap(line, 76) {
                    out.push_str(format!("# {part}").trim_end());
                    out.push('\n');
                }
            }
            if let Some(env) = arg.get_env() {
                out.push_str(&format!("# (environment: {})\n", env.to_string_lossy()));
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if is_switch(arg) {
                out.push_str(&format!("{key} = false\n\n"));
            } else if defaults.is_empty() {
                let hint = if is_list(arg) { "[]" } else { "\"\"" };
                out.push_str(&format!("# {key} = {hint}\n\n"));
            } else {
                out.push_str(&format!("{key} = {}\n\n", toml_value(arg, &defaults)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn cli() -> Command {
        crate::Cli::command()
    }

    fn parse(text: &str) -> anyhow::Result<File> {
        File::parse(Path::new("taskgrid.toml"), text, &cli())
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = parse("[server]\nlisten = \"127.0.0.1:1\"\n\nretian = \"1d\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("taskgrid.toml:4: unknown key `retian` in [server]"),
            "{e}"
        );
        let e = parse("[sever]\n").unwrap_err().to_string();
        assert!(
            e.starts_with("taskgrid.toml:1: unknown table [sever]"),
            "{e}"
        );
        // A flag of the other command is not a key of this one.
        let e = parse("[worker]\nretain = \"1d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2: unknown key `retain` in [worker]"), "{e}");
    }

    #[test]
    fn a_bad_value_is_refused_by_the_flags_own_parser() {
        let e = parse("[server]\nretain = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("taskgrid.toml:2: `retain`: "), "{e}");
        assert!(e.contains("soon"), "{e}");
        let e = parse("[server]\nlisten = [\"a\", \"b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes one value"), "{e}");
        let e = parse("[server]\nfull-sync = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("switch"), "{e}");
        let e = parse("[server]\nclient-token = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse("[server]\nlisten = \n").unwrap_err().to_string();
        assert!(e.starts_with("taskgrid.toml:2: "), "{e}");
    }

    #[test]
    fn file_values_become_defaults_below_flags() {
        let f = parse(
            "[server]\ndata_dir = \"/srv/tg\"\nretain = \"1d\"\nqueue-limit = { emails = 10 }\n\n[worker]\nslots = 3\nlabel = [\"gpu\", \"zone=a\"]\nprefetch = 2\n",
        )
        .unwrap();
        let cli = f.apply(cli());
        let server = |argv: &[&str]| {
            let m = cli.clone().try_get_matches_from(argv).unwrap();
            let (_, m) = m.subcommand().unwrap();
            (
                raw(m, "data_dir").unwrap(),
                raw(m, "retain").unwrap(),
                raw(m, "queue_limits").unwrap(),
            )
        };
        assert_eq!(
            server(&["taskgrid", "server"]),
            (
                vec!["/srv/tg".into()],
                vec!["1d".into()],
                vec!["emails=10".into()]
            )
        );
        assert_eq!(
            server(&["taskgrid", "server", "--retain", "2h"]).1,
            vec!["2h".to_owned()]
        );
        // `up`: all of [server], and the worker keys it has (slots,
        // label), not those it has not (prefetch).
        let m = cli
            .clone()
            .try_get_matches_from(["taskgrid", "up"])
            .unwrap();
        let (_, m) = m.subcommand().unwrap();
        assert_eq!(raw(m, "data_dir").unwrap(), vec!["/srv/tg".to_owned()]);
        assert_eq!(raw(m, "slots").unwrap(), vec!["3".to_owned()]);
        assert_eq!(
            raw(m, "labels").unwrap(),
            vec!["gpu".to_owned(), "zone=a".to_owned()]
        );
    }

    #[test]
    fn docs_operations_holds_the_example_as_it_is() {
        let doc = include_str!("../../docs/operations.md");
        let begin = "<!-- taskgrid config example: begin -->\n```toml\n";
        let start = doc.find(begin).expect("the example's begin marker") + begin.len();
        let end = doc[start..]
            .find("```\n<!-- taskgrid config example: end -->")
            .expect("the example's end marker");
        assert_eq!(
            &doc[start..start + end],
            example(&cli()),
            "docs/operations.md is out of date: paste `taskgrid config example` into it"
        );
    }

    #[test]
    fn the_example_is_a_valid_file_with_every_key() {
        let text = example(&cli());
        let f = parse(&text).unwrap();
        for section in SECTIONS {
            let command = cli().find_subcommand(section).unwrap().clone();
            for arg in settings(&command) {
                let key = arg.get_long().unwrap();
                assert!(
                    text.contains(&format!("\n{key} = "))
                        || text.contains(&format!("\n# {key} = ")),
                    "{key} of [{section}] is missing"
                );
            }
        }
        // Setting each default again changes nothing.
        assert!(f.entries("server").iter().any(|e| e.key == "listen"));
    }
}
