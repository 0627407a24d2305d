//! One replica of the fleet: the real binary on its own ports, config and storage, which
//! a test starts, kills (SIGKILL), pauses (SIGSTOP/SIGCONT) and scrapes.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use portcullis_tests::scrape::{metric, scrape};
use portcullis_tests::{GatewayProcess, plain};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// One replica: its places, its process when running.
pub struct Replica {
    pub name: String,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    config: PathBuf,
    process: Option<GatewayProcess>,
    stopped: bool,
    /// Logs of its earlier lives (before a kill), for the failure report.
    past_logs: Vec<String>,
}

impl Replica {
    /// Replica `name` on fresh ports, its config to be written at `config`.
    pub fn new(name: String, config: PathBuf) -> Self {
        Self {
            name,
            https: free_port(),
            http: free_port(),
            admin: free_port(),
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

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Replica {
    /// Starts the process (again, on the same config, ports and storage).
    pub async fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let config = self.config.clone();
        let process = tokio::task::spawn_blocking(move || {
            GatewayProcess::spawn(
                Path::new(BIN),
                &["run", "--config", config.to_str().unwrap()],
            )
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

    /// The sum of `name`'s samples carrying `labels` on its `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&scrape(self.admin).await, name, labels)
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
