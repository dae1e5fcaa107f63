//! Tokens: one shared, self-refreshing token per credential, one login per refresh
//! for the whole fleet.
//!
//! - `registry`: the credentials in use, by name, built from the configuration.
//! - `credential`: one credential's single flight (generation compare, backoff gate,
//!   reauth interval), the fleet protocol over the store, and the refresh loop.
//! - `slot`: the current token in an `ArcSwap`, with its prebuilt header values.
//! - [`schedule`]: pure timing (lifetime, refresh time, next fetch, backoff).
//! - `source`: where tokens come from (session login, static token), behind a trait.
//! - `readiness`: what `/readyz` shows of a credential.
//! - [`clock`]: the clocks and random draws, injectable for tests.
//! - [`store`]: where tokens live (`memory`, `redis`).
//!
//! Knows nothing of client requests: the proxy asks for a [`Lease`] and reports 401s.

pub mod clock;
mod credential;
mod readiness;
mod registry;
pub mod schedule;
mod slot;
mod source;
pub mod store;

pub use credential::{
    Credential, CredentialParts, Lease, RefreshError, Settings, TokenUnavailable,
};
pub use readiness::CredentialStatus;
pub use registry::{Registry, RouteToken};
pub use schedule::RefreshReason;
pub use slot::{FormatId, Token, TokenGeneration};
pub use source::{
    AuthError, LoginAnswer, LoginTransport, LoginTransportError, SessionLogin, StaticSource,
    TokenSource,
};
