//! ipproxy: a sidecar reverse proxy that holds IntelePeer credentials so that internal
//! apps don't have to.
//!
//! Module map (data flows one way: `server` → `access` → `route` → `proxy` → `token`):
//!
//! - [`config`]: the TOML file and `IPPROXY_*` variables → a validated [`config::Config`].
//! - [`server`]: listeners, the request pipeline, load shedding, graceful shutdown.
//! - [`connection`]: per-connection bounds on slow and silent clients.
//! - [`access`]: path safety, inbound client keys, the path allowlist.
//! - [`route`]: longest-prefix route table → upstream, credential, header format.
//! - [`proxy`]: forwarding: header rules, replay buffer, the one retry on 401; the one
//!   outbound client stack (TLS, `ca_file`, the egress `CONNECT` tunnel) for forwarding
//!   and logins.
//! - [`token`]: one shared, self-refreshing token per credential (`ArcSwap`), single flight.
//! - [`admin`]: `/healthz`, `/readyz`, `/refresh`, `/metrics`.
//! - [`error`]: the proxy's own answers (DESIGN.md's error table), in one place.
//! - [`telemetry`]: logging and metrics set-up and recording.
//! - [`task`]: background tasks that stop when their guard drops.
//! - [`sim`]: the IntelePeer simulator; stands apart (the proxy never imports it).

pub mod access;
pub mod admin;
pub mod config;
pub mod connection;
pub mod error;
pub mod hop_by_hop;
pub mod proxy;
pub mod reload;
pub mod request_id;
pub mod route;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod task;
pub mod telemetry;
pub mod token;

pub use server::{Listeners, serve};
