//! NDJSON records (features or scores) formatted on other threads and written in order by
//! another.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use gatewatch_pipeline::{FeatureWriter, Output, ScoreWriter};

type Failure = Arc<Mutex<Option<anyhow::Error>>>;

/// How a formatting thread turns a batch into NDJSON bytes.
pub trait Formatter: Send + 'static {
    /// Appends the batch's records to `out`.
    fn format(&mut self, batch: &Output, out: &mut Vec<u8>);
}

impl Formatter for FeatureWriter {
    fn format(&mut self, batch: &Output, out: &mut Vec<u8>) {
        self.write_batch(batch, out);
    }
}

/// Score records, through a reused text buffer.
pub struct Scores(pub ScoreWriter, pub String);

impl Formatter for Scores {
    fn format(&mut self, batch: &Output, out: &mut Vec<u8>) {
        self.1.clear();
        self.0.write_batch(batch, &mut self.1);
        out.extend_from_slice(self.1.as_bytes());
    }
}

/// NDJSON records formatted on other threads and written in order by another: the
/// session's thread only hands its output batches over.
pub struct ParallelRecords {
    /// Batches the formatting threads are done with, for reuse.
    spare: Receiver<Output>,
    seq: u64,
    jobs: Option<SyncSender<(u64, Output)>>,
    failed: Failure,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl ParallelRecords {
    /// Records formatted by `threads` threads, each with its own formatter from `make`,
    /// written to `out`.
    pub fn new<F: Formatter>(
        make: impl Fn() -> F,
        threads: usize,
        mut out: Box<dyn std::io::Write + Send>,
    ) -> Self {
        use std::sync::mpsc::sync_channel;
        let threads = threads.max(1);
        let (jobs, rx) = sync_channel::<(u64, Output)>(threads * 2);
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, done_rx) = sync_channel::<(u64, Vec<u8>)>(threads * 2);
        // Buffers go back to where they are filled, so that memory stays flat: formatted
        // bytes from the writer to the formatting threads, batches from those to the session.
        let (bytes_back, spare_bytes) = std::sync::mpsc::channel::<Vec<u8>>();
        let spare_bytes = Arc::new(Mutex::new(spare_bytes));
        let (batch_back, spare) = std::sync::mpsc::channel::<Output>();
        let failed: Failure = Arc::default();
        let workers = (0..threads)
            .map(|_| {
                let (rx, tx) = (Arc::clone(&rx), done_tx.clone());
                let (spare_bytes, batch_back) = (Arc::clone(&spare_bytes), batch_back.clone());
                let mut w = make();
                std::thread::spawn(move || {
                    while let Some((seq, batch)) = crate::ordered::next_job(&rx) {
                        let mut bytes = spare_bytes
                            .lock()
                            .ok()
                            .and_then(|r| r.try_recv().ok())
                            .unwrap_or_default();
                        bytes.clear();
                        w.format(&batch, &mut bytes);
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
            spare,
            seq: 0,
            jobs: Some(jobs),
            failed,
            workers,
            writer: Some(writer),
        }
    }

    /// Hands a batch over to be formatted and written, leaving a spare (empty) batch in its
    /// place; the first write error, once writing has failed.
    pub fn push(&mut self, batch: &mut Output) -> anyhow::Result<()> {
        if let Some(e) = self.failed.lock().ok().and_then(|mut f| f.take()) {
            return Err(e);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let spare = self.spare.try_recv().unwrap_or_default();
        let full = std::mem::replace(batch, spare);
        if let Some(j) = &self.jobs {
            if j.send((self.seq, full)).is_err() {
                self.jobs = None;
            }
        }
        self.seq += 1;
        Ok(())
    }

    /// Waits for everything handed over to be written; the first write error, if any.
    pub fn finish(mut self) -> anyhow::Result<()> {
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
