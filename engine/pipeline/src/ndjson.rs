//! The fast NDJSON writers of the record schema ([`crate::schema`]): feature records, score
//! records and reasons.
//!
//! A feature record has ~90 short pieces (keys and numbers), written at a cursor into a
//! line buffer as fixed-size copies that the next piece overwrites past its real length:
//! no variable-length copy and no growth check per piece.

use gatewatch_event::{write_json_str, write_rfc3339_ms};
use gatewatch_models::{Reason, Scorer};

use crate::output::{Output, RecordRef};

const KEY_PAD: usize = 48;
const SMALL_INTS: usize = 10_000;

/// `,"name":` padded to a fixed size, with its real length.
struct Key {
    padded: [u8; KEY_PAD],
    len: usize,
    text: String,
}

/// Direct-mapped cache of formatted non-integer values: features repeat exact values often
/// (sketch estimates, ratios of small counts, rates), and formatting a float costs far more
/// than a lookup.
const FLOAT_CACHE: usize = 1 << 12;

/// Writes feature records ([`crate::FeatureRecord`]) as NDJSON lines.
pub struct FeatureWriter {
    keys: Vec<Key>,
    floats: Vec<(u64, [u8; 32], u8)>,
    /// Decimal forms of 0..SMALL_INTS, padded to 8 bytes, with their lengths.
    small: Vec<([u8; 8], u8)>,
    text: String,
    /// The line being written, and the room its features can take at most (each key
    /// padded, each value's 32 bytes).
    line: Vec<u8>,
    room: usize,
}

impl FeatureWriter {
    /// A writer for features named `names` (in vector order).
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        let keys: Vec<Key> = names
            .map(|n| {
                let mut k = String::from(",");
                write_json_str(&mut k, n);
                k.push(':');
                let mut padded = [b' '; KEY_PAD];
                let len = k.len();
                if len <= KEY_PAD {
                    padded[..len].copy_from_slice(k.as_bytes());
                }
                Key {
                    padded,
                    len,
                    text: k,
                }
            })
            .collect();
        let small = (0..SMALL_INTS)
            .map(|i| {
                let s = i.to_string();
                let mut b = [b' '; 8];
                b[..s.len()].copy_from_slice(s.as_bytes());
                (b, s.len() as u8)
            })
            .collect();
        let room = keys.iter().map(|k| k.len.max(KEY_PAD) + 32).sum();
        Self {
            keys,
            floats: vec![(u64::MAX, [0; 32], 0); FLOAT_CACHE],
            small,
            text: String::with_capacity(256),
            line: Vec::new(),
            room,
        }
    }

    /// Appends one record as a line.
    pub fn write(&mut self, r: &RecordRef<'_>, out: &mut Vec<u8>) {
        self.write_parts(
            r.id, r.label, r.ts_ms, r.client, r.endpoint, r.features, out,
        );
    }

    /// Appends every record of a batch, one line each.
    pub fn write_batch(&mut self, batch: &Output, out: &mut Vec<u8>) {
        for r in batch.records() {
            self.write(&r, out);
        }
    }

    /// Appends one record, given by its parts (`id` and `label` as raw JSON values).
    #[allow(clippy::too_many_arguments)]
    pub fn write_parts(
        &mut self,
        id: Option<&str>,
        label: Option<&str>,
        ts_ms: i64,
        client: &str,
        endpoint: &str,
        features: &[f64],
        out: &mut Vec<u8>,
    ) {
        self.text.clear();
        write_head(id, label, ts_ms, client, endpoint, &mut self.text);
        // The line is written into `line` at a cursor, every piece a fixed-size copy (a
        // key padded to KEY_PAD bytes, a value to 32) that the next piece overwrites past
        // its real length; `line` is as long as the longest line can be, so the copies
        // never grow it, and it is copied to `out` once.
        let head = self.text.as_bytes();
        let need = head.len() + self.room + 2;
        if self.line.len() < need {
            self.line.resize(need, b' ');
        }
        let line = &mut self.line[..];
        line[..head.len()].copy_from_slice(head);
        let mut pos = head.len();
        let mut ib = itoa::Buffer::new();
        let mut fb = zmij::Buffer::new();
        for (k, v) in self.keys.iter().zip(features) {
            if k.len <= KEY_PAD {
                line[pos..pos + KEY_PAD].copy_from_slice(&k.padded);
            } else {
                line[pos..pos + k.len].copy_from_slice(k.text.as_bytes());
            }
            pos += k.len;
            let v = *v;
            if v >= 0.0 && v < SMALL_INTS as f64 && v == (v as u32) as f64 {
                let (b, n) = &self.small[v as usize];
                line[pos..pos + 8].copy_from_slice(b);
                pos += usize::from(*n);
            } else if v.is_finite() {
                let bits = v.to_bits();
                let slot = (bits ^ (bits >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52;
                let e = &mut self.floats[slot as usize % FLOAT_CACHE];
                if e.0 != bits {
                    let text = number_text(v, &mut ib, &mut fb);
                    let n = text.len();
                    line[pos..pos + n].copy_from_slice(text);
                    if n <= 32 {
                        e.0 = bits;
                        e.1[..n].copy_from_slice(text);
                        e.2 = n as u8;
                    }
                    pos += n;
                } else {
                    line[pos..pos + 32].copy_from_slice(&e.1);
                    pos += usize::from(e.2);
                }
            } else {
                line[pos..pos + 4].copy_from_slice(b"null");
                pos += 4;
            }
        }
        line[pos..pos + 2].copy_from_slice(b"}\n");
        out.extend_from_slice(&line[..pos + 2]);
    }
}

/// The text [`write_number`] writes for a finite `v`.
fn number_text<'b>(v: f64, ib: &'b mut itoa::Buffer, fb: &'b mut zmij::Buffer) -> &'b [u8] {
    if v.abs() < 1e15 && v == (v as i64) as f64 {
        ib.format(v as i64).as_bytes()
    } else {
        fb.format_finite(v).as_bytes()
    }
}

/// The fields every record starts with: `{` then `id` and `label` (raw JSON, when present),
/// `ts` (RFC 3339, milliseconds), `client` and `endpoint`.
pub fn write_head(
    id: Option<&str>,
    label: Option<&str>,
    ts_ms: i64,
    client: &str,
    endpoint: &str,
    out: &mut String,
) {
    out.push('{');
    if let Some(id) = id {
        out.push_str("\"id\":");
        out.push_str(id);
        out.push(',');
    }
    if let Some(label) = label {
        out.push_str("\"label\":");
        out.push_str(label);
        out.push(',');
    }
    out.push_str("\"ts\":\"");
    write_rfc3339_ms(ts_ms, out);
    out.push_str("\",\"client\":");
    write_json_str(out, client);
    out.push_str(",\"endpoint\":");
    write_json_str(out, endpoint);
}

/// A score or reason value: shortest round-trip decimal, `null` when not finite.
pub fn write_float(out: &mut String, v: f64) {
    if v.is_finite() {
        let mut b = zmij::Buffer::new();
        out.push_str(b.format_finite(v));
    } else {
        out.push_str("null");
    }
}

/// Reasons as the JSON array of [`crate::ReasonRecord`] objects (`detector`, `feature`,
/// `value`, `baseline`, `contribution`) that score records carry and table `reasons`
/// columns hold.
pub fn write_reasons_json(out: &mut String, detector: &str, reasons: &[Reason]) {
    out.push('[');
    for (n, x) in reasons.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"detector\":");
        write_json_str(out, detector);
        out.push_str(",\"feature\":");
        write_json_str(out, &x.feature);
        out.push_str(",\"value\":");
        write_float(out, x.value);
        out.push_str(",\"baseline\":");
        write_float(out, x.baseline);
        out.push_str(",\"contribution\":");
        write_float(out, x.contribution);
        out.push('}');
    }
    out.push(']');
}

/// Writes score records ([`crate::ScoreRecord`]) as NDJSON lines.
#[derive(Debug, Clone)]
pub struct ScoreWriter {
    /// Member names, as JSON strings.
    members: Vec<String>,
    /// Member names, as they are (reasons name the deciding one).
    names: Vec<String>,
    /// `,"model":"name@version"}` and a line end.
    tail: String,
}

impl ScoreWriter {
    /// A writer for the records of `scorer`.
    pub fn new(scorer: &Scorer) -> Self {
        let members = scorer
            .members
            .iter()
            .map(|m| {
                let mut s = String::new();
                write_json_str(&mut s, &m.name);
                s
            })
            .collect();
        let mut tail = String::from(",\"model\":");
        write_json_str(&mut tail, &scorer.id());
        tail.push_str("}\n");
        Self {
            members,
            names: scorer.members.iter().map(|m| m.name.clone()).collect(),
            tail,
        }
    }

    /// Appends the score records of a scored batch, one line each (nothing when the batch
    /// is not scored).
    pub fn write_batch(&self, batch: &Output, out: &mut String) {
        let Some(s) = batch.scores() else {
            return;
        };
        let k = self.members.len();
        for (i, r) in batch.records().enumerate() {
            write_head(r.id, r.label, r.ts_ms, r.client, r.endpoint, out);
            out.push_str(",\"score\":");
            write_float(out, s.score[i]);
            out.push_str(",\"surprisal\":");
            write_float(out, s.surprisal[i]);
            out.push_str(",\"scores\":{");
            for (j, m) in self.members.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(m);
                out.push(':');
                write_float(out, s.member[i * k + j]);
            }
            out.push_str("},\"flagged\":");
            out.push_str(if s.flagged[i] { "true" } else { "false" });
            out.push_str(",\"reasons\":");
            write_reasons_json(out, &self.names[s.decided_by[i]], &s.reasons[i]);
            if let Some(v) = batch.verdict(i) {
                write_verdict(v, out);
            }
            out.push_str(&self.tail);
        }
    }
}

/// `,"decision":{…}`: a [`crate::schema::VerdictRecord`].
fn write_verdict(v: &gatewatch_rules::Verdict, out: &mut String) {
    out.push_str(",\"decision\":{\"id\":");
    out.push_str(itoa::Buffer::new().format(v.id));
    out.push_str(",\"rule\":");
    write_json_str(out, &v.rule);
    out.push_str(",\"action\":\"");
    out.push_str(v.action.as_str());
    out.push_str("\",\"scope\":");
    write_json_str(out, v.scope.as_str());
    out.push_str(",\"value\":");
    write_json_str(out, &v.value);
    out.push_str(",\"mode\":\"");
    out.push_str(v.mode.as_str());
    out.push_str("\",\"until\":\"");
    write_rfc3339_ms(v.until_ms, out);
    out.push_str("\",\"new\":");
    out.push_str(if v.fresh { "true}" } else { "false}" });
}

/// Integers without a fraction, other finite values as shortest round-trip decimals, and
/// `null` for non-finite values.
pub fn write_number(v: f64, out: &mut Vec<u8>, ib: &mut itoa::Buffer, fb: &mut zmij::Buffer) {
    if v.is_finite() {
        out.extend_from_slice(number_text(v, ib, fb));
    } else {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back_to_the_same_values() {
        let names: Vec<String> = (0..300)
            .map(|i| format!("f{i}_{}", "x".repeat(i % 60)))
            .collect();
        let mut w = FeatureWriter::new(names.iter().map(String::as_str));
        let mut ev = gatewatch_event::RequestEvent::new(
            1_767_603_600_123,
            "10.0.0.1".parse().unwrap(),
            "GET",
            "/a",
            200,
        );
        ev.id = Some("7".into());
        ev.label = Some("\"normal\"".into());
        let mut out = Vec::new();
        for round in 0..3 {
            // Values repeat across records (cache hits) and collide in the cache (misses).
            let values: Vec<f64> = (0..300)
                .map(|i| match i % 6 {
                    0 => f64::from(i),
                    1 => f64::from(i) / 7.0,
                    2 => gatewatch_features::linear_count(u64::MAX >> (i % 64)),
                    3 => 1e6 + f64::from(i) * 0.1,
                    4 => -f64::from(i * round),
                    _ => f64::from(round) / 3.0,
                })
                .collect();
            out.clear();
            w.write_parts(
                ev.id.as_deref(),
                ev.label.as_deref(),
                ev.ts_ms,
                "ip:10.0.0.1",
                "GET /a",
                &values,
                &mut out,
            );
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["id"], 7);
            assert_eq!(v["label"], "normal");
            assert_eq!(v["ts"], "2026-01-05T09:00:00.123Z");
            for (n, x) in names.iter().zip(&values) {
                assert_eq!(v[n].as_f64().unwrap(), *x, "{n}");
            }
        }
    }

    #[test]
    fn numbers_round_trip() {
        let mut out = Vec::new();
        let (mut ib, mut fb) = (itoa::Buffer::new(), zmij::Buffer::new());
        for v in [
            0.0,
            1.0,
            9999.0,
            10_000.0,
            -3.0,
            0.1,
            1.0 / 3.0,
            1e300,
            123_456_789.0,
            f64::NAN,
        ] {
            out.clear();
            write_number(v, &mut out, &mut ib, &mut fb);
            let s = std::str::from_utf8(&out).unwrap();
            if v.is_finite() {
                assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
            } else {
                assert_eq!(s, "null");
            }
        }
    }
}
