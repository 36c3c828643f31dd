//! NDJSON output records.
//!
//! A record has ~70 short pieces (keys and numbers); appending each with a fixed-size copy
//! and then trimming the vector is about twice as fast as a variable-length copy per piece.

use gatewatch_event::{write_json_str, write_rfc3339_ms};
use gatewatch_features::Record;

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

/// Writes records as NDJSON lines.
pub struct RecordWriter {
    keys: Vec<Key>,
    floats: Vec<(u64, [u8; 32], u8)>,
    /// Decimal forms of 0..SMALL_INTS, padded to 8 bytes, with their lengths.
    small: Vec<([u8; 8], u8)>,
    ts: String,
    text: String,
}

impl RecordWriter {
    /// A writer for features named `names` (in vector order).
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        let keys = names
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
        Self {
            keys,
            floats: vec![(u64::MAX, [0; 32], 0); FLOAT_CACHE],
            small,
            ts: String::with_capacity(32),
            text: String::with_capacity(256),
        }
    }

    /// Appends one record as a line.
    pub fn write(&mut self, r: &Record<'_>, out: &mut Vec<u8>) {
        self.write_parts(
            r.event.id.as_deref(),
            r.event.label.as_deref(),
            r.event.ts_ms,
            r.client,
            r.endpoint,
            r.features,
            out,
        );
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
        out.reserve(64 + self.keys.len() * (KEY_PAD + 24));
        out.push(b'{');
        if let Some(id) = id {
            out.extend_from_slice(b"\"id\":");
            out.extend_from_slice(id.as_bytes());
            out.push(b',');
        }
        if let Some(label) = label {
            out.extend_from_slice(b"\"label\":");
            out.extend_from_slice(label.as_bytes());
            out.push(b',');
        }
        self.ts.clear();
        write_rfc3339_ms(ts_ms, &mut self.ts);
        self.text.clear();
        self.text.push_str("\"ts\":\"");
        self.text.push_str(&self.ts);
        self.text.push_str("\",\"client\":");
        write_json_str(&mut self.text, client);
        self.text.push_str(",\"endpoint\":");
        write_json_str(&mut self.text, endpoint);
        out.extend_from_slice(self.text.as_bytes());
        let mut ib = itoa::Buffer::new();
        let mut fb = zmij::Buffer::new();
        for (k, v) in self.keys.iter().zip(features) {
            if k.len <= KEY_PAD {
                let at = out.len();
                out.extend_from_slice(&k.padded);
                out.truncate(at + k.len);
            } else {
                out.extend_from_slice(k.text.as_bytes());
            }
            let v = *v;
            if v >= 0.0 && v < SMALL_INTS as f64 && v == (v as u32) as f64 {
                let (b, n) = &self.small[v as usize];
                let at = out.len();
                out.extend_from_slice(b);
                out.truncate(at + usize::from(*n));
            } else if v.is_finite() {
                let bits = v.to_bits();
                let slot = (bits ^ (bits >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52;
                let e = &mut self.floats[slot as usize % FLOAT_CACHE];
                if e.0 != bits {
                    let at = out.len();
                    write_number(v, out, &mut ib, &mut fb);
                    let n = out.len() - at;
                    if n <= 32 {
                        e.0 = bits;
                        e.1[..n].copy_from_slice(&out[at..]);
                        e.2 = n as u8;
                    }
                } else {
                    let at = out.len();
                    out.extend_from_slice(&e.1);
                    out.truncate(at + usize::from(e.2));
                }
            } else {
                out.extend_from_slice(b"null");
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Records per batch handed to a formatting thread.
const BATCH_RECORDS: usize = 1024;

/// A batch of records copied out of the engine: strings in one buffer, features in rows.
#[derive(Default)]
struct OwnedBatch {
    text: String,
    /// Per record: id, label (empty range: none; raw JSON values), client, endpoint.
    spans: Vec<[(u32, u32); 4]>,
    ts: Vec<i64>,
    features: Vec<f64>,
}

impl OwnedBatch {
    fn clear(&mut self) {
        self.text.clear();
        self.spans.clear();
        self.ts.clear();
        self.features.clear();
    }

    fn push(&mut self, r: &Record<'_>) {
        let span = |s: Option<&str>, text: &mut String| {
            let a = text.len() as u32;
            if let Some(s) = s {
                text.push_str(s);
            }
            (a, text.len() as u32)
        };
        let spans = [
            span(r.event.id.as_deref(), &mut self.text),
            span(r.event.label.as_deref(), &mut self.text),
            span(Some(r.client), &mut self.text),
            span(Some(r.endpoint), &mut self.text),
        ];
        self.spans.push(spans);
        self.ts.push(r.event.ts_ms);
        self.features.extend_from_slice(r.features);
    }

    fn format(&self, w: &mut RecordWriter, out: &mut Vec<u8>) {
        let n = if self.spans.is_empty() {
            0
        } else {
            self.features.len() / self.spans.len()
        };
        for (i, (sp, ts)) in self.spans.iter().zip(&self.ts).enumerate() {
            let get = |(a, z): (u32, u32)| &self.text[a as usize..z as usize];
            let opt = |r: (u32, u32)| (r.0 != r.1).then(|| get(r));
            w.write_parts(
                opt(sp[0]),
                opt(sp[1]),
                *ts,
                get(sp[2]),
                get(sp[3]),
                &self.features[i * n..(i + 1) * n],
                out,
            );
        }
    }
}

/// Whether a [`ParallelRecords`] has failed to write.
pub struct Health(std::sync::Arc<std::sync::Mutex<Option<anyhow::Error>>>);

impl Health {
    /// Whether writing has not failed so far.
    pub fn ok(&self) -> bool {
        self.0.lock().is_ok_and(|f| f.is_none())
    }
}

/// NDJSON records formatted on other threads and written in order by another: the engine's
/// thread only copies each record into a batch.
pub struct ParallelRecords {
    batch: OwnedBatch,
    /// Batches the formatting threads are done with, for reuse.
    spare: std::sync::mpsc::Receiver<OwnedBatch>,
    seq: u64,
    jobs: Option<std::sync::mpsc::SyncSender<(u64, OwnedBatch)>>,
    failed: std::sync::Arc<std::sync::Mutex<Option<anyhow::Error>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl ParallelRecords {
    /// Records of features `names`, formatted by `threads` threads, written to `out`.
    pub fn new(
        names: Vec<String>,
        threads: usize,
        mut out: Box<dyn std::io::Write + Send>,
    ) -> Self {
        use std::sync::mpsc::sync_channel;
        use std::sync::{Arc, Mutex};
        let threads = threads.max(1);
        let (jobs, rx) = sync_channel::<(u64, OwnedBatch)>(threads * 2);
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done_rx) = sync_channel::<(u64, Vec<u8>)>(threads * 2);
        // Buffers go back to where they are filled, so that memory stays flat: formatted
        // bytes from the writer to the formatting threads, batches from those to the engine.
        let (bytes_back, spare_bytes) = std::sync::mpsc::channel::<Vec<u8>>();
        let spare_bytes = Arc::new(Mutex::new(spare_bytes));
        let (batch_back, spare) = std::sync::mpsc::channel::<OwnedBatch>();
        let failed: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let workers = (0..threads)
            .map(|_| {
                let (rx, tx) = (Arc::clone(&rx), done_tx.clone());
                let (spare_bytes, batch_back) = (Arc::clone(&spare_bytes), batch_back.clone());
                let names = names.clone();
                std::thread::spawn(move || {
                    let mut w = RecordWriter::new(names.iter().map(String::as_str));
                    while let Some((seq, mut batch)) = crate::ordered::next_job(&rx) {
                        let mut bytes = spare_bytes
                            .lock()
                            .ok()
                            .and_then(|r| r.try_recv().ok())
                            .unwrap_or_default();
                        bytes.clear();
                        batch.format(&mut w, &mut bytes);
                        batch.clear();
                        let _ = batch_back.send(batch);
                        if tx.send((seq, bytes)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(done_tx);
        let fail = Arc::clone(&failed);
        let writer = std::thread::spawn(move || {
            let mut in_order = crate::ordered::InOrder::default();
            let mut result = Ok(());
            'all: for (seq, bytes) in done_rx.iter() {
                in_order.put(seq, bytes);
                while let Some(b) = in_order.take() {
                    if let Err(e) = out.write_all(&b) {
                        result = Err(e);
                        break 'all;
                    }
                    let _ = bytes_back.send(b);
                }
            }
            if result.is_ok() {
                result = out.flush();
            }
            if let Err(e) = result {
                if let Ok(mut f) = fail.lock() {
                    f.get_or_insert(e.into());
                }
            }
        });
        Self {
            batch: OwnedBatch::default(),
            spare,
            seq: 0,
            jobs: Some(jobs),
            failed,
            workers,
            writer: Some(writer),
        }
    }

    /// Adds a record.
    pub fn push(&mut self, r: &Record<'_>) {
        self.batch.push(r);
        if self.batch.spans.len() >= BATCH_RECORDS {
            self.send();
        }
    }

    fn send(&mut self) {
        let next = self.spare.try_recv().unwrap_or_default();
        let batch = std::mem::replace(&mut self.batch, next);
        if let Some(j) = &self.jobs {
            if j.send((self.seq, batch)).is_err() {
                self.jobs = None;
            }
        }
        self.seq += 1;
    }

    /// A handle that tells whether writing has failed, usable while records are pushed.
    pub fn health(&self) -> Health {
        Health(std::sync::Arc::clone(&self.failed))
    }

    /// Writes what is left and waits for it; the first write error, if any.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if !self.batch.spans.is_empty() {
            self.send();
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        match self.failed.lock().map(|mut f| f.take()) {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => Err(anyhow::anyhow!("the output writer failed")),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back_to_the_same_values() {
        let names: Vec<String> = (0..300)
            .map(|i| format!("f{i}_{}", "x".repeat(i % 60)))
            .collect();
        let mut w = RecordWriter::new(names.iter().map(String::as_str));
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
            let r = Record {
                event: &ev,
                line: 1,
                client: "ip:10.0.0.1",
                client_kind: gatewatch_event::KeyKind::Ip,
                endpoint: "GET /a",
                features: &values,
            };
            out.clear();
            w.write(&r, &mut out);
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
