//! The coordinator's network face, on a [`TaskSystem`]: the HTTP API and
//! its server-sent events ([`http`]), the web dashboard, and the gRPC
//! worker gateway ([`gateway()`]). `taskgrid server` serves both on one
//! port, in plain text or over TLS ([`tls`]).
//!
//! This crate owns transports only: every decision is the runtime's
//! (`taskgrid-runtime`), reached through its public API — the
//! [`TaskSystem`] for clients, its
//! [`WorkerService`](taskgrid_runtime::WorkerService) for workers. It
//! must never reach into the engine or the store behind them; nothing else
//! depends on it but the `taskgrid` binary.
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use taskgrid_runtime::TaskSystem;
//! use taskgrid_server::http::{ApiConfig, router};
//! use taskgrid_server::{GatewayConfig, gateway};
//!
//! let system = Arc::new(TaskSystem::builder().build()?);
//! system.start()?;
//! let api = router(system.clone(), ApiConfig::default());
//! let workers = gateway(&system, GatewayConfig::default());
//! // serve `api` with axum and `workers` with tonic (see `taskgrid server`)
//! # let _ = (api, workers);
//! # Ok(()) }
//! ```
//!
//! [`TaskSystem`]: taskgrid_runtime::TaskSystem

mod front;
mod gateway;
pub mod http;
pub mod tls;

pub use front::Front;
pub use gateway::{Gateway, GatewayConfig, gateway};
