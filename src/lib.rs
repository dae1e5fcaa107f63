//! ipproxy: a sidecar reverse proxy that holds IntelePeer credentials so that internal
//! apps don't have to.
//!
//! Module map (data flows one way: `server` → `pipeline` → `access` → `route` →
//! `proxy` → `token` → `token::store`, and no module imports one above it; see
//! docs/DESIGN.md "The parts"):
//!
//! - [`config`]: the TOML file and the variables → a validated [`config::Config`] of
//!   domain types.
//! - [`server`]: listeners, one runtime per CPU, the accept loop; [`serve`] wires it
//!   all.
//! - [`inbound`]: per-connection bounds on slow and silent clients, and the client's
//!   request body the layers below read (so they need nothing from `server`).
//! - [`shutdown`]: signals and the drain.
//! - [`pipeline`]: the order of a request's checks, the in-flight count, the log line.
//! - [`proxy`]: forwarding (header rules, replay buffer, the one retry on 401), the one
//!   outbound client stack and the egress `CONNECT` tunnel.
//! - [`access`]: inbound client keys, the path form, the allowlist, refused methods.
//! - [`route`]: longest-prefix route table → target, credential, token header.
//! - [`idempotency`]: `Idempotency-Key` on routes that ask for it: claims, kept
//!   answers (in memory, or in the shared store), replays.
//! - [`token`]: one shared token per credential (`ArcSwap`), the single flight and its
//!   gates, the fleet protocol over the token store (`memory`, `redis`).
//! - [`admin`]: `/healthz`, `/readyz`, `/refresh`, `/metrics`, given narrow handles.
//! - [`reload`]: secret files re-read on change and on SIGHUP.
//! - [`error`]: the proxy's own answers (docs/DESIGN.md's error table), in one place.
//! - [`telemetry`]: logging and metrics set-up and recording; takes values.
//! - [`secret`]: the one secret-file reader.
//! - [`hop_by_hop`], [`request_id`], [`task`]: small shared pieces.
//! - [`sim`]: the IntelePeer simulator; stands apart (the proxy never imports it).

pub mod access;
pub(crate) mod admin;
pub mod config;
pub mod error;
pub(crate) mod hop_by_hop;
pub(crate) mod idempotency;
pub mod inbound;
pub(crate) mod pipeline;
pub mod proxy;
pub(crate) mod reload;
pub mod request_id;
pub mod route;
pub(crate) mod secret;
pub mod server;
pub mod shutdown;
pub mod sim;
pub(crate) mod task;
pub mod telemetry;
pub mod token;

pub use server::{Listeners, serve};
