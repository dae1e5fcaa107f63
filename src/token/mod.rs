//! Tokens: one shared, self-refreshing token per credential.
//!
//! - [`expiry`]: pure timing (lifetime from a JWT or `token_ttl`, refresh time, backoff).
//! - `source`: the session login and static tokens (inline or file).
//! - `credential`: the `ArcSwap` cell, the single flight, the refresh loop.
//!
//! Knows nothing of client requests: the proxy asks for a [`Lease`] and reports 401s.

mod credential;
pub mod expiry;
mod source;

pub use credential::{
    Credential, CredentialStatus, Lease, RefreshReason, Token, TokenGeneration, TokenUnavailable,
};
pub use source::{AuthError, LoginAnswer, LoginTransport, LoginTransportError};
