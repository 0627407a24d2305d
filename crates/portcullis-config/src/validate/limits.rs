//! The `limits` section: timeouts, sizes and connection caps that protect the listeners.

use super::Validator;
use crate::file::LimitsFile;
use crate::model::{Limits, defaults};

impl Validator<'_> {
    pub(super) fn limits(&mut self, f: LimitsFile) -> Option<Limits> {
        let before = self.problems.len();
        let handshake_timeout = self.positive(
            f.handshake_timeout,
            defaults::HANDSHAKE_TIMEOUT,
            "limits.handshake_timeout",
        );
        let header_read_timeout = self.positive(
            f.header_read_timeout,
            defaults::HEADER_READ_TIMEOUT,
            "limits.header_read_timeout",
        );
        let idle_timeout = self.positive(
            f.idle_timeout,
            defaults::IDLE_TIMEOUT,
            "limits.idle_timeout",
        );
        // hyper cannot parse a request head in less than 8 KiB of buffer.
        let max_header_size = match f.max_header_size {
            None => defaults::MAX_HEADER_SIZE,
            Some(n) if (8192..=16 << 20).contains(&n) => n as usize,
            Some(_) => {
                self.err("limits.max_header_size", "must be between 8KiB and 16MiB");
                defaults::MAX_HEADER_SIZE
            }
        };
        let max_connections = match f.max_connections {
            None => defaults::MAX_CONNECTIONS,
            Some(0) => {
                self.err("limits.max_connections", "must be at least 1");
                1
            }
            Some(n) => n,
        };
        let max_connections_per_ip = match f.max_connections_per_ip {
            None => defaults::MAX_CONNECTIONS_PER_IP,
            Some(0) => None,
            Some(n) => Some(n),
        };
        let h2_max_concurrent_streams = match f.h2_max_concurrent_streams {
            None => defaults::H2_MAX_CONCURRENT_STREAMS,
            Some(0) => {
                self.err("limits.h2_max_concurrent_streams", "must be at least 1");
                1
            }
            Some(n) => n,
        };
        let h2_max_resets = match f.h2_max_resets {
            None => defaults::H2_MAX_RESETS,
            Some(0) => {
                self.err("limits.h2_max_resets", "must be at least 1");
                1
            }
            Some(n) => n,
        };
        if f.max_body_size == Some(0) {
            self.err(
                "limits.max_body_size",
                "must be greater than zero (leave it out for no limit)",
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(Limits {
            handshake_timeout: handshake_timeout?,
            header_read_timeout: header_read_timeout?,
            idle_timeout: idle_timeout?,
            max_header_size,
            max_body_size: f.max_body_size,
            max_connections,
            max_connections_per_ip,
            h2_max_concurrent_streams,
            h2_max_resets,
        })
    }
}
