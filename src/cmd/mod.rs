//! One module per subcommand: parse → configure → call a crate.

pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod discover;
pub(crate) mod schedule;
pub(crate) mod server;
pub(crate) mod signals;
pub(crate) mod submit;
pub(crate) mod tui;
pub(crate) mod up;
pub(crate) mod worker;

/// The value parser of every token flag (and its environment variable): a
/// token is never empty or blank. `TOKEN=` in a deployment file, an unset
/// variable expanded to nothing, must stop the process, not open the door.
pub(crate) fn token(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("a token must not be empty or blank (is its variable set?)".into());
    }
    if s.chars().any(char::is_control) {
        return Err("a token must not contain control characters".into());
    }
    Ok(s.to_owned())
}
