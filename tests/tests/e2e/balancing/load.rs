//! Load from several clients: tasks sending GETs over keep-alive connections, recording
//! which server answered each and in which phase of the test it started and ended.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use portcullis_tests::{Conn, TestClient, empty, within};
use tokio::task::JoinHandle;

use super::{HOST, answered_by, send};

/// One request of a [`Load`]: the phases it started and ended in, and the port that
/// answered (or what went wrong).
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) phase: usize,
    pub(super) ended: usize,
    pub(super) answer: Result<u16, String>,
}

/// Client tasks sending GETs over keep-alive connections, each until it has sent
/// `per_worker` requests or is stopped. The test moves `phase` on as it acts.
pub(super) struct Load {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    pub(super) fn start(client: &TestClient, workers: usize, per_worker: usize) -> Self {
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..workers)
            .map(|_| {
                let (client, phase, stop, outcomes) = (
                    client.clone(),
                    phase.clone(),
                    stop.clone(),
                    outcomes.clone(),
                );
                tokio::spawn(async move {
                    let mut conn: Option<Conn> = None;
                    for _ in 0..per_worker {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let started = phase.load(Ordering::SeqCst);
                        let answer = one_request(&client, &mut conn).await;
                        outcomes.lock().unwrap().push(Outcome {
                            phase: started,
                            ended: phase.load(Ordering::SeqCst),
                            answer,
                        });
                    }
                })
            })
            .collect();
        Self {
            phase,
            stop,
            outcomes,
            workers,
        }
    }

    pub(super) fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Outcomes so far that satisfy `f`.
    pub(super) fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| f(o))
            .count()
    }

    /// Waits until every worker has sent its requests.
    pub(super) async fn join(self) -> Vec<Outcome> {
        for w in self.workers {
            within("a load worker to finish", w).await.unwrap();
        }
        Arc::try_unwrap(self.outcomes)
            .unwrap()
            .into_inner()
            .unwrap()
    }

    /// Stops the workers after their current request.
    pub(super) async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }
}

async fn one_request(client: &TestClient, conn: &mut Option<Conn>) -> Result<u16, String> {
    if conn.is_none() {
        *conn = Some(
            tokio::time::timeout(Duration::from_secs(10), client.connect(HOST, &["http/1.1"]))
                .await
                .map_err(|_| "connect to the gateway: timed out".to_owned())?
                .map_err(|e| format!("connect to the gateway: {e}"))?,
        );
    }
    let c = conn.as_mut().unwrap();
    match send(c, Method::GET, "/load", &[], empty()).await {
        Ok(r) if r.status == StatusCode::OK => Ok(answered_by(&r)),
        Ok(r) => Err(format!("{} {}", r.status, r.text())),
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}
