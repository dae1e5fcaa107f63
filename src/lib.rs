//! ipproxy: a sidecar reverse proxy that holds IntelePeer credentials so that internal
//! apps don't have to.
//!
//! Module map (data flows one way: `server` → `access` → `route` → `proxy` → `token`):
//!
//! - [`config`]: the TOML file and `IPPROXY_*` variables → a validated [`config::Config`].
//! - [`token`]: one shared, self-refreshing token per credential (`ArcSwap`), single flight.
//! - [`route`]: longest-prefix route table → upstream, credential, header format.
//! - [`proxy`]: the forwarding handler: header rules, replay buffer, the one retry on 401.
//! - [`error`]: the proxy's own answers (the JSON error table of DESIGN.md), in one place.
//! - [`server`]: listeners, layers, load shedding, graceful shutdown.
//! - [`sim`]: the IntelePeer simulator; stands apart (the proxy never imports it).

pub mod config;
pub mod sim;
