//! Every path outside the control prefix: the auth endpoints, and behind the token
//! check, SMS send, ping, the byte stream and the echo. Logs the method, the path
//! (without the query: it carries phone numbers) and the outcome, never a header value.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};

use super::{Caller, MAX_INJECTED_DELAY, Simulator, State, json_error, unauthorized};

const SMS_SEND_PATH: &str = "/_rest/v4/app/sms/send";
const PING_PATH: &str = "/_rest/v4/sim/ping";
const BYTES_PREFIX: &str = "/_rest/v4/sim/bytes/";

/// Largest SMS send body read: a message is at most a few kilobytes.
const SMS_BODY_LIMIT: usize = 64 * 1024;

/// Largest body the echo digests (it streams, holding one frame at a time); as large
/// as the byte stream goes, far above the proxy's own body limits.
const ECHO_BODY_LIMIT: u64 = 1 << 30;

/// Largest `n` for `/_rest/v4/sim/bytes/{n}`.
const MAX_STREAM_BYTES: u64 = 1 << 30;

/// Chunk size of the byte stream.
const STREAM_CHUNK: usize = 64 * 1024;

/// One chunk of filler: byte `i` of the stream is `i mod 256` (the chunk size is a
/// multiple of 256, so every chunk starts the pattern afresh), letting a client check
/// that nothing was lost, repeated or reordered.
static FILLER: [u8; STREAM_CHUNK] = filler();

const fn filler() -> [u8; STREAM_CHUNK] {
    let mut chunk = [0u8; STREAM_CHUNK];
    let mut index = 0;
    while index < STREAM_CHUNK {
        // Truncation is the point: the pattern repeats every 256 bytes.
        chunk[index] = (index % 256) as u8;
        index += 1;
    }
    chunk
}

/// The router's fallback: everything outside `/__sim/`.
pub(super) async fn dispatch(AxumState(sim): AxumState<Simulator>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = if method == Method::POST && super::auth::AUTH_PATHS.contains(&path.as_str()) {
        super::auth::authenticate(&sim.state, request.into_body()).await
    } else {
        token_checked(&sim.state, request).await
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), "sim request");
    response
}

/// Check the token, wait the added latency, then answer.
async fn token_checked(state: &State, request: Request) -> Response {
    state.counters.api_calls.fetch_add(1, Ordering::Relaxed);
    let caller = match state.check_authorization(request.headers()) {
        Ok(caller) => caller,
        Err(rejection) => {
            state.counters.count_rejection(rejection);
            return unauthorized();
        }
    };
    let latency = state.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency.min(MAX_INJECTED_DELAY)).await;
    }
    let mut gate = state.held.subscribe();
    let _ = tokio::time::timeout(MAX_INJECTED_DELAY, gate.wait_for(|held| !held)).await;
    let method = request.method();
    let path = request.uri().path();
    if method == Method::POST && path == SMS_SEND_PATH {
        send_sms(state, request.into_body()).await
    } else if method == Method::GET && path == PING_PATH {
        ([(header::CONTENT_TYPE, "text/plain")], "ok").into_response()
    } else if let Some(length) = path.strip_prefix(BYTES_PREFIX)
        && method == Method::GET
    {
        stream_bytes(length)
    } else {
        echo(caller, request).await
    }
}

/// The SMS send body, as IntelePeer documents it.
#[derive(serde::Deserialize)]
struct SmsSend {
    from: String,
    #[expect(
        dead_code,
        reason = "required by the schema; the simulator sends nothing"
    )]
    to: String,
    #[expect(
        dead_code,
        reason = "required by the schema; the simulator sends nothing"
    )]
    text: String,
}

/// Sends an SMS, as far as a simulator can: checks the body, and, like IntelePeer,
/// answers 401 to a valid token when `from` is not one of the account's numbers.
async fn send_sms(state: &State, body: Body) -> Response {
    let Ok(body) = to_bytes(body, SMS_BODY_LIMIT).await else {
        return json_error(StatusCode::BAD_REQUEST, "body too large or unreadable");
    };
    let Ok(sms) = serde_json::from_slice::<SmsSend>(&body) else {
        // Deliberately vague: serde's message may quote the phone numbers.
        return json_error(
            StatusCode::BAD_REQUEST,
            "body must be JSON with string fields from, to and text",
        );
    };
    if !state.owns_number(&sms.from) {
        state
            .counters
            .rejected_content
            .fetch_add(1, Ordering::Relaxed);
        return unauthorized();
    }
    let refid = format!("SM{}", hex::encode(rand::random::<[u8; 16]>()));
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"state": "CREATED", "refid": refid})),
    )
        .into_response()
}

/// Stream `length` bytes of filler in 64 KiB chunks, with a `Content-Length`.
fn stream_bytes(length: &str) -> Response {
    let Ok(length) = length.parse::<u64>() else {
        return json_error(StatusCode::BAD_REQUEST, "length must be a whole number");
    };
    if length > MAX_STREAM_BYTES {
        return json_error(StatusCode::BAD_REQUEST, "length must be at most 1 GiB");
    }
    let chunks = futures_util::stream::unfold(length, |remaining| async move {
        if remaining == 0 {
            return None;
        }
        let size = usize::try_from(remaining).map_or(STREAM_CHUNK, |left| left.min(STREAM_CHUNK));
        let chunk = Bytes::from_static(&FILLER[..size]);
        Some((Ok::<_, Infallible>(chunk), remaining - size as u64))
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// Describe the request back: method, path, raw query, headers (but `Authorization`),
/// how the caller authenticated, and the body's length and SHA-256.
async fn echo(caller: Caller, request: Request) -> Response {
    let (parts, mut body) = request.into_parts();
    let mut digest = Sha256::new();
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return json_error(StatusCode::BAD_REQUEST, "could not read the request body");
        };
        if let Ok(data) = frame.into_data() {
            body_len += data.len() as u64;
            if body_len > ECHO_BODY_LIMIT {
                return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 GiB");
            }
            digest.update(&data);
        }
    }
    axum::Json(serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": echoed_headers(&parts.headers),
        "auth": {
            "scheme": caller.scheme.as_str(),
            "token_id": caller.token_id,
        },
        "body_len": body_len,
        "body_sha256": hex::encode(digest.finalize()),
    }))
    .into_response()
}

/// Headers by lowercase name, repeated values joined with `", "`; `Authorization` left
/// out (it is the token), everything else kept, `Proxy-Authorization` included, so
/// that tests can see what the proxy let through.
fn echoed_headers(headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    let mut echoed = serde_json::Map::new();
    for name in headers.keys() {
        if name == header::AUTHORIZATION {
            continue;
        }
        let joined = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()))
            .collect::<Vec<_>>()
            .join(", ");
        echoed.insert(name.as_str().to_owned(), serde_json::Value::String(joined));
    }
    echoed
}
