//! One replica of the fleet: the harness's [`Replica`] of this crate's binary.

use std::path::{Path, PathBuf};

pub use portcullis_tests::replica::Replica;

/// Replica `name` of the gateway binary on fresh ports, its config to be written at `config`.
pub fn replica(name: String, config: PathBuf) -> Replica {
    Replica::new(name, Path::new(env!("CARGO_BIN_EXE_portcullis")), config)
}
