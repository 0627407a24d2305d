//! What the browser reported while loading one page, folded from DevTools events.

use serde_json::Value;

/// What a page load showed: the document's answer, the console, every request.
#[derive(Debug, Clone, Default)]
pub struct PageReport {
    /// The document's HTTP status, when it was answered.
    pub main_status: Option<u16>,
    /// Why navigating failed (`Page.navigate`'s `errorText`, e.g.
    /// `net::ERR_CERT_AUTHORITY_INVALID`); `None` when the document loaded.
    pub main_error: Option<String>,
    /// The security state DevTools gave the document's response (`secure`, `insecure`, ...).
    pub main_security_state: Option<String>,
    /// Whether `Page.loadEventFired` came before the deadline.
    pub loaded: bool,
    /// Console messages in order: `(level, text)`. Browser messages (`Log.entryAdded`:
    /// mixed content, blocked loads) and the page's own `console.*` calls; an uncaught
    /// exception has level `exception`.
    pub console: Vec<(String, String)>,
    /// Every request the page made, the document first, in the order they were sent.
    pub requests: Vec<PageRequest>,
}

/// One request and what became of it.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// DevTools' id for it (shared by the hops of a redirect).
    pub id: String,
    /// The URL asked for.
    pub url: String,
    /// DevTools' resource type: `Document`, `Script`, `Image`, ...
    pub resource_type: String,
    /// `request.mixedContentType`: `blockable` (a script over `http://` from an HTTPS
    /// page), `optionally-blockable` (an image), or `none`.
    pub mixed_content_type: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// The end of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Neither answered nor failed when the report was taken.
    Pending,
    /// Answered with this HTTP status.
    Status(u16),
    /// Failed: `Network.loadingFailed`'s `errorText` and `blockedReason` (e.g.
    /// `mixed-content`) when the browser blocked it.
    Failed {
        /// e.g. `net::ERR_BLOCKED_BY_CLIENT`.
        error: String,
        /// e.g. `mixed-content`.
        blocked_reason: Option<String>,
    },
}

impl PageReport {
    /// Console lines that mention mixed content.
    pub fn mixed_content_messages(&self) -> Vec<&str> {
        self.console
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|text| text.contains("Mixed Content"))
            .collect()
    }

    /// The requests whose URL ends with `suffix` (e.g. `/app.js`), in order.
    pub fn requests_ending(&self, suffix: &str) -> Vec<&PageRequest> {
        self.requests
            .iter()
            .filter(|r| r.url.ends_with(suffix))
            .collect()
    }

    /// Folds one event of the page's session into the report.
    pub(super) fn fold(&mut self, method: &str, params: &Value) {
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        match method {
            "Log.entryAdded" => {
                let entry = &params["entry"];
                self.console
                    .push((str_of(&entry["level"]), str_of(&entry["text"])));
            }
            "Runtime.consoleAPICalled" => {
                let text: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|arg| match &arg["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => str_of(&arg["description"]),
                        other => other.to_string(),
                    })
                    .collect();
                self.console.push((str_of(&params["type"]), text.join(" ")));
            }
            "Runtime.exceptionThrown" => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"]
                    .as_str()
                    .unwrap_or_else(|| details["text"].as_str().unwrap_or_default());
                self.console.push(("exception".into(), text.to_owned()));
            }
            "Network.requestWillBeSent" => {
                // A redirect's next hop carries the answer of the hop before it.
                let redirected = params["redirectResponse"]["status"].as_u64();
                if let (Some(status), Some(hop)) = (redirected, self.last(&params["requestId"])) {
                    hop.outcome = Outcome::Status(status as u16);
                }
                let request = &params["request"];
                self.requests.push(PageRequest {
                    id: str_of(&params["requestId"]),
                    url: str_of(&request["url"]),
                    resource_type: str_of(&params["type"]),
                    mixed_content_type: request["mixedContentType"]
                        .as_str()
                        .unwrap_or("none")
                        .to_owned(),
                    outcome: Outcome::Pending,
                });
            }
            "Network.responseReceived" => {
                let response = &params["response"];
                let status = response["status"].as_u64().map(|s| s as u16);
                let document = params["type"] == "Document" && self.main_status.is_none();
                if document {
                    self.main_status = status;
                    self.main_security_state = response["securityState"].as_str().map(Into::into);
                }
                if let (Some(request), Some(status)) = (self.last(&params["requestId"]), status) {
                    request.outcome = Outcome::Status(status);
                }
            }
            "Network.loadingFailed" => {
                let outcome = Outcome::Failed {
                    error: str_of(&params["errorText"]),
                    blocked_reason: params["blockedReason"].as_str().map(Into::into),
                };
                if let Some(request) = self.last(&params["requestId"]) {
                    request.outcome = outcome;
                }
            }
            _ => {}
        }
    }

    /// The latest hop of the request with DevTools id `id`.
    fn last(&mut self, id: &Value) -> Option<&mut PageRequest> {
        let id = id.as_str()?;
        self.requests.iter_mut().rev().find(|r| r.id == id)
    }
}
