//! Errors of the helpers that are not a backup run (a run never fails: it reports a
//! [`Status`](crate::Status)).

use std::path::PathBuf;

/// Errors of [`client_major`](crate::client_major), [`pick_client`](crate::pick_client) and
/// [`verify_set`](crate::verify_set).
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `pg_dump --version` could not be run or understood.
    #[error("cannot tell the version of {}: {reason}", program.display())]
    ClientVersion {
        /// The program.
        program: PathBuf,
        /// Why.
        reason: String,
    },
    /// No configured client is recent enough for the server.
    #[error(
        "no pg_dump for PostgreSQL {server_major}: the server needs client major {server_major} or newer, available majors: {}; install the client of major {server_major} (or newer) and add its bin directory to the configuration",
        list(available)
    )]
    NoSuitableClient {
        /// The server's major.
        server_major: u32,
        /// The configured client majors.
        available: Vec<u32>,
    },
    /// The requested client major is older than the server.
    #[error(
        "pg_dump of PostgreSQL {requested} cannot dump a PostgreSQL {server_major} server: ask for {server_major} or newer (available majors: {})",
        list(available)
    )]
    RequestedTooOld {
        /// Asked for.
        requested: u32,
        /// The server's major.
        server_major: u32,
        /// The configured client majors.
        available: Vec<u32>,
    },
    /// The requested client major is not configured.
    #[error(
        "pg_dump of PostgreSQL {requested} is not available on this backup server (available majors: {}; the server needs {server_major} or newer)",
        list(available)
    )]
    RequestedMissing {
        /// Asked for.
        requested: u32,
        /// The server's major.
        server_major: u32,
        /// The configured client majors.
        available: Vec<u32>,
    },
    /// manifest.json is missing or unreadable.
    #[error("manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The set does not match its manifest.
    #[error("backup set {}: {problems}", dir.display())]
    Mismatch {
        /// The set.
        dir: PathBuf,
        /// Every difference, `; `-separated.
        problems: String,
    },
}

fn list(majors: &[u32]) -> String {
    if majors.is_empty() {
        "none".into()
    } else {
        majors
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
