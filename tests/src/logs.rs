//! Every log line the gateway writes during a test binary's run, kept so tests can assert on
//! them (backoff messages, errors). Lines still go to the test output as well.
//!
//! The buffer is the whole binary's: every test of the end-to-end suite runs in one process,
//! two or more at a time, so a test looks for lines by something only it has (its site's
//! name, its client's address, its config file's path). Access log lines (one a request, by
//! far the most) are printed but not kept: no test looks for them, and every search would
//! read them all.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::Duration;

static LINES: Mutex<String> = Mutex::new(String::new());

/// A `MakeWriter` that copies into the buffer and to the test's output.
pub(crate) struct Capture;

pub(crate) struct CaptureWriter {
    keep: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter { keep: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> CaptureWriter {
        CaptureWriter {
            keep: meta.target() != portcullis_proxy::ACCESS_LOG_TARGET,
        }
    }
}

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        print!("{text}");
        if !self.keep {
            return Ok(buf.len());
        }
        LINES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Every captured line containing all of `needles`.
pub fn lines_with(needles: &[&str]) -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Waits until a captured line contains all of `needles`, and returns it.
pub async fn wait_for(limit: Duration, needles: &[&str]) -> String {
    crate::wait::until(limit, &format!("a log line with {needles:?}"), || async {
        lines_with(needles).into_iter().next()
    })
    .await
}
