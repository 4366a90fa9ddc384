//! Which shell tasks a worker agrees to run: [`ShellPolicy`], checked before
//! anything is spawned, and the [`Program`] it resolves a command to.

use std::path::{Path, PathBuf};

use taskgrid_core::ShellCommand;

/// The shell that runs [`ShellCommand::Script`]s, by absolute path so a
/// task's `PATH` cannot replace it.
pub(crate) const SH: &str = "/bin/sh";

/// Which shell tasks this worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShellPolicy {
    /// Any program and any script.
    #[default]
    Any,
    /// Only these programs as `argv[0]`. An entry matches `argv[0]` exactly:
    /// a bare name (`"git"`) allows that name looked up on the *worker's*
    /// `PATH` (never the task's), an absolute path allows that file only.
    /// A script runs under `sh`, so it is refused unless `"sh"` or
    /// `"/bin/sh"` is listed. Tasks that set a dynamic-loader variable
    /// (`LD_*`, `DYLD_*`) are refused, since those would let any code run
    /// inside an allowed program. The list restricts what is started, not
    /// what an allowed program does with its arguments.
    AllowList(Vec<String>),
    /// No shell tasks at all.
    Disabled,
}

/// What to execute once the policy agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Program {
    /// The file to execute, or a bare name for the OS to look up.
    pub(crate) exec: PathBuf,
    /// `argv[0]` when it differs from `exec`.
    pub(crate) arg0: Option<String>,
    /// The arguments after `argv[0]`.
    pub(crate) args: Vec<String>,
    /// The program as the task named it, for messages.
    pub(crate) name: String,
}

impl ShellPolicy {
    /// The program to run for `command` with `env`, or why it is refused.
    pub(crate) fn admit(
        &self,
        command: &ShellCommand,
        env: &[(String, String)],
    ) -> Result<Program, String> {
        let allowed = match self {
            ShellPolicy::Disabled => return Err("shell tasks are disabled on this worker".into()),
            ShellPolicy::Any => None,
            ShellPolicy::AllowList(list) => Some(list),
        };
        let program = match command {
            ShellCommand::Script(script) => Program {
                exec: PathBuf::from(SH),
                arg0: Some("sh".into()),
                args: vec!["-c".into(), script.clone()],
                name: "sh".into(),
            },
            ShellCommand::Argv(argv) => {
                let Some((first, rest)) = argv.split_first() else {
                    return Err("empty command: argv has no program".into());
                };
                if first.is_empty() {
                    return Err("empty command: argv[0] is empty".into());
                }
                Program {
                    exec: PathBuf::from(first),
                    arg0: None,
                    args: rest.to_vec(),
                    name: first.clone(),
                }
            }
        };
        let Some(list) = allowed else {
            return Ok(program);
        };
        check_allowed(list, command, &program)?;
        if let Some((key, _)) = env.iter().find(|(k, _)| is_loader_var(k)) {
            return Err(format!(
                "environment variable {key} is not allowed on this worker (it has a program allow-list)"
            ));
        }
        resolve_on_worker_path(program)
    }
}

fn check_allowed(list: &[String], command: &ShellCommand, program: &Program) -> Result<(), String> {
    let listed = |name: &str| list.iter().any(|entry| entry == name);
    match command {
        ShellCommand::Script(_) if listed("sh") || listed(SH) => Ok(()),
        ShellCommand::Script(_) => Err(
            "scripts are not allowed on this worker: \"sh\" is not on its program allow-list"
                .into(),
        ),
        ShellCommand::Argv(_) if listed(&program.name) => Ok(()),
        ShellCommand::Argv(_) => Err(format!(
            "program {:?} is not on this worker's program allow-list",
            program.name
        )),
    }
}

fn is_loader_var(key: &str) -> bool {
    key.starts_with("LD_") || key.starts_with("DYLD_")
}

/// Turns a bare program name into the file the worker's own `PATH` finds,
/// so a task's `PATH` cannot swap an allowed name for another program.
fn resolve_on_worker_path(mut program: Program) -> Result<Program, String> {
    if program.exec.components().count() > 1 || program.exec.is_absolute() {
        return Ok(program); // a path: it was allowed as written
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(&program.exec))
        .find(|candidate| is_executable_file(candidate));
    match found {
        Some(file) => {
            program.arg0 = Some(program.name.clone());
            program.exec = file;
            Ok(program)
        }
        None => Err(format!(
            "program {:?} not found on this worker's PATH",
            program.name
        )),
    }
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> ShellCommand {
        ShellCommand::Argv(a.iter().map(|s| (*s).to_owned()).collect())
    }

    fn allow(names: &[&str]) -> ShellPolicy {
        ShellPolicy::AllowList(names.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn any_passes_the_command_through() {
        let p = ShellPolicy::Any.admit(&argv(&["echo", "hi"]), &[]).unwrap();
        assert_eq!(p.exec, PathBuf::from("echo"));
        assert_eq!(p.args, ["hi"]);
        let s = ShellPolicy::Any
            .admit(&ShellCommand::Script("exit 3".into()), &[])
            .unwrap();
        assert_eq!(s.exec, PathBuf::from("/bin/sh"));
        assert_eq!(s.args, ["-c", "exit 3"]);
    }

    #[test]
    fn an_allow_list_matches_argv0_exactly_and_resolves_on_the_worker_path() {
        let p = allow(&["sh"])
            .admit(&argv(&["sh", "-c", ":"]), &[])
            .unwrap();
        assert!(p.exec.is_absolute(), "{p:?}");
        assert_eq!(p.arg0.as_deref(), Some("sh"));
        let err = allow(&["sh"])
            .admit(&argv(&["/bin/sh", "-c", ":"]), &[])
            .unwrap_err();
        assert!(err.contains("\"/bin/sh\" is not on"), "{err}");
        assert!(allow(&["/bin/sh"]).admit(&argv(&["/bin/sh"]), &[]).is_ok());
    }

    #[test]
    fn scripts_need_sh_on_the_allow_list() {
        let script = ShellCommand::Script("true".into());
        let err = allow(&["echo"]).admit(&script, &[]).unwrap_err();
        assert!(err.contains("scripts are not allowed"), "{err}");
        assert!(allow(&["sh"]).admit(&script, &[]).is_ok());
        assert!(allow(&["/bin/sh"]).admit(&script, &[]).is_ok());
    }

    #[test]
    fn loader_variables_are_refused_under_an_allow_list() {
        let env = [("LD_PRELOAD".to_owned(), "/tmp/x.so".to_owned())];
        let err = allow(&["sh"]).admit(&argv(&["sh"]), &env).unwrap_err();
        assert!(err.contains("LD_PRELOAD"), "{err}");
        assert!(ShellPolicy::Any.admit(&argv(&["sh"]), &env).is_ok());
    }

    #[test]
    fn empty_and_disabled_are_refused() {
        let err = ShellPolicy::Any.admit(&argv(&[]), &[]).unwrap_err();
        assert!(err.contains("empty command"), "{err}");
        let err = ShellPolicy::Disabled
            .admit(&argv(&["echo"]), &[])
            .unwrap_err();
        assert_eq!(err, "shell tasks are disabled on this worker");
    }
}
