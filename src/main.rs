//! The `ipproxy` command line: parses arguments, sets up telemetry, calls the library,
//! and maps errors to exit codes (2: bad configuration or usage, 1: runtime failure).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ipproxy::config::{self, LogConfig, LogFormat};
use ipproxy::sim::{SimConfig, Simulator};
use sha2::{Digest, Sha256};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Credential-injecting sidecar proxy for IntelePeer's REST APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// TOML configuration file (or the IPPROXY_CONFIG variable).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load and validate the configuration; print it with secrets shown as ***.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The IntelePeer simulator and the proxy in front of it, on loopback.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// The IntelePeer simulator alone.
    Sim {
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: SocketAddr,
        /// Lifetime of issued tokens (e.g. 24h, 90s).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
        /// A new login revokes the user's older tokens.
        #[arg(long)]
        invalidate_on_reauth: bool,
        #[arg(long, default_value = "demo")]
        username: String,
        #[arg(long, default_value = "demo-password")]
        password: String,
        /// The account's numbers, comma-separated: an SMS from any other number is
        /// answered 401, as IntelePeer does (default: any number).
        #[arg(long, value_delimiter = ',')]
        numbers: Vec<String>,
    },
    /// Read a client key on stdin; print its line for access.keys_file: the SHA-256
    /// hex, then the caller's name when given (`<hex> <name>`).
    HashKey {
        /// The caller's name: in the request log line, and the owner of its
        /// idempotency keys (1 to 64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        name: Option<String>,
    },
    /// Exit 0 when the admin /healthz answers 200 (for container HEALTHCHECK).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
    },
}

/// The simulator's address in `demo`.
const DEMO_SIM_LISTEN: &str = "127.0.0.1:8089";
/// The demo proxy's admin address.
const DEMO_ADMIN_LISTEN: &str = "127.0.0.1:9901";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::Demo { listen } => demo(listen),
        Command::Sim {
            listen,
            token_ttl,
            invalidate_on_reauth,
            username,
            password,
            numbers,
        } => sim(
            listen,
            SimConfig {
                username,
                password,
                token_ttl,
                invalidate_on_reauth,
                numbers,
                ..SimConfig::default()
            },
        ),
        Command::HashKey { name } => hash_key(name.as_deref()),
        Command::Healthcheck { url } => healthcheck(&url),
    }
}

/// Loads the configuration or reports every problem on stderr.
fn load(file: Option<PathBuf>) -> Result<config::Config, ExitCode> {
    config::load_from_process(file.as_deref()).map_err(|error| {
        eprintln!("ipproxy: invalid configuration:\n{error}");
        ExitCode::from(2)
    })
}

fn run(file: Option<PathBuf>) -> ExitCode {
    let config = match load(file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Dropped last, after the runtime: the drain is over, then spans and logs flush.
    let _telemetry = ipproxy::telemetry::init(&config.log, &config.tracing);
    // The proxy workers run their own runtimes (one per CPU); this one only serves the
    // admin listener, token refreshes and signals.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return finish(Err(error).context("cannot start the async runtime")),
    };
    match runtime.block_on(ipproxy::server::run(config)) {
        Err(error) if error.is_configuration() => {
            eprintln!("ipproxy: invalid configuration:\n{error}");
            ExitCode::from(2)
        }
        result => finish(result.context("the proxy stopped")),
    }
}

fn check(file: Option<PathBuf>) -> ExitCode {
    match load(file) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("ipproxy: warning: {warning}");
            }
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn demo(listen: SocketAddr) -> ExitCode {
    let _logs = ipproxy::telemetry::init_logging(&LogConfig {
        format: LogFormat::Text,
        level: "info".to_owned(),
    });
    let sim_config = SimConfig::default();
    let vars = [
        ("IPPROXY_SERVER__LISTEN", listen.to_string()),
        ("IPPROXY_SERVER__ADMIN_LISTEN", DEMO_ADMIN_LISTEN.to_owned()),
        ("IPPROXY_UPSTREAM__URL", format!("http://{DEMO_SIM_LISTEN}")),
        (
            "IPPROXY_AUTH__URL",
            format!("http://{DEMO_SIM_LISTEN}/_rest/v4/authenticate"),
        ),
        ("IPPROXY_AUTH__USERNAME", sim_config.username.clone()),
        ("IPPROXY_AUTH__PASSWORD", sim_config.password.clone()),
        ("IPPROXY_LOG__FORMAT", "text".to_owned()),
    ]
    .map(|(key, value)| (key.to_owned(), value));
    let config = match config::load(None, vars) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ipproxy: demo configuration is invalid:\n{error}");
            return ExitCode::from(2);
        }
    };
    finish(runtime().and_then(|runtime| {
        runtime.block_on(async {
            let sim_listener = tokio::net::TcpListener::bind(DEMO_SIM_LISTEN)
                .await
                .with_context(|| format!("simulator: cannot listen on {DEMO_SIM_LISTEN}"))?;
            let listeners = ipproxy::Listeners::bind(&config).await?;
            let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
            let simulator = Simulator::new(sim_config);
            let sim_task = tokio::spawn(simulator.serve(sim_listener, async {
                let _ = sim_stopped.await;
            }));
            println!(
                "\nipproxy demo\n  simulated IntelePeer  http://{DEMO_SIM_LISTEN}\n  \
                 proxy                 http://{listen}\n  admin                 \
                 http://{DEMO_ADMIN_LISTEN}/readyz  /metrics\n\nTry:\n  curl -s \
                 http://{listen}/_rest/v4/app/sms/send -H 'content-type: application/json' \
                 -d '{{\"from\":\"+15550001111\",\"to\":\"+15550002222\",\"text\":\"hello\"}}'\n\n\
                 Ctrl-C stops both.\n"
            );
            let served =
                ipproxy::serve(config, listeners, ipproxy::shutdown::shutdown_signal()).await;
            let _ = stop_sim.send(());
            let _ = sim_task.await;
            served.context("the demo proxy stopped")
        })
    }))
}

fn sim(listen: SocketAddr, sim_config: SimConfig) -> ExitCode {
    let _logs = ipproxy::telemetry::init_logging(&LogConfig {
        format: LogFormat::Text,
        level: "info".to_owned(),
    });
    finish(runtime().and_then(|runtime| {
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("IntelePeer simulator on http://{listen}");
            Simulator::new(sim_config)
                .serve(listener, ipproxy::shutdown::shutdown_signal())
                .await
                .context("the simulator stopped")
        })
    }))
}

fn hash_key(name: Option<&str>) -> ExitCode {
    if let Some(name) = name
        && !ipproxy::access::is_caller_name(name)
    {
        eprintln!(
            "ipproxy: --name must be 1 to 64 characters of A-Z a-z 0-9 . _ - (it goes in log \
             lines as it is)"
        );
        return ExitCode::from(2);
    }
    let mut key = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut key) {
        eprintln!("ipproxy: cannot read the key from stdin: {error}");
        return ExitCode::from(2);
    }
    let key = key.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        eprintln!("ipproxy: the key on stdin is empty");
        return ExitCode::from(2);
    }
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    match name {
        Some(name) => println!("{digest} {name}"),
        None => println!("{digest}"),
    }
    ExitCode::SUCCESS
}

/// Healthcheck budget: container runtimes give a probe a few seconds.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A plain HTTP GET of the admin listener (local: never through an egress proxy);
/// exit 0 on a 2xx answer.
fn healthcheck(url: &str) -> ExitCode {
    let probe = async {
        let uri: http::Uri = url.parse().context("not a URL")?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = async {
            client
                .get(uri)
                .await
                .map_err(|error| anyhow::anyhow!("{}", ipproxy::error::chain(&error)))
        };
        tokio::time::timeout(HEALTHCHECK_TIMEOUT, request)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {HEALTHCHECK_TIMEOUT:?}"))?
    };
    match runtime().map(|runtime| runtime.block_on(probe)) {
        Ok(Ok(response)) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(Ok(response)) => {
            eprintln!("ipproxy: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("ipproxy: {url}: {error:#}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("ipproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ipproxy: {error:#}");
            tracing::error!(error = format!("{error:#}"), "exiting");
            ExitCode::FAILURE
        }
    }
}
