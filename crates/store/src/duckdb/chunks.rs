//! Query results read as DuckDB's own vectors, through DuckDB's C API.
//!
//! The event export encodes its CSV straight from the data chunks DuckDB
//! hands out (`duckdb_fetch_chunk`). duckdb-rs hands a result on only as
//! Arrow, which copies every cell once more: the conversion was 11 % of a
//! 30-day export's CPU, on the thread that bounds its time
//! (docs/benchmarks.md, item 10). duckdb-rs does not expose its database
//! handle, so [`Database`] opens the file through the C API, gives
//! duckdb-rs its connections on it (`Connection::open_from_raw`), and
//! opens the exports' own [`RawConnection`]s.
//!
//! Everything unsafe about DuckDB's C API is in this module, and what it
//! relies on is said where it does:
//! - a fetched chunk owns its data: DuckDB copies a materialised result's
//!   rows out of its collection (`DISALLOW_ZERO_COPY`) and each chunk of a
//!   streamed result into one of its own (`CopyForBuffering`), so a
//!   [`Chunk`] outlives the [`QueryResult`] it came from;
//! - a fetched chunk's vectors are flat (`QueryResult::Fetch` flattens
//!   them), so a column is a plain array with a validity bitmask;
//! - a NULL row's value is never read (it may be anything).

use std::ffi::{c_char, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard};

use duckdb::{ffi, Connection};

use crate::{StoreError, StoreErrorKind};

/// The database as DuckDB's C API holds it. Closed when dropped: drop it
/// after every duckdb-rs [`Connection`] made on it (the connections keep
/// DuckDB's instance alive, but cloning one needs this handle).
pub(crate) struct Database {
    raw: ffi::duckdb_database,
}

// SAFETY: a `duckdb_database` is DuckDB's thread-safe instance; this type
// only connects to it (from any thread) and closes it once, in `drop`.
unsafe impl Send for Database {}
unsafe impl Sync for Database {}

impl Database {
    /// Opens (creating if needed) the file at `path`, or an in-memory
    /// database for `None`, with DuckDB's default settings, and a duckdb-rs
    /// connection on it.
    pub fn open(path: Option<&Path>) -> Result<(Database, Connection), StoreError> {
        let c_path = match path {
            Some(p) => CString::new(p.as_os_str().as_bytes()),
            None => CString::new(":memory:"),
        }
        .map_err(|_| StoreError::internal("a database path cannot hold a NUL byte"))?;
        let mut raw = ptr::null_mut();
        let mut error: *mut c_char = ptr::null_mut();
        // SAFETY: valid C string and out-pointers; a null config is DuckDB's defaults.
        let state = unsafe { ffi::duckdb_open_ext(c_path.as_ptr(), &mut raw, ptr::null_mut(), &mut error) };
        if state != ffi::DuckDBSuccess {
            let message = if error.is_null() {
                "unknown error".to_string()
            } else {
                // SAFETY: DuckDB's NUL-terminated message, ours to free.
                let m = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
                unsafe { ffi::duckdb_free(error.cast()) };
                m
            };
            let what = path.map_or_else(|| "an in-memory database".to_string(), |p| p.display().to_string());
            return Err(StoreError::internal(format!("cannot open {what}: {message}")));
        }
        let database = Database { raw };
        // SAFETY: `raw` is open; duckdb-rs does not close it (it did not open it).
        let conn = unsafe { Connection::open_from_raw(raw) }?;
        Ok((database, conn))
    }

    /// A connection of the export's own.
    pub fn connect(&self) -> Result<RawConnection, StoreError> {
        let mut raw = ptr::null_mut();
        // SAFETY: `self.raw` is open until `self` is dropped.
        if unsafe { ffi::duckdb_connect(self.raw, &mut raw) } != ffi::DuckDBSuccess {
            return Err(StoreError::internal("cannot open a DuckDB connection"));
        }
        Ok(RawConnection {
            raw: Arc::new(Mutex::new(ConnPtr(raw))),
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // SAFETY: opened in `open`, closed once.
        unsafe { ffi::duckdb_close(&mut self.raw) };
    }
}

/// A raw connection pointer; null once disconnected.
struct ConnPtr(ffi::duckdb_connection);

// SAFETY: a DuckDB connection may move between threads; it is used by one
// at a time (queries need `&RawConnection`, which is not `Sync`), and the
// interrupt, the one call from another thread, is thread-safe and takes the
// lock that disconnecting takes.
unsafe impl Send for ConnPtr {}

/// A DuckDB connection through the C API, for the export's queries.
pub(crate) struct RawConnection {
    raw: Arc<Mutex<ConnPtr>>,
}

impl RawConnection {
    fn lock(&self) -> MutexGuard<'_, ConnPtr> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Interrupts the connection's running query from any thread; does
    /// nothing once the connection is closed.
    pub fn interrupt_handle(&self) -> impl Fn() + Clone + Send + Sync + 'static {
        let raw = self.raw.clone();
        move || {
            let conn = raw.lock().unwrap_or_else(|p| p.into_inner());
            if !conn.0.is_null() {
                // SAFETY: not yet disconnected (the lock is held).
                unsafe { ffi::duckdb_interrupt(conn.0) };
            }
        }
    }

    /// Runs `sql` with `params` bound as VARCHAR to its `?`s in order; its
    /// rows are then fetched a chunk at a time ([`QueryResult::next_chunk`]).
    /// Errors: `Query` (refused or failed), `Cancelled` (interrupted).
    pub fn query(&self, sql: &str, params: &[String], execution: Execution) -> Result<QueryResult, StoreError> {
        let conn = self.lock().0;
        let c_sql = CString::new(sql).map_err(|_| StoreError::query("a query cannot hold a NUL byte"))?;
        let mut stmt = Prepared(ptr::null_mut());
        // SAFETY: an open connection (only `drop` closes it), a valid C string.
        if unsafe { ffi::duckdb_prepare(conn, c_sql.as_ptr(), &mut stmt.0) } != ffi::DuckDBSuccess {
            // SAFETY: the message lives until the statement is destroyed.
            return Err(failure(unsafe { message(ffi::duckdb_prepare_error(stmt.0)) }));
        }
        for (i, param) in params.iter().enumerate() {
            let value =
                CString::new(param.as_str()).map_err(|_| StoreError::query("a parameter cannot hold a NUL byte"))?;
            // SAFETY: a prepared statement, a valid C string (copied by DuckDB).
            if unsafe { ffi::duckdb_bind_varchar(stmt.0, i as u64 + 1, value.as_ptr()) } != ffi::DuckDBSuccess {
                return Err(StoreError::query(format!("cannot bind parameter {}", i + 1)));
            }
        }
        // SAFETY: zeroed is the C API's "no result yet"; destroyed by `QueryResult`.
        let mut result = QueryResult {
            raw: unsafe { std::mem::zeroed() },
            stmt,
            types: Arc::new([]),
        };
        let stmt = result.stmt.0;
        // SAFETY: a prepared statement with every parameter bound.
        let state = unsafe {
            match execution {
                Execution::Materialised => ffi::duckdb_execute_prepared(stmt, &mut result.raw),
                Execution::Streamed => ffi::duckdb_execute_prepared_streaming(stmt, &mut result.raw),
            }
        };
        if state != ffi::DuckDBSuccess {
            // SAFETY: the message lives until the result is destroyed.
            return Err(failure(unsafe { message(ffi::duckdb_result_error(&mut result.raw)) }));
        }
        // SAFETY: an executed result.
        let columns = unsafe { ffi::duckdb_column_count(&mut result.raw) };
        result.types = (0..columns)
            .map(|c| {
                // SAFETY: `c` is a column of the result; the type is ours to destroy.
                let mut lt = unsafe { ffi::duckdb_column_logical_type(&mut result.raw, c) };
                let ty = ColumnType::of(lt);
                unsafe { ffi::duckdb_destroy_logical_type(&mut lt) };
                ty
            })
            .collect::<Result<Vec<_>, _>>()?
            .into();
        Ok(result)
    }
}

impl Drop for RawConnection {
    fn drop(&mut self) {
        let mut conn = self.lock();
        // SAFETY: connected in `Database::connect`, disconnected once, under
        // the lock the interrupt takes.
        unsafe { ffi::duckdb_disconnect(&mut conn.0) };
        conn.0 = ptr::null_mut();
    }
}

/// How a query's rows reach [`QueryResult::next_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Execution {
    /// The whole result is collected before `query` returns, then read
    /// back in chunks of up to 2,048 rows: one more copy of every row,
    /// but a query whose matches are scattered (an export's late events)
    /// comes back in full chunks.
    Materialised,
    /// Rows are produced as they are fetched, each scanned vector's
    /// matches a chunk of its own, so memory stays that of a chunk.
    Streamed,
}

/// A prepared statement, destroyed when dropped.
struct Prepared(ffi::duckdb_prepared_statement);

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: null or prepared; destroying either is allowed, once.
        unsafe { ffi::duckdb_destroy_prepare(&mut self.0) };
    }
}

/// DuckDB's message, or a placeholder for none.
///
/// # Safety
/// `m` is null or a NUL-terminated string alive for the call.
unsafe fn message(m: *const c_char) -> String {
    if m.is_null() {
        "unknown DuckDB error".to_string()
    } else {
        unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned()
    }
}

/// A failed query as a store error: `Cancelled` when it was interrupted
/// (its client left), `Query` otherwise.
pub(crate) fn failure(message: String) -> StoreError {
    if message.contains("INTERRUPT") || message.contains("nterrupted") {
        StoreError::new(StoreErrorKind::Cancelled, message)
    } else {
        StoreError::query(message)
    }
}

/// The types a fetched column can have: what the event table's columns
/// hold (`schema.rs`), and lists of them for item properties.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ColumnType {
    Varchar,
    BigInt,
    Double,
    Boolean,
    /// Microseconds since the epoch.
    Timestamp,
    /// Days since the epoch.
    Date,
    List(Box<ColumnType>),
}

impl ColumnType {
    /// The type of `lt`; an `Internal` error for any other.
    fn of(lt: ffi::duckdb_logical_type) -> Result<ColumnType, StoreError> {
        // SAFETY: a live logical type.
        let id = unsafe { ffi::duckdb_get_type_id(lt) };
        Ok(match id {
            ffi::DUCKDB_TYPE_DUCKDB_TYPE_VARCHAR => ColumnType::Varchar,
            ffi::DUCKDB_TYPE_DUCKDB_TYPE_BIGINT => ColumnType::BigInt,
            ffi::DUCKDB_TYPE_DUCKDB_TYPE_DOUBLE => ColumnType::Double,
            ffi::DUCKDB_TYPE_DUCKDB_TYPE_BOOLEAN => ColumnType::Boolean,
            ffi::DUCKDB_TYPE_DUCKDB_TYPE_TIMESTAMP => ColumnType::Timestamp,
            ffi::DUCKDB_TYPE_DUCKDB_TYPE_DATE => ColumnType::Date,
            ffi::DUCKDB_TYPE_DUCKDB_TYPE_LIST => {
                // SAFETY: a LIST type; its child type is ours to destroy.
                let mut child = unsafe { ffi::duckdb_list_type_child_type(lt) };
                let ty = ColumnType::of(child);
                unsafe { ffi::duckdb_destroy_logical_type(&mut child) };
                ColumnType::List(Box::new(ty?))
            }
            other => return Err(StoreError::internal(format!("unexpected DuckDB column type {other}"))),
        })
    }
}

/// An executed query: its column types, and its rows a chunk at a time.
pub(crate) struct QueryResult {
    raw: ffi::duckdb_result,
    /// Kept until the result is destroyed (a streamed result runs it as it
    /// is fetched).
    stmt: Prepared,
    /// Shared with every chunk, which reads its vectors by them.
    types: Arc<[ColumnType]>,
}

// SAFETY: a result is used by one thread at a time (`next_chunk` takes
// `&mut self`) and may move between threads like its connection.
unsafe impl Send for QueryResult {}

impl QueryResult {
    /// The next chunk of rows, `None` after the last. Errors: the query
    /// failed or was interrupted on its way (see [`failure`]).
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, StoreError> {
        // SAFETY: an executed result; the chunk is ours to destroy.
        let raw = unsafe { ffi::duckdb_fetch_chunk(self.raw) };
        if raw.is_null() {
            // SAFETY: the message lives until the result is destroyed.
            let error = unsafe { ffi::duckdb_result_error(&mut self.raw) };
            return if error.is_null() {
                Ok(None)
            } else {
                Err(failure(unsafe { message(error) }))
            };
        }
        let chunk = Chunk {
            raw,
            types: self.types.clone(),
        };
        Ok((chunk.rows() > 0).then_some(chunk))
    }
}

impl Drop for QueryResult {
    fn drop(&mut self) {
        // SAFETY: zeroed or executed; destroying either is allowed, once.
        unsafe { ffi::duckdb_destroy_result(&mut self.raw) };
    }
}

/// Rows of a result, owning their data (see the module doc).
pub(crate) struct Chunk {
    raw: ffi::duckdb_data_chunk,
    /// The result's column types: what each vector holds.
    types: Arc<[ColumnType]>,
}

// SAFETY: a chunk owns its data and is read by one thread at a time.
unsafe impl Send for Chunk {}

impl Chunk {
    pub fn rows(&self) -> usize {
        // SAFETY: a live chunk.
        unsafe { ffi::duckdb_data_chunk_get_size(self.raw) as usize }
    }

    /// Column `index`, read as its type says; `None` past the last column.
    pub fn column(&self, index: usize) -> Option<Column<'_>> {
        let ty = self.types.get(index)?;
        // SAFETY: a live chunk and one of its columns.
        let vector = unsafe { ffi::duckdb_data_chunk_get_vector(self.raw, index as u64) };
        // SAFETY: a vector of this chunk, of the result's type `ty` (DuckDB
        // gives every chunk the result's types), holding `rows` values.
        (!vector.is_null()).then(|| unsafe { Column::new(vector, ty, self.rows()) })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: fetched, destroyed once.
        unsafe { ffi::duckdb_destroy_data_chunk(&mut self.raw) };
    }
}

/// One column of a [`Chunk`], typed.
pub(crate) enum Column<'a> {
    Varchar(Flat<'a, ffi::duckdb_string_t>),
    BigInt(Flat<'a, i64>),
    Double(Flat<'a, f64>),
    /// DuckDB's booleans are bytes, 0 or 1.
    Boolean(Flat<'a, u8>),
    /// Microseconds since the epoch.
    Timestamp(Flat<'a, i64>),
    /// Days since the epoch.
    Date(Flat<'a, i32>),
    /// Each row's `(offset, length)` in the child column.
    List(Flat<'a, ffi::duckdb_list_entry>, Box<Column<'a>>),
}

impl<'a> Column<'a> {
    /// # Safety
    /// `vector` is flat, of type `ty`, holds at least `len` values, and
    /// lives for `'a`.
    unsafe fn new(vector: ffi::duckdb_vector, ty: &ColumnType, len: usize) -> Column<'a> {
        unsafe {
            match ty {
                ColumnType::Varchar => Column::Varchar(Flat::new(vector, len)),
                ColumnType::BigInt => Column::BigInt(Flat::new(vector, len)),
                ColumnType::Double => Column::Double(Flat::new(vector, len)),
                ColumnType::Boolean => Column::Boolean(Flat::new(vector, len)),
                ColumnType::Timestamp => Column::Timestamp(Flat::new(vector, len)),
                ColumnType::Date => Column::Date(Flat::new(vector, len)),
                ColumnType::List(child) => {
                    let size = ffi::duckdb_list_vector_get_size(vector) as usize;
                    let child_vector = ffi::duckdb_list_vector_get_child(vector);
                    Column::List(Flat::new(vector, len), Box::new(Column::new(child_vector, child, size)))
                }
            }
        }
    }
}

impl Column<'_> {
    /// Where the column's values are: `(first value, bytes per value,
    /// values)`.
    fn array(&self) -> (*const u8, usize, usize) {
        fn of<T>(f: &Flat<'_, T>) -> (*const u8, usize, usize) {
            (f.values.as_ptr().cast(), size_of::<T>(), f.values.len())
        }
        match self {
            Column::Varchar(f) => of(f),
            Column::BigInt(f) | Column::Timestamp(f) => of(f),
            Column::Double(f) => of(f),
            Column::Boolean(f) => of(f),
            Column::Date(f) => of(f),
            Column::List(f, _) => of(f),
        }
    }

    /// What row `i`'s value points to, once the value is cached: the bytes
    /// of a long string, the first values of a list.
    #[inline]
    fn prefetch_behind(&self, i: usize) {
        match self {
            Column::Varchar(f) => {
                if let Some(s) = f.get(i) {
                    // SAFETY: both fields of DuckDB's string union are
                    // plain bytes; the pointer is one only past 12 bytes
                    // (see `string_bytes`), and is never dereferenced here.
                    let (len, ptr) = unsafe { (s.value.inlined.length as usize, s.value.pointer.ptr) };
                    if len > 12 {
                        prefetch_read(ptr.cast_const());
                    }
                }
            }
            Column::List(f, child) => {
                if let Some(entry) = f.get(i) {
                    let (first, size, len) = child.array();
                    let at = entry.offset as usize;
                    if at < len {
                        prefetch_read(first.wrapping_add(at * size));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Asks the CPU to bring a row's cells into its cache ahead of reading
/// them (hints: nothing is read, nothing can fault). The export reads its
/// rows across every column of a chunk, one row at a time: more arrays at
/// once than the hardware prefetcher follows, and the encoder waited on
/// cache misses (docs/benchmarks.md, item 20).
pub(crate) struct RowPrefetch<'c, 'a> {
    /// Each column's [`Column::array`].
    arrays: Vec<(*const u8, usize, usize)>,
    /// The columns whose values point further: strings and lists.
    pointing: Vec<&'c Column<'a>>,
}

impl<'c, 'a> RowPrefetch<'c, 'a> {
    pub fn new(columns: &'c [Column<'a>]) -> Self {
        RowPrefetch {
            arrays: columns.iter().map(Column::array).collect(),
            pointing: columns
                .iter()
                .filter(|c| matches!(c, Column::Varchar(_) | Column::List(..)))
                .collect(),
        }
    }

    /// Row `row`'s value in every column.
    #[inline]
    pub fn values(&self, row: usize) {
        for &(first, size, len) in &self.arrays {
            if row < len {
                prefetch_read(first.wrapping_add(row * size));
            }
        }
    }

    /// What row `row`'s strings and lists point to; best called once
    /// [`RowPrefetch::values`] of the row has had time to arrive.
    #[inline]
    pub fn behind(&self, row: usize) {
        for column in &self.pointing {
            column.prefetch_behind(row);
        }
    }
}

/// A flat vector's values and validity.
pub(crate) struct Flat<'a, T> {
    values: &'a [T],
    /// One bit per row, 1 = valid; `None` when every row is.
    validity: Option<&'a [u64]>,
}

impl<'a, T> Flat<'a, T> {
    /// # Safety
    /// `vector` is flat, holds at least `len` values of `T`, and lives for `'a`.
    unsafe fn new(vector: ffi::duckdb_vector, len: usize) -> Flat<'a, T> {
        unsafe {
            let data = ffi::duckdb_vector_get_data(vector) as *const T;
            let validity = ffi::duckdb_vector_get_validity(vector);
            Flat {
                values: if len == 0 || data.is_null() {
                    &[]
                } else {
                    std::slice::from_raw_parts(data, len)
                },
                validity: (!validity.is_null()).then(|| std::slice::from_raw_parts(validity, len.div_ceil(64))),
            }
        }
    }

    pub fn is_null(&self, i: usize) -> bool {
        self.validity.is_some_and(|v| v[i / 64] >> (i % 64) & 1 == 0)
    }

    /// Row `i`'s value, `None` for a NULL.
    pub fn get(&self, i: usize) -> Option<&'a T> {
        if self.is_null(i) {
            None
        } else {
            self.values.get(i)
        }
    }
}

/// A hint to cache the line at `address`; a no-op but on x86-64.
#[inline(always)]
fn prefetch_read<T>(address: *const T) {
    // SAFETY: SSE is part of x86-64; a prefetch reads nothing and cannot
    // fault, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// The bytes of a VARCHAR value.
pub(crate) fn string_bytes(s: &ffi::duckdb_string_t) -> &[u8] {
    // SAFETY: DuckDB's string layout: a length, then up to 12 bytes inline
    // or a 4-byte prefix and a pointer to the whole; the pointed-to bytes
    // belong to the chunk the value was read from, which outlives `s`.
    unsafe {
        let len = s.value.inlined.length as usize;
        if len <= 12 {
            std::slice::from_raw_parts(s.value.inlined.inlined.as_ptr().cast(), len)
        } else {
            std::slice::from_raw_parts(s.value.pointer.ptr.cast_const().cast(), len)
        }
    }
}
