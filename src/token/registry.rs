//! The credential registry: one [`Credential`] per configured credential that some
//! route uses (an unused credential never logs in), each built with the header
//! formats its routes need.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::clock::{SystemClock, ThreadRandom};
use super::credential::{CredentialParts, Settings};
use super::source::{LoginTransport, SessionLogin, StaticSource, TokenSource};
use super::store::Store;
use super::{Credential, CredentialStatus, FormatId};
use crate::config::{Config, CredentialConfig, CredentialSource, HeaderFormat, SecretSource};
use crate::secret::{Secret, SecretFile};
use crate::task::BackgroundTask;

/// Every credential in use, by name. Cheap to clone: credentials are shared handles.
#[derive(Debug, Clone)]
pub struct Registry {
    credentials: BTreeMap<String, Credential>,
}

/// What a route holds of its credential: the shared handle, the header the token goes
/// in, and which of the token's prebuilt header values it sends.
#[derive(Debug, Clone)]
pub struct RouteToken {
    pub credential: Credential,
    pub header: http::HeaderName,
    pub format: FormatId,
}

impl Registry {
    /// Creates the credentials that `config.routes` use, and each route's token handle
    /// (in the order of `config.routes`). Each credential's header formats are its
    /// own, then every distinct route override, so that every header value is built
    /// once per token.
    pub fn build(
        config: &Config,
        transport: &Arc<dyn LoginTransport>,
        store: &Store,
    ) -> (Self, Vec<RouteToken>) {
        let mut formats: BTreeMap<&str, Vec<HeaderFormat>> = BTreeMap::new();
        let mut route_formats = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let credential = &config.credentials[&route.credential];
            let list = formats
                .entry(route.credential.as_str())
                .or_insert_with(|| vec![credential.format.clone()]);
            let wanted = route.format.as_ref().unwrap_or(&credential.format);
            let index = match list.iter().position(|known| known == wanted) {
                Some(index) => index,
                None => {
                    list.push(wanted.clone());
                    list.len() - 1
                }
            };
            route_formats.push(FormatId(index));
        }
        let credentials: BTreeMap<String, Credential> = formats
            .into_iter()
            .map(|(name, formats)| {
                let credential = &config.credentials[name];
                let parts = CredentialParts {
                    name: name.to_owned(),
                    settings: Settings {
                        token_ttl: credential.token_ttl,
                        refresh_before: credential.refresh_before,
                        min_reauth_interval: credential.min_reauth_interval,
                        request_timeout: config.server.request_timeout,
                    },
                    formats,
                    source: source(credential, transport, config.server.request_timeout),
                    store: store.clone(),
                    clock: Arc::new(SystemClock),
                    random: Arc::new(ThreadRandom),
                };
                (name.to_owned(), Credential::new(parts))
            })
            .collect();
        let tokens = config
            .routes
            .iter()
            .zip(route_formats)
            .map(|(route, format)| RouteToken {
                credential: credentials[&route.credential].clone(),
                header: route
                    .header
                    .clone()
                    .unwrap_or_else(|| config.credentials[&route.credential].header.clone()),
                format,
            })
            .collect();
        (Self { credentials }, tokens)
    }

    /// The credential named `name`.
    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.credentials.get(name)
    }

    /// Every credential, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Credential> {
        self.credentials.values()
    }

    /// The readiness view of every credential.
    pub fn statuses(&self) -> Vec<CredentialStatus> {
        self.iter().map(Credential::status).collect()
    }

    /// Starts every credential's first fetch and its refresh task; dropping the guards
    /// stops the tasks.
    pub fn start(&self) -> Vec<BackgroundTask> {
        self.iter().map(Credential::start).collect()
    }
}

/// The token source a credential's configuration describes.
fn source(
    credential: &CredentialConfig,
    transport: &Arc<dyn LoginTransport>,
    login_timeout: std::time::Duration,
) -> Box<dyn TokenSource> {
    match &credential.source {
        CredentialSource::Session {
            url,
            username,
            password,
        } => Box::new(SessionLogin {
            url: url.clone(),
            username: username.clone(),
            password: secret(password),
            timeout: login_timeout,
            transport: Arc::clone(transport),
        }),
        CredentialSource::Static(token) => Box::new(StaticSource(secret(token))),
    }
}

fn secret(source: &SecretSource) -> Secret {
    match source {
        SecretSource::Inline(secret) => Secret::Inline(secret.clone()),
        SecretSource::File(path) => Secret::File(SecretFile::new(path.clone())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const CONFIG: &str = r#"
[auth]
kind = "static"
token = "tok-1"

[[route]]
name = "bearer"
prefix = "/a/"

[[route]]
name = "bare"
prefix = "/b/"
format = "{token}"

[[route]]
name = "bare-too"
prefix = "/c/"
format = "{token}"

[[route]]
name = "token"
prefix = "/d/"
format = "Token {token}"
"#;

    #[tokio::test]
    async fn each_route_sends_its_format_built_once_per_distinct_format() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ipproxy.toml");
        std::fs::write(&path, CONFIG).expect("write");
        let config = crate::config::load(Some(&path), []).expect("config");
        let login = crate::proxy::build_login_client(&config.upstream).expect("client");
        let (registry, tokens) = Registry::build(&config, &login, &Store::memory());

        let names: Vec<&str> = registry.iter().map(Credential::name).collect();
        assert_eq!(names, ["default"], "one credential for the four routes");
        assert!(registry.get("default").is_some() && registry.get("cpaas").is_none());
        let formats: Vec<usize> = tokens.iter().map(|token| token.format.0).collect();
        assert_eq!(formats, [0, 1, 1, 2], "the two bare routes share a format");

        let _tasks = registry.start();
        let mut headers = Vec::new();
        for token in &tokens {
            let lease = token
                .credential
                .lease(token.format, Duration::from_secs(5))
                .await
                .expect("the static token");
            headers.push(lease.header.to_str().expect("text").to_owned());
        }
        assert_eq!(headers, ["Bearer tok-1", "tok-1", "tok-1", "Token tok-1"]);
        let statuses = registry.statuses();
        assert_eq!(statuses.len(), 1);
        assert!(statuses[0].ready && statuses[0].name == "default");
    }
}
