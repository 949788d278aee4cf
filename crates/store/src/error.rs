//! Store errors carry a closed kind; the server maps the kind to a detailed
//! response (`query_error`, `client_connection_closed`, `unknown_error`)
//! in exactly one place.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The backend failed to run a query.
    Query,
    /// The export was stopped because its consumer went away (its stream
    /// was dropped: the client left); the query was interrupted.
    Cancelled,
    /// The thing asked for does not exist.
    NotFound,
    /// The thing to create exists already.
    Conflict,
    /// The request contradicts what is stored (an identity conflict,
    /// `crate::identity::IdentityConflict`); nothing of it was stored.
    /// The message is the reason for the Import API's 40001.
    Invalid,
    /// Anything else: corrupt state, a bug, a backend that is gone.
    Internal,
}

#[derive(Debug, Clone)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    pub fn query(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Query, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Internal, message)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StoreError {}

impl From<duckdb::Error> for StoreError {
    fn from(e: duckdb::Error) -> Self {
        StoreError::query(e.to_string())
    }
}
