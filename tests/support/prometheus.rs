//! A real Prometheus for the alert and dashboard tests: Debian's `prometheus`, on a
//! free loopback port with a temporary data dir, scraping the given targets every
//! second and evaluating the given rule files every second. It runs under
//! `timeout(1)`, so it is gone after [`LIFETIME`] even if the test process dies; it is
//! stopped by PID (SIGTERM, which `timeout` passes on) when dropped. A missing
//! `prometheus` fails the test that needs it (`scripts/test.sh` and `.ci/run` install
//! it): never a skip.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a test's Prometheus may live (a bound for a test process that dies).
const LIFETIME: Duration = Duration::from_secs(300);
/// How long Prometheus may take to be ready (it replays an empty WAL, loads rules).
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the one just found).
const START_ATTEMPTS: usize = 3;

/// A running Prometheus.
pub(crate) struct PrometheusServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Scrapes `targets`' `/metrics` (job `ipproxy`) and loads `rule_files`.
    pub(crate) async fn start(targets: &[SocketAddr], rule_files: &[PathBuf]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets, rule_files)).expect("write config");
        let data = dir.path().join("data");
        let mut server = Self {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            client: super::client(),
            dir,
        };
        for _ in 0..START_ATTEMPTS {
            server.addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
            if server.spawn(&config, &data).await {
                return server;
            }
        }
        panic!(
            "prometheus did not start in {START_ATTEMPTS} attempts: {}",
            server.log()
        );
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What Prometheus logged (its stderr), for failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<endpoint>` with `params`: the `data` of a `success` answer.
    pub(crate) async fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/api/v1/{endpoint}")))
            .query(params)
            .send()
            .await
            .expect("prometheus answers");
        let status = response.status();
        let body: Value = response.json().await.expect("prometheus JSON");
        assert!(
            status.is_success() && body["status"] == "success",
            "/api/v1/{endpoint} {params:?}: {status} {body}"
        );
        body["data"].clone()
    }

    /// The result vector of an instant query.
    pub(crate) async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", promql)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The label sets of the series that `selector` matches.
    pub(crate) async fn series(&self, selector: &str) -> Vec<Value> {
        let data = self.api("series", &[("match[]", selector)]).await;
        data.as_array().cloned().unwrap_or_default()
    }

    /// The alerting rules as loaded (`/api/v1/rules?type=alert`).
    pub(crate) async fn alerting_rules(&self) -> Vec<Value> {
        let data = self.api("rules", &[("type", "alert")]).await;
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The states (`pending`, `firing`) of the active alerts named `name`.
    pub(crate) async fn alert_states(&self, name: &str) -> Vec<String> {
        let data = self.api("alerts", &[]).await;
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|alert| alert["labels"]["alertname"] == name)
            .filter_map(|alert| alert["state"].as_str().map(str::to_owned))
            .collect()
    }

    /// Spawns Prometheus and waits until `/-/ready` answers 200; false when it exited
    /// first (the port was taken).
    async fn spawn(&mut self, config: &Path, data: &Path) -> bool {
        let prometheus = super::server_binary(
            "prometheus",
            "the alert tests need a real one: run `apt-get install -y prometheus` (scripts/test.sh does it when it can)",
        );
        let timeout = super::server_binary("timeout", "coreutils' timeout bounds Prometheus");
        let log = std::fs::File::create(self.dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(timeout)
            .arg(LIFETIME.as_secs().to_string())
            .arg(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={}", self.addr))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
                && self
                    .client
                    .get(self.url("/-/ready"))
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == 200)
            {
                return true;
            }
            if super::exited(&mut self.child) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within {START_LIMIT:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM to timeout(1), which sends it on to Prometheus and exits with it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One-second scrapes and evaluations, so that a test sees a change within seconds.
fn config_text(targets: &[SocketAddr], rule_files: &[PathBuf]) -> String {
    let targets: Vec<String> = targets.iter().map(|addr| format!("'{addr}'")).collect();
    let rules: Vec<String> = rule_files
        .iter()
        .map(|path| format!("  - '{}'\n", path.display()))
        .collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n{}\
         scrape_configs:\n  - job_name: ipproxy\n    static_configs:\n      - targets: [{}]\n",
        rules.concat(),
        targets.join(", ")
    )
}
