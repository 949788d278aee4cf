//! The PostgreSQL schema of cluster mode: everything but events.
//!
//! Migrations are idempotent (`CREATE … IF NOT EXISTS`) and run at every
//! [`super::Postgres::open`], under a transaction-scoped advisory lock so
//! that processes starting together do not race on the catalog. Text that
//! is sorted or compared is `COLLATE "C"`: order is byte order, as in
//! DuckDB and ClickHouse, whatever the database's locale.

/// Advisory-lock namespace of fineport (first key of the two-key form);
/// the second key says what is locked.
pub(crate) const LOCK_NAMESPACE: i32 = 0x6670_6f72; // "fpor"

/// Second advisory-lock key of the migrations.
pub(crate) const MIGRATION_LOCK: i32 = 0;

/// Advisory-lock namespace of catalog changes (the second key is the
/// service id's `hashtext`): apart from [`LOCK_NAMESPACE`], so that a
/// catalog change never waits for a service's identity resolutions.
pub(crate) const CATALOG_LOCK_NAMESPACE: i32 = 0x6670_6f63; // "fpoc"

/// Advisory-lock namespace of the replicas' import logs (the second key is
/// the replica id's `hashtext`): held by the replica's mover while it runs.
pub(crate) const IMPORT_LOG_LOCK_NAMESPACE: i32 = 0x6670_6f6c; // "fpol"

pub(crate) const MIGRATIONS: &str = r#"
CREATE TABLE IF NOT EXISTS settings (
    key text COLLATE "C" PRIMARY KEY,
    value text NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    service_id text COLLATE "C" PRIMARY KEY,
    doc text NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id text COLLATE "C" PRIMARY KEY,
    service_id text COLLATE "C" NOT NULL,
    kind text NOT NULL,
    hash text NOT NULL,
    created_ms bigint NOT NULL,
    by_reissue boolean NOT NULL,
    valid_until_ms bigint,
    revoked boolean NOT NULL);
ALTER TABLE tokens ADD COLUMN IF NOT EXISTS reason text;
CREATE INDEX IF NOT EXISTS tokens_by_service ON tokens (service_id);
CREATE TABLE IF NOT EXISTS taxonomy_events (
    service_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    PRIMARY KEY (service_id, name));
CREATE TABLE IF NOT EXISTS taxonomy_properties (
    service_id text COLLATE "C" NOT NULL,
    scope text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    type text NOT NULL,
    PRIMARY KEY (service_id, scope, name));
CREATE TABLE IF NOT EXISTS profiles (
    service_id text COLLATE "C" NOT NULL,
    unified_id text COLLATE "C" NOT NULL,
    external_id text COLLATE "C",
    created_ms bigint NOT NULL,
    PRIMARY KEY (service_id, unified_id));
CREATE TABLE IF NOT EXISTS identifiers (
    service_id text COLLATE "C" NOT NULL,
    kind text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    unified_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (service_id, kind, value));
CREATE INDEX IF NOT EXISTS identifiers_by_profile ON identifiers (service_id, unified_id);
CREATE TABLE IF NOT EXISTS user_properties (
    service_id text COLLATE "C" NOT NULL,
    unified_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    updated_ms bigint NOT NULL,
    PRIMARY KEY (service_id, unified_id, name));
CREATE TABLE IF NOT EXISTS audiences (
    service_id text COLLATE "C" NOT NULL,
    audience_id text COLLATE "C" NOT NULL,
    doc text NOT NULL,
    PRIMARY KEY (service_id, audience_id));
CREATE TABLE IF NOT EXISTS request_log (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time_ms bigint NOT NULL,
    service_id text COLLATE "C" NOT NULL,
    endpoint text NOT NULL,
    status integer NOT NULL,
    message text NOT NULL,
    ip text NOT NULL,
    user_agent text NOT NULL,
    token_id text,
    rows bigint,
    bytes bigint,
    duration_ms bigint NOT NULL);
CREATE INDEX IF NOT EXISTS request_log_newest ON request_log (service_id, time_ms DESC, seq DESC);
CREATE TABLE IF NOT EXISTS first_corrections (
    service_id text COLLATE "C" NOT NULL,
    event_log_id uuid NOT NULL,
    correction_ms bigint NOT NULL,
    event_ms bigint NOT NULL,
    PRIMARY KEY (service_id, event_log_id));
CREATE INDEX IF NOT EXISTS first_corrections_by_event_time ON first_corrections (event_ms);
CREATE TABLE IF NOT EXISTS import_logs (
    replica_id text COLLATE "C" PRIMARY KEY,
    pending boolean NOT NULL,
    flushed bigint NOT NULL,
    updated_ms bigint NOT NULL);
CREATE SEQUENCE IF NOT EXISTS import_flush_requests;
"#;
