//! ClickHouse's `RowBinary` format, by hand: the few types fineport's
//! tables use, written for INSERTs and read from a streamed response.
//!
//! A row is its columns back to back, with no framing: `Int64`/`UInt16`/
//! `UInt32`/`UInt64` little-endian, `String` as a LEB128 length and the
//! bytes, `Array(T)` as a LEB128 count and the elements. Nothing says where
//! a row or the stream ends, and ClickHouse 18.16 appends an error text
//! (`Code: …`) to a response whose headers were already sent; so the
//! readers here only cut bytes, and their callers check every row (range,
//! order, a marker) and treat a partial row at the end as a failure.

use std::ops::Range;

/// Appends an `Int64`.
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `UInt64`.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `UInt16`.
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a LEB128 length (of a `String` or an `Array`).
pub(crate) fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a `String`.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_str_bytes(out, s.as_bytes());
}

/// Appends a `String` given as its bytes.
pub(crate) fn put_str_bytes(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len());
    out.extend_from_slice(s);
}

/// Appends an `Array(String)`.
pub(crate) fn put_str_array(out: &mut Vec<u8>, items: &[String]) {
    put_len(out, items.len());
    for s in items {
        put_str(out, s);
    }
}

/// A cursor over buffered response bytes. Each read returns `None` when
/// the buffer ends before the value does: the row is incomplete (more
/// bytes may come, or the stream was cut). Strings come back as ranges of
/// the buffer, so a row is read without copying.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    /// Where the next value starts.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The bytes of a range returned by [`Self::str`].
    pub fn slice(&self, range: Range<usize>) -> &'a [u8] {
        &self.buf[range]
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(N)?)?;
        self.pos += N;
        bytes.try_into().ok()
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    /// A LEB128 length. A length past `usize` (garbage, not ClickHouse's)
    /// saturates, so the value it announces never fits and the caller's
    /// row-size bound stops it.
    pub fn len(&mut self) -> Option<usize> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let [byte] = self.take()?;
            n |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Some(usize::try_from(n).unwrap_or(usize::MAX));
            }
        }
        Some(usize::MAX)
    }

    /// A `String`, as its range in the buffer.
    pub fn str(&mut self) -> Option<Range<usize>> {
        let len = self.len()?;
        let end = self.pos.checked_add(len).filter(|&end| end <= self.buf.len())?;
        let range = self.pos..end;
        self.pos = end;
        Some(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back_every_type() {
        let mut out = Vec::new();
        put_i64(&mut out, -5);
        put_u16(&mut out, 513);
        put_str(&mut out, &"é".repeat(100));
        put_str_array(&mut out, &["a".to_string(), String::new()]);
        let mut c = Cursor::new(&out, 0);
        assert_eq!(c.i64(), Some(-5));
        assert_eq!(c.u16(), Some(513));
        let s = c.str().unwrap();
        assert_eq!(&out[s], "é".repeat(100).as_bytes());
        assert_eq!(c.len(), Some(2));
        let a = c.str().unwrap();
        let b = c.str().unwrap();
        assert_eq!((&out[a], &out[b]), (&b"a"[..], &b""[..]));
        assert_eq!(c.pos(), out.len());
        assert_eq!(c.u16(), None);
    }

    #[test]
    fn lengths_are_leb128() {
        for (n, bytes) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 1]),
            (300, vec![0xac, 2]),
        ] {
            let mut out = Vec::new();
            put_len(&mut out, n);
            assert_eq!(out, bytes);
            assert_eq!(Cursor::new(&out, 0).len(), Some(n));
        }
    }

    #[test]
    fn a_cut_value_is_incomplete_not_wrong() {
        let mut out = Vec::new();
        put_str(&mut out, "hello");
        for cut in 0..out.len() {
            assert_eq!(Cursor::new(&out[..cut], 0).str(), None, "cut at {cut}");
        }
        assert_eq!(Cursor::new(&[0x80, 0x80][..], 0).len(), None);
        assert_eq!(Cursor::new(&[1, 2, 3][..], 0).i64(), None);
    }
}
