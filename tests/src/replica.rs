//! One replica of a fleet of gateways (the cluster suites): the real binary on its own
//! ports (kept across restarts, below the ephemeral range), config and storage, which a test
//! starts, kills (SIGKILL), pauses (SIGSTOP/SIGCONT) and scrapes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::process::GatewayProcess;
use crate::scrape::{metric, scrape};
use crate::{plain, ports};

/// One replica: its places, its process when running.
pub struct Replica {
    /// Its `cluster.node_name`.
    pub name: String,
    /// Its HTTPS listener.
    pub https: SocketAddr,
    /// Its plain HTTP listener.
    pub http: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
    bin: PathBuf,
    config: PathBuf,
    process: Option<GatewayProcess>,
    stopped: bool,
    /// Logs of its earlier lives (before a kill), for the failure report.
    past_logs: Vec<String>,
}

impl Replica {
    /// Replica `name` of the binary `bin` on fresh ports, its config to be written at
    /// `config` (with those ports) before it starts.
    pub fn new(name: String, bin: &Path, config: PathBuf) -> Self {
        Self {
            name,
            https: ports::stable_port(),
            http: ports::stable_port(),
            admin: ports::stable_port(),
            bin: bin.to_owned(),
            config,
            process: None,
            stopped: false,
            past_logs: Vec::new(),
        }
    }

    /// Where its config is.
    pub fn config(&self) -> &Path {
        &self.config
    }
}

impl Replica {
    /// Starts the process (again, on the same config, ports and storage).
    pub async fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let (bin, config) = (self.bin.clone(), self.config.clone());
        let process = tokio::task::spawn_blocking(move || {
            GatewayProcess::spawn(&bin, &["run", "--config", config.to_str().unwrap()])
        })
        .await
        .unwrap();
        assert_eq!(process.https, self.https);
        self.process = Some(process);
        self.stopped = false;
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            if self.stopped {
                p.signal("CONT");
            }
            p.signal("KILL");
            self.past_logs.extend(p.logs());
            self.past_logs
                .push(format!("---- {} killed ----", self.name));
        }
        self.stopped = false;
    }

    /// SIGSTOP: the process is paused, its sockets stay open.
    pub fn stop(&mut self) {
        self.process().signal("STOP");
        self.stopped = true;
    }

    /// SIGCONT.
    pub fn cont(&mut self) {
        self.process().signal("CONT");
        self.stopped = false;
    }

    /// Running and not paused.
    pub fn is_up(&self) -> bool {
        self.process.is_some() && !self.stopped
    }

    fn process(&self) -> &GatewayProcess {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// Its `/metrics` page.
    pub async fn metrics(&self) -> String {
        scrape(self.admin).await
    }

    /// The sum of `name`'s samples carrying `labels` on its `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels)
    }

    /// `GET path` on its admin listener.
    pub async fn admin_get(&self, path: &str) -> plain::PlainResponse {
        plain::get(self.admin, "localhost", path).await
    }

    /// Its log, every life of it.
    pub fn logs(&self) -> Vec<String> {
        let mut all = self.past_logs.clone();
        if let Some(p) = &self.process {
            all.extend(p.logs());
        }
        all
    }
}
