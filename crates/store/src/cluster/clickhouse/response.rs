//! A streamed RowBinary response, read a row at a time.
//!
//! [`Rows`] buffers the response's bytes and hands each row's bytes to a
//! parser; the buffer holds at most the row being read plus one network
//! chunk, so memory does not grow with the response. A response that ends
//! inside a row is an error, never a short result. When the caller finds
//! a row that fails its checks, [`Rows::failure`] reads on a little to
//! report ClickHouse's appended error text (18.16 appends `Code: …` to a
//! body whose HTTP 200 was already sent).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::rowbinary::Cursor;
use super::{clip, error_chain};
use crate::StoreError;

/// Largest row accepted; a bigger one is garbage (a length read from an
/// error text), and waiting for its end would buffer the whole response.
const MAX_ROW_BYTES: usize = 64 << 20;

/// How much more of the response is read to show an error text.
const ERROR_TEXT_BYTES: usize = 64 << 10;

pub(crate) struct Rows {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// Where the response came from, for messages.
    source: String,
    buf: Vec<u8>,
    /// The start of the row last returned.
    row_start: usize,
    /// The end of the row last returned: where the next one starts.
    pos: usize,
    eof: bool,
}

impl Rows {
    pub fn new(response: reqwest::Response, source: String) -> Rows {
        Rows {
            body: response.bytes_stream().boxed(),
            source,
            buf: Vec::new(),
            row_start: 0,
            pos: 0,
            eof: false,
        }
    }

    /// The bytes the ranges returned by the last parse point into.
    pub fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// Parses the next row with `parse`, which returns `None` when the
    /// bytes end before the row does; reads more until it can. `Ok(None)`
    /// when the response ended exactly after a row. The ranges in `T`
    /// index [`Self::buf`] until the next call.
    pub async fn next<T>(
        &mut self,
        mut parse: impl FnMut(&mut Cursor<'_>) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        loop {
            let mut cursor = Cursor::new(&self.buf, self.pos);
            if let Some(row) = parse(&mut cursor) {
                self.row_start = self.pos;
                self.pos = cursor.pos();
                return Ok(Some(row));
            }
            if self.eof {
                if self.pos == self.buf.len() {
                    return Ok(None);
                }
                self.row_start = self.pos;
                return Err(self.failure("the response ended inside a row").await);
            }
            if self.buf.len() - self.pos > MAX_ROW_BYTES {
                self.row_start = self.pos;
                return Err(self.failure("a row longer than 64 MiB").await);
            }
            self.fill().await?;
        }
    }

    /// Reads the next network chunk, first dropping the rows already read.
    async fn fill(&mut self) -> Result<(), StoreError> {
        self.buf.drain(..self.pos);
        self.row_start = 0;
        self.pos = 0;
        match self.body.next().await {
            Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(StoreError::query(format!(
                    "reading from ClickHouse at {}: {}",
                    self.source,
                    error_chain(&e)
                )))
            }
            None => self.eof = true,
        }
        Ok(())
    }

    /// The error for the row last returned (or the partial one): `what`
    /// went wrong, with ClickHouse's error text when the bytes from that
    /// row on are one (a query that failed after its first block).
    pub async fn failure(&mut self, what: &str) -> StoreError {
        let mut tail = self.buf[self.row_start..].to_vec();
        if tail.starts_with(b"Code:") {
            while tail.len() < ERROR_TEXT_BYTES {
                match self.body.next().await {
                    Some(Ok(chunk)) => tail.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            return StoreError::query(format!(
                "ClickHouse at {} failed mid-response: {}",
                self.source,
                clip(&tail)
            ));
        }
        StoreError::query(format!("ClickHouse at {}: {what}", self.source))
    }
}
