//! The Chrome DevTools Protocol over the browser's websocket: commands answered by id, events
//! kept in arrival order until read. Flat sessions (`Target.attachToTarget` with `flatten`):
//! a command or an event for a page carries its `sessionId`.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Larger than any message a test page produces; a bound on what the browser can make us
/// hold.
const MAX_MESSAGE: usize = 16 << 20;

pub(super) struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Cdp {
    /// Connects to the browser endpoint `ws://127.0.0.1:PORT/devtools/browser/ID`.
    pub(super) async fn connect(url: &str, deadline: Instant) -> Result<Self, String> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
        let (ws, _) = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| format!("no DevTools websocket at {url} in time"))?
            .map_err(|e| format!("DevTools websocket {url}: {e}"))?;
        Ok(Self {
            ws,
            next_id: 0,
            events: VecDeque::new(),
        })
    }

    /// Sends `method` (to the page of `session`, or to the browser) and waits for its answer
    /// until `deadline`, keeping the events that arrive meanwhile. An error answer is an
    /// `Err` with the browser's message.
    pub(super) async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        deadline: Instant,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        tokio::time::timeout_at(deadline, self.ws.send(Message::text(command.to_string())))
            .await
            .map_err(|_| format!("{method}: could not send in time"))?
            .map_err(|e| format!("{method}: {e}"))?;
        loop {
            let message = self
                .read(deadline)
                .await
                .map_err(|e| format!("{method}: {e}"))?;
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    return Err(format!("{method}: {error}"));
                }
                return Ok(message["result"].clone());
            }
            if message.get("method").is_some() {
                self.events.push_back(message);
            }
        }
    }

    /// The next event (`{method, params, sessionId}`), or `None` at `deadline`.
    pub(super) async fn event(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        loop {
            match self.read(deadline).await {
                Ok(message) if message.get("method").is_some() => return Ok(Some(message)),
                // An answer to a command that gave up waiting: nothing to do with it.
                Ok(_) => {}
                Err(ReadError::Deadline) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn read(&mut self, deadline: Instant) -> Result<Value, ReadError> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ReadError::Deadline)?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text)
                        .map_err(|e| ReadError::Broken(format!("not JSON: {e}")));
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ReadError::Broken("the browser closed DevTools".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ReadError::Broken(e.to_string())),
            }
        }
    }
}

enum ReadError {
    Deadline,
    Broken(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deadline => f.write_str("no answer in time"),
            Self::Broken(why) => f.write_str(why),
        }
    }
}
