//! Below routing: a routed request forwarded upstream with its token, and the client
//! stack it travels on.
//!
//! - `forward`: one client request → one upstream attempt, and the one retry on 401.
//! - `headers`: what crosses the proxy in each direction.
//! - `body`: the replay buffer and the streaming `max_body` limit.
//! - `outbound`: the one client stack (TLS, `ca_file`) for forwarding and logins.
//! - `pool`: the worker's upstream connections, driven by the requests that use them.
//! - `egress`: the `CONNECT` tunnel through a corporate egress proxy.
//!
//! Knows routes and leases, not where tokens come from.

mod body;
pub mod egress;
mod forward;
pub mod headers;
mod outbound;
pub mod pool;

pub use body::{OutboundBody, UpstreamBody};
pub use forward::{Failed, Limits, Outcome, forward, forward_prepared};
pub use outbound::{ClientError, build_client, build_client_with, build_login_client};
pub use pool::{ResponseBody, UpstreamClient};
