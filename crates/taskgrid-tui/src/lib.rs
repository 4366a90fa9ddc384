//! The taskgrid terminal dashboard (`taskgrid tui`): workers, tasks,
//! queues, the event log and the schedules of one coordinator, live from
//! its event stream and periodic reads, with a detail view that follows a
//! task's output, cancel from the keyboard, and a schedule panel (last
//! fires, next times, what holds it back) with pause/resume and trigger.
//! It talks to a coordinator through `taskgrid-client` only, and must
//! never depend on gRPC, the runtime or the server.
//!
//! It is built the Elm way so that everything but the terminal is testable
//! without one:
//!
//! - [`App`] is the state; [`update`] is the one pure function that changes
//!   it, from a [`Msg`] (a [`Key`], an event, an answer of the
//!   coordinator), returning the [`Effect`]s to carry out;
//! - [`draw`] renders an [`App`] on any ratatui backend (tests use
//!   `TestBackend`);
//! - [`run`] is the event loop: terminal, keyboard, event stream,
//!   periodic reads, effects carried out with a [`taskgrid_client::Client`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = taskgrid_client::Client::new("http://127.0.0.1:7070", None)?;
//! taskgrid_tui::run(client).await?;
//! # Ok(()) }
//! ```

mod detail;
mod keys;
mod output;
mod run;
mod schedules;
mod state;
mod tasks;
mod text;
mod time;
mod update;
mod view;

pub use run::{Error, FRAME_INTERVAL, RECONNECT_MAX, RECONNECT_MIN, REFRESH_INTERVAL, run};
pub use state::{App, Connection, MAX_LOG_LINES, MAX_OUTPUT_LINES, MAX_TASKS, Tab};
pub use update::{Effect, Key, Msg, update};
pub use view::draw;

#[cfg(test)]
mod tests;
