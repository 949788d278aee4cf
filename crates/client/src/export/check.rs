//! Is a day's CSV whole? The checks a streamed export body must pass before
//! the day counts as done (SPEC §2.3): a header line, every row
//! newline-terminated (no partial row, no open quote at the end), and every
//! row exactly as wide as the header. The transport's own check (the final
//! chunk of a chunked body, or a complete `Content-Length`) comes first:
//! `reqwest` reports a body cut short as an error.
//!
//! Parsing is `csv-core`'s incremental reader, so a multi-gigabyte day is
//! checked as it streams, in constant memory (the largest row).

use csv_core::{ReadRecordResult, Reader};

/// An incremental checker; feed it every chunk, then [`CsvCheck::finish`].
pub struct CsvCheck {
    reader: Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    out_len: usize,
    ends_len: usize,
    records: u64,
    width: Option<usize>,
    header: Vec<u8>,
}

impl Default for CsvCheck {
    fn default() -> Self {
        CsvCheck {
            reader: Reader::new(),
            out: vec![0; 64 * 1024],
            ends: vec![0; 256],
            out_len: 0,
            ends_len: 0,
            records: 0,
            width: None,
            header: Vec::new(),
        }
    }
}

impl CsvCheck {
    /// Parses `input`, the next bytes of the body.
    ///
    /// Errors: a row whose width differs from the header's (1-based row
    /// number, header = row 1).
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), String> {
        loop {
            let (result, nin, nout, nend) =
                self.reader
                    .read_record(input, &mut self.out[self.out_len..], &mut self.ends[self.ends_len..]);
            if self.records == 0 {
                self.header.extend_from_slice(&input[..nin]);
            }
            input = &input[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            match result {
                ReadRecordResult::InputEmpty | ReadRecordResult::End => return Ok(()),
                ReadRecordResult::OutputFull => {
                    let len = self.out.len() * 2;
                    self.out.resize(len, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                ReadRecordResult::Record => self.record()?,
            }
        }
    }

    /// Records completed so far, the header included.
    pub fn records(&self) -> u64 {
        self.records
    }

    fn record(&mut self) -> Result<(), String> {
        let width = self.ends_len;
        self.out_len = 0;
        self.ends_len = 0;
        self.records += 1;
        match self.width {
            None => self.width = Some(width),
            Some(w) if w != width => {
                return Err(format!("row {} has {width} fields, the header has {w}", self.records))
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Ends the body: `Ok(data rows)` when it was whole.
    ///
    /// Errors: no header line; the header does not name `df_unified_id`
    /// (not an export); the last row not newline-terminated (cut mid-row).
    pub fn finish(mut self) -> Result<(u64, Vec<u8>), String> {
        let (result, ..) = self
            .reader
            .read_record(&[], &mut self.out[self.out_len..], &mut self.ends[self.ends_len..]);
        if matches!(result, ReadRecordResult::Record) {
            return Err(match self.records {
                0 => "the header line is not complete".to_owned(),
                n => format!("row {} is cut short (no line end)", n + 1),
            });
        }
        if self.records == 0 {
            return Err("the body is empty: no header line".into());
        }
        if !self
            .header
            .split(|b| *b == b',' || *b == b'\n')
            .any(|f| f == b"df_unified_id")
        {
            return Err(format!(
                "the first line is not an export header: {}",
                String::from_utf8_lossy(&self.header[..self.header.len().min(200)]).trim_end()
            ));
        }
        Ok((self.records - 1, self.header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(chunks: &[&[u8]]) -> Result<u64, String> {
        let mut c = CsvCheck::default();
        for chunk in chunks {
            c.feed(chunk)?;
        }
        c.finish().map(|(rows, _)| rows)
    }

    #[test]
    fn whole_bodies_pass_in_any_chunking() {
        let body: &[u8] = b"df_unified_id,event_name,note\nu1,buy,\"a,b\"\nu2,view,\"line\nbreak \"\"q\"\"\"\n";
        assert_eq!(check(&[body]), Ok(2));
        for split in 0..body.len() {
            assert_eq!(check(&[&body[..split], &body[split..]]), Ok(2), "split at {split}");
        }
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(check(&bytewise), Ok(2));
        assert_eq!(check(&[b"df_unified_id,x\n"]), Ok(0));
    }

    #[test]
    fn cut_bodies_and_wrong_widths_fail() {
        let body: &[u8] = b"df_unified_id,event_name,note\nu1,buy,\"a,b\"\nu2,view,\"line\nbreak\"\n";
        // Every strict prefix that does not end right after a row's newline is incomplete.
        let row_ends = [30, 43, body.len()];
        for cut in 0..body.len() {
            let r = check(&[&body[..cut]]);
            if row_ends.contains(&cut) {
                assert!(r.is_ok(), "cut at {cut}: {r:?}");
            } else {
                assert!(r.is_err(), "cut at {cut} passed");
            }
        }
        assert!(check(&[b"df_unified_id,a\nu1\n"])
            .unwrap_err()
            .contains("row 2 has 1 fields"));
        assert!(check(&[b"{\"result\":\"fail\"}\n"])
            .unwrap_err()
            .contains("not an export header"));
        assert!(check(&[b""]).unwrap_err().contains("empty"));
    }
}
