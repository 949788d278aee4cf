//! The DFINERY Open API contract, with no I/O: wire types, validation,
//! detailed responses and result codes, the look-back rule, and the CSV cell
//! encoder. Everything here is pure and tested as tables of input → expected
//! output; the server and the stores build on it and never restate it.

pub mod cells;
pub mod csv;
pub mod export;
pub mod import;
pub mod json;
pub mod profile;
pub mod service;
pub mod taxonomy;
pub mod time;
pub mod tokens;
pub mod types;

pub use chrono_tz::Tz;
pub use service::ServiceId;
pub use uuid::Uuid;
