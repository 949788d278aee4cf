//! JSON Lines input: one object per line, blank lines skipped.
//!
//! - Events: the Import API's event (`event_log_id`, `event_name`,
//!   `event_datetime`, `properties`?, `items`?) plus `"identity":{…}`, the
//!   user's identifiers (`external_id`, `email`, … or `df_unified_id`).
//!   The event goes to the server as it is, minus `identity`.
//! - Profiles: `{"identity":{…},"user_properties":{…}}`, optionally with
//!   `request_datetime` (default: the time it is read).
//!
//! A line that is not a JSON object or has no `identity` object is rejected
//! without asking the server; everything else is the server's to judge.

use std::io::BufRead;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use super::{Kind, Origin, Parsed, Reject, Row, RowReader};

/// Reads JSON Lines from `R`.
pub struct JsonlReader<R> {
    input: R,
    name: Arc<str>,
    kind: Kind,
    line: u64,
    buf: String,
}

impl<R: BufRead> JsonlReader<R> {
    pub fn new(input: R, name: Arc<str>, kind: Kind) -> JsonlReader<R> {
        JsonlReader {
            input,
            name,
            kind,
            line: 0,
            buf: String::new(),
        }
    }

    fn parse(&self, origin: Origin, text: &str) -> Parsed {
        let unreadable = |reason: String| Parsed::Unreadable(Reject::new(&origin, None, None, reason));
        let mut object = match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(o)) => o,
            Ok(_) => return unreadable("the line is not a JSON object".into()),
            Err(e) => return unreadable(format!("the line is not JSON: {e}")),
        };
        let event_log_id = object.get("event_log_id").and_then(Json::as_str).map(str::to_owned);
        let identity = match (self.kind, object.get("identity")) {
            (_, Some(Json::Object(identity))) => identity.clone(),
            (_, other) => {
                let what = if other.is_some() {
                    "must be an object"
                } else {
                    "is missing"
                };
                return Parsed::Unreadable(Reject::new(
                    &origin,
                    event_log_id,
                    None,
                    format!("\"identity\" {what}: each line needs the user's identifiers, e.g. \"identity\":{{\"external_id\":\"…\"}}"),
                ));
            }
        };
        let items = match self.kind {
            Kind::Events => {
                object.remove("identity");
                object.get("items").and_then(Json::as_array).map_or(0, Vec::len)
            }
            Kind::Profiles => {
                if !object.contains_key("request_datetime") {
                    object.insert("request_datetime".into(), Json::String(super::now_datetime()));
                }
                0
            }
        };
        Parsed::Row {
            identity,
            row: Row {
                origin,
                event_log_id,
                items,
                body: object,
            },
        }
    }
}

impl<R: BufRead + Send> RowReader for JsonlReader<R> {
    fn next_row(&mut self) -> Option<anyhow::Result<Parsed>> {
        loop {
            self.buf.clear();
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(anyhow::anyhow!(
                        "reading {} after line {}: {e}",
                        self.name,
                        self.line
                    )))
                }
            }
            self.line += 1;
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            let origin = Origin {
                file: self.name.clone(),
                line: self.line,
            };
            return Some(Ok(self.parse(origin, text)));
        }
    }
}

/// The identity of a row of fineport's export: `{"df_unified_id":…}` plus
/// `external_id` when known.
pub(crate) fn unified_identity(unified_id: &str, external_id: Option<&str>) -> Map<String, Json> {
    let mut identity = Map::new();
    identity.insert("df_unified_id".into(), Json::String(unified_id.to_owned()));
    if let Some(ext) = external_id {
        identity.insert("external_id".into(), Json::String(ext.to_owned()));
    }
    identity
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, kind: Kind) -> Vec<Parsed> {
        let mut r = JsonlReader::new(text.as_bytes(), "in.jsonl".into(), kind);
        std::iter::from_fn(|| r.next_row()).map(|p| p.unwrap()).collect()
    }

    #[test]
    fn events_lose_their_identity_and_keep_the_rest() {
        let text = "{\"identity\":{\"external_id\":\"u1\"},\"event_log_id\":\"x\",\"event_name\":\"df_login\",\"items\":[{},{}]}\n\n[1]\n{\"event_name\":\"a\"}\nnot json\n";
        let rows = read(text, Kind::Events);
        assert_eq!(rows.len(), 4);
        let Parsed::Row { identity, row } = &rows[0] else {
            panic!("{rows:?}")
        };
        assert_eq!(identity["external_id"], "u1");
        assert!(!row.body.contains_key("identity"));
        assert_eq!(row.items, 2);
        assert_eq!(row.event_log_id.as_deref(), Some("x"));
        let lines: Vec<u64> = rows[1..]
            .iter()
            .map(|p| match p {
                Parsed::Unreadable(r) => r.line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lines, [3, 4, 5], "blank lines count as lines");
    }

    #[test]
    fn profiles_get_a_request_datetime() {
        let rows = read(
            "{\"identity\":{\"external_id\":\"u1\"},\"user_properties\":{}}\n",
            Kind::Profiles,
        );
        let Parsed::Row { row, .. } = &rows[0] else { panic!() };
        assert!(row.body["request_datetime"].as_str().is_some_and(|s| s.ends_with('Z')));
        assert!(row.body.contains_key("identity"), "a profile body keeps its identity");
    }
}
