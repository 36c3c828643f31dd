//! NDJSON output records.

use gatewatch_event::write_json_str;
use gatewatch_features::Record;

/// Writes JSON object keys once, pre-escaped.
pub struct RecordWriter {
    keys: Vec<String>,
    ts: String,
}

impl RecordWriter {
    /// A writer for features named `names` (in vector order).
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        let keys = names
            .map(|n| {
                let mut k = String::from(",");
                write_json_str(&mut k, n);
                k.push(':');
                k
            })
            .collect();
        Self {
            keys,
            ts: String::with_capacity(32),
        }
    }

    /// Appends one record as a line.
    pub fn write(&mut self, r: &Record<'_>, out: &mut Vec<u8>) {
        out.push(b'{');
        if let Some(id) = &r.event.id {
            out.extend_from_slice(b"\"id\":");
            out.extend_from_slice(id.as_bytes());
            out.push(b',');
        }
        if let Some(label) = &r.event.label {
            out.extend_from_slice(b"\"label\":");
            out.extend_from_slice(label.as_bytes());
            out.push(b',');
        }
        self.ts.clear();
        self.ts
            .push_str(&gatewatch_event::format_rfc3339_ms(r.event.ts_ms));
        out.extend_from_slice(b"\"ts\":\"");
        out.extend_from_slice(self.ts.as_bytes());
        out.extend_from_slice(b"\",\"client\":");
        let mut s = String::with_capacity(r.client.len() + r.endpoint.len() + 8);
        write_json_str(&mut s, r.client);
        s.push_str(",\"endpoint\":");
        write_json_str(&mut s, r.endpoint);
        out.extend_from_slice(s.as_bytes());
        let mut ib = itoa::Buffer::new();
        let mut fb = zmij::Buffer::new();
        for (k, v) in self.keys.iter().zip(r.features) {
            out.extend_from_slice(k.as_bytes());
            write_number(*v, out, &mut ib, &mut fb);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Integers without a fraction, other finite values as shortest round-trip decimals, and
/// `null` for non-finite values.
pub fn write_number(v: f64, out: &mut Vec<u8>, ib: &mut itoa::Buffer, fb: &mut zmij::Buffer) {
    if !v.is_finite() {
        out.extend_from_slice(b"null");
    } else if v.abs() < 1e15 && v == (v as i64) as f64 {
        out.extend_from_slice(ib.format(v as i64).as_bytes());
    } else {
        out.extend_from_slice(fb.format_finite(v).as_bytes());
    }
}
