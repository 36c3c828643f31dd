//! Stream inputs and outputs of the service: events read from a file (followed like
//! `tail -F`) or from standard input, score records and decision changes written to files or
//! standard output.
//!
//! One reader thread reads the input in chunks and hands them over a bounded queue to one
//! worker thread, which feeds the session, takes its batches when they are full (or when the
//! input has been quiet, and at least every `flush_every`: a live stream's events wait no
//! longer than that), writes them to the sinks and takes snapshots.
//! A snapshot covers the input up to the last complete line whose outputs the sinks have
//! taken: the state file, then the decisions, then the input position
//! (`STATE.input.json`), each written atomically. After a restart, a followed file is read
//! on from that position when it is still the same file; lines between the position and a
//! crash are read again (their records may be written twice; nothing is skipped).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gatewatch_features::Format;
use gatewatch_pipeline::{LineReader, Output};
use serde::{Deserialize, Serialize};

use crate::{Service, write_atomic};

/// Where the service reads events from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file read from its start to its end; the service then stops.
    File(PathBuf),
    /// A file followed like `tail -F`: read from its start (or from the saved position),
    /// then lines appended to it as they come; when the file is replaced (rotated) or
    /// truncated, the rest of the old one is read and the new one from its start. A file
    /// that does not exist yet is waited for.
    Follow(PathBuf),
    /// Standard input to its end; the service then stops.
    Stdin,
    /// The built-in simulator's traffic, as fast as it is read or in real time (each event
    /// when its time has come since the first); the service then stops.
    Simulator {
        /// What to simulate.
        config: gatewatch_sim::SimConfig,
        /// Paced in real time.
        realtime: bool,
    },
}

impl Input {
    /// The input in words (logs, errors).
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Follow(p) => format!("{} (followed)", p.display()),
            Self::Stdin => "standard input".to_string(),
            Self::Simulator { config, realtime } => format!(
                "the simulator (seed {}, {} users, {} s{})",
                config.seed,
                config.users,
                config.duration_ms / 1000,
                if *realtime { ", in real time" } else { "" }
            ),
        }
    }
}

/// Where records go: a file (appended to) or standard output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Standard output.
    Stdout,
    /// A file, created or appended to.
    File(PathBuf),
}

impl SinkTarget {
    /// `-` is standard output, anything else a file.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for SinkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("standard output"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How the service reads a stream and where its records go.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The input.
    pub input: Input,
    /// Its line format.
    pub format: Format,
    /// Score records (NDJSON, one per event, in event-time order).
    pub scores: Option<SinkTarget>,
    /// Decision changes (NDJSON, as `gatewatch score --decisions` writes them).
    pub decisions: Option<SinkTarget>,
    /// The events held for reordering are scored at least this often, and when the input
    /// has been quiet this long (a later event older than them is then scored after them,
    /// or refused as late beyond the allowed lateness).
    pub flush_every: Duration,
    /// How often a followed file is looked at for new lines and rotation.
    pub poll: Duration,
}

impl StreamOptions {
    /// Defaults for `input`: NDJSON, no sinks, flushed every 250 ms, 50 ms poll.
    pub fn new(input: Input) -> Self {
        Self {
            input,
            format: Format::Ndjson,
            scores: None,
            decisions: None,
            flush_every: Duration::from_millis(250),
            poll: Duration::from_millis(50),
        }
    }
}

/// The file a followed input was reading and how far its outputs are delivered: saved next
/// to the state file as `STATE.input.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPosition {
    /// The file's device.
    pub dev: u64,
    /// The file's inode.
    pub ino: u64,
    /// Bytes of complete lines whose outputs were delivered.
    pub offset: u64,
}

/// Where the input position is saved next to a state file.
pub fn position_path(state: &Path) -> PathBuf {
    PathBuf::from(format!("{}.input.json", state.display()))
}

/// Bytes read at a time.
const CHUNK: usize = 1 << 16;

/// What the reader thread hands the worker.
enum Chunk {
    /// Bytes of the input; `complete` is the offset in its file after its last newline
    /// (none when it has no newline), with the file's identity.
    Data {
        bytes: Vec<u8>,
        file: Option<(u64, u64)>,
        complete: Option<u64>,
    },
    /// The followed file was replaced or truncated: a last line without a newline ends.
    Rotated,
    /// The input ended (not for a followed file).
    End,
    /// The input cannot be read.
    Failed(String),
}

/// A sink: the target, opened, with retries.
struct Sink {
    name: &'static str,
    target: SinkTarget,
    out: Option<Box<dyn Write + Send>>,
}

impl Sink {
    fn new(name: &'static str, target: SinkTarget) -> Self {
        Self {
            name,
            target,
            out: None,
        }
    }

    fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match &self.target {
            SinkTarget::Stdout => Box::new(std::io::stdout()),
            SinkTarget::File(p) => Box::new(std::io::BufWriter::with_capacity(
                1 << 16,
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
        })
    }

    fn try_write(&mut self, bytes: &[u8], flush: bool) -> std::io::Result<()> {
        if self.out.is_none() {
            self.out = Some(self.open()?);
        }
        let out = self.out.as_mut().expect("opened above");
        let r = out
            .write_all(bytes)
            .and_then(|()| if flush { out.flush() } else { Ok(()) });
        if r.is_err() {
            // Opened again on the next try (a file replaced or a disk freed).
            self.out = None;
        }
        r
    }

    /// Writes `bytes` (and flushes when `flush`), retrying with backoff (100 ms doubling
    /// to 5 s) while it fails: the input waits meanwhile, nothing is dropped. Gives up only
    /// when the service stops.
    fn write(
        &mut self,
        service: &Service,
        stop: &AtomicBool,
        bytes: &[u8],
        flush: bool,
    ) -> Result<()> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.try_write(bytes, flush) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    service
                        .metrics
                        .sink_failures
                        .get_or_create(&vec![("sink".to_string(), self.name.to_string())])
                        .inc();
                    tracing::error!(target: "gatewatch::serve", sink = self.name, target = %self.target, error = %e, "cannot write; retrying (the input waits)");
                    if stop.load(Ordering::Acquire) {
                        anyhow::bail!("{} sink {}: {e}", self.name, self.target);
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The worker: the session fed from the reader, batches to the sinks, snapshots.
struct Worker {
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
    lines: LineReader,
    scores: Option<Sink>,
    decisions: Option<Sink>,
    batch: Output,
    text: String,
    /// The file and offset whose outputs have all been taken from the session.
    position: Option<InputPosition>,
    rejections: u64,
}

impl Worker {
    /// Takes the session's output and writes it to the sinks; with `finish` (the input is
    /// quiet, or a snapshot) every buffered event first, and the sinks are flushed after.
    fn drain(&mut self, finish: bool) -> Result<()> {
        let started = Instant::now();
        self.text.clear();
        let taken = {
            let mut guard = self.service.session();
            let text = self.scores.is_some().then_some(&mut self.text);
            self.service
                .take(&mut guard, finish, &mut self.batch, text)?
        };
        crate::log_rejections(&self.batch, &mut self.rejections);
        if let Some(s) = &mut self.scores
            && !self.text.is_empty()
        {
            s.write(&self.service, &self.stop, self.text.as_bytes(), false)?;
        }
        if let Some(s) = &mut self.decisions
            && !self.batch.decisions().is_empty()
        {
            let text = gatewatch_pipeline::schema::decisions_ndjson(self.batch.decisions());
            s.write(&self.service, &self.stop, text.as_bytes(), false)?;
        }
        self.flush(finish)?;
        if taken {
            self.service
                .metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Flushes the sinks (when `now`).
    fn flush(&mut self, now: bool) -> Result<()> {
        if now {
            for s in [&mut self.scores, &mut self.decisions]
                .into_iter()
                .flatten()
            {
                s.write(&self.service, &self.stop, b"", true)?;
            }
        }
        Ok(())
    }

    /// Everything read so far scored and delivered (sinks flushed), then the state, the
    /// decisions and the input position saved.
    fn snapshot(&mut self) -> Result<()> {
        self.drain(true)?;
        self.service.snapshot()?;
        if let (Some(state), Some(p)) = (&self.service.opts.state, self.position) {
            write_atomic(&position_path(state), |w| {
                serde_json::to_writer(w, &p).context("the input position")
            })?;
        }
        Ok(())
    }

    /// A chunk's complete lines into the session: whether a batch is ready to take.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut guard = self.service.session();
        self.lines.feed(&mut guard.0, bytes);
        guard.0.is_full()
    }

    fn end_line(&mut self) {
        let mut guard = self.service.session();
        let session = &mut guard.0;
        let format = self.lines.format().clone();
        self.lines.split_end(&mut |n, line| {
            gatewatch_pipeline::push_line(session, &format, n, line);
        });
    }

    /// Runs until the input ends or the service stops; a last snapshot then.
    fn run(
        mut self,
        rx: Receiver<Chunk>,
        idle: Duration,
        every: Duration,
        ends: &AtomicBool,
    ) -> Result<()> {
        let mut last_snapshot = Instant::now();
        let mut last_flush = Instant::now();
        let mut quiet = true;
        let result = loop {
            if self.stop.load(Ordering::Acquire) {
                break Ok(());
            }
            match rx.recv_timeout(idle) {
                Ok(Chunk::Data {
                    bytes,
                    file,
                    complete,
                }) => {
                    self.service.metrics.input_bytes.inc_by(bytes.len() as u64);
                    let full = self.feed(&bytes);
                    if let (Some((dev, ino)), Some(offset)) = (file, complete) {
                        self.position = Some(InputPosition { dev, ino, offset });
                    }
                    quiet = false;
                    // Full batches as they come; everything held at least every `idle`.
                    let flush = last_flush.elapsed() >= idle;
                    if (flush || full)
                        && let Err(e) = self.drain(flush)
                    {
                        break Err(e);
                    }
                    if flush {
                        last_flush = Instant::now();
                    }
                }
                Ok(Chunk::Rotated) => {
                    self.service.metrics.input_rotations.inc();
                    self.end_line();
                    self.position = None;
                }
                Ok(Chunk::End) => {
                    self.end_line();
                    ends.store(true, Ordering::Release);
                    break Ok(());
                }
                Ok(Chunk::Failed(e)) => break Err(anyhow::anyhow!(e)),
                Err(RecvTimeoutError::Timeout) => {
                    if !quiet {
                        quiet = true;
                        last_flush = Instant::now();
                        if let Err(e) = self.drain(true) {
                            break Err(e);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            }
            if self.service.opts.state.is_some() && last_snapshot.elapsed() >= every {
                last_snapshot = Instant::now();
                if let Err(e) = self.snapshot() {
                    tracing::error!(target: "gatewatch::serve", error = %format!("{e:#}"), "snapshot failed");
                }
            }
        };
        // The last snapshot (or, without a state file, the last records delivered).
        let last = self.snapshot();
        result.and(last)
    }
}

/// The identity of an open file: device and inode.
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// Reads `input` in chunks into `tx` until it ends, the worker is gone or `stop` is set.
fn read_input(
    input: Input,
    start: Option<InputPosition>,
    poll: Duration,
    tx: SyncSender<Chunk>,
    stop: Arc<AtomicBool>,
) {
    let send = |c: Chunk| tx.send(c).is_ok();
    match input {
        Input::Simulator { config, realtime } => simulated(&config, realtime, &send, &stop),
        Input::Stdin => {
            let mut stdin = std::io::stdin().lock();
            read_to_end(&mut stdin, None, 0, &send, &stop);
        }
        Input::File(path) => match File::open(&path) {
            Ok(mut f) => {
                let id = f.metadata().ok().map(|m| identity(&m));
                read_to_end(&mut f, id, 0, &send, &stop);
            }
            Err(e) => {
                send(Chunk::Failed(format!(
                    "cannot open {}: {e}",
                    path.display()
                )));
            }
        },
        Input::Follow(path) => {
            let mut start = start;
            let mut warned = false;
            'files: while !stop.load(Ordering::Acquire) {
                let (mut f, id) = match File::open(&path).and_then(|f| {
                    let m = f.metadata()?;
                    Ok((f, identity(&m)))
                }) {
                    Ok(x) => x,
                    Err(e) => {
                        if !warned {
                            warned = true;
                            tracing::warn!(target: "gatewatch::serve", path = %path.display(), error = %e, "waiting for the input file");
                        }
                        std::thread::sleep(poll);
                        continue;
                    }
                };
                let mut offset = 0;
                if let Some(p) = start.take()
                    && (p.dev, p.ino) == id
                    && f.metadata().is_ok_and(|m| m.len() >= p.offset)
                    && f.seek(SeekFrom::Start(p.offset)).is_ok()
                {
                    offset = p.offset;
                    tracing::info!(target: "gatewatch::serve", path = %path.display(), offset, "reading on from the saved position");
                }
                let mut buf = vec![0u8; CHUNK];
                loop {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    match f.read(&mut buf) {
                        Ok(0) => {
                            // At the end: the same file still there and not shorter?
                            let now = std::fs::metadata(&path);
                            let replaced = match &now {
                                Ok(m) => identity(m) != id || m.len() < offset,
                                Err(_) => true,
                            };
                            if replaced {
                                // Whatever was appended to the old file before it went.
                                match f.read(&mut buf) {
                                    Ok(n) if n > 0 => {
                                        if !send(data(&buf[..n], Some(id), &mut offset)) {
                                            return;
                                        }
                                        continue;
                                    }
                                    _ => {}
                                }
                                if !send(Chunk::Rotated) {
                                    return;
                                }
                                tracing::info!(target: "gatewatch::serve", path = %path.display(), "the input file was rotated or truncated; reading the new one from its start");
                                warned = false;
                                continue 'files;
                            }
                            std::thread::sleep(poll);
                        }
                        Ok(n) => {
                            if !send(data(&buf[..n], Some(id), &mut offset)) {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::error!(target: "gatewatch::serve", path = %path.display(), error = %e, "cannot read the input file; opening it again");
                            std::thread::sleep(poll);
                            continue 'files;
                        }
                    }
                }
            }
        }
    }
}

/// The simulator's events as NDJSON chunks (at most 64 KiB, or 50 ms of real time when
/// paced), then the end.
fn simulated(
    config: &gatewatch_sim::SimConfig,
    realtime: bool,
    send: &impl Fn(Chunk) -> bool,
    stop: &AtomicBool,
) {
    let events = gatewatch_sim::simulate(config);
    let first = events.first().map_or(0, |e| e.ts_ms);
    let start = Instant::now();
    let mut buf = String::with_capacity(CHUNK);
    let mut last_sent = Instant::now();
    let data = |buf: &mut String| Chunk::Data {
        bytes: std::mem::take(buf).into_bytes(),
        file: None,
        complete: None,
    };
    for e in &events {
        if stop.load(Ordering::Acquire) {
            return;
        }
        if realtime {
            let due = Duration::from_millis(u64::try_from(e.ts_ms - first).unwrap_or(0));
            let now = start.elapsed();
            if due > now {
                if !buf.is_empty() && !send(data(&mut buf)) {
                    return;
                }
                std::thread::sleep(due - now);
            }
        }
        gatewatch_event::write_ndjson(e, &mut buf);
        if buf.len() >= CHUNK || (realtime && last_sent.elapsed() >= Duration::from_millis(50)) {
            last_sent = Instant::now();
            if !send(data(&mut buf)) {
                return;
            }
        }
    }
    if !buf.is_empty() && !send(data(&mut buf)) {
        return;
    }
    send(Chunk::End);
}

/// A chunk read at `offset` of a file (`offset` moves past it).
fn data(bytes: &[u8], file: Option<(u64, u64)>, offset: &mut u64) -> Chunk {
    let start = *offset;
    *offset += bytes.len() as u64;
    let complete = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| start + i as u64 + 1);
    Chunk::Data {
        bytes: bytes.to_vec(),
        file,
        complete,
    }
}

fn read_to_end(
    r: &mut impl Read,
    id: Option<(u64, u64)>,
    mut offset: u64,
    send: &impl Fn(Chunk) -> bool,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        match r.read(&mut buf) {
            Ok(0) => {
                send(Chunk::End);
                return;
            }
            Ok(n) => {
                if !send(data(&buf[..n], id, &mut offset)) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                send(Chunk::Failed(format!("cannot read the input: {e}")));
                return;
            }
        }
    }
}

/// A running stream: its threads and how it ended.
pub struct Stream {
    stop: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<Result<()>>,
    ended: Arc<AtomicBool>,
    done: Arc<tokio::sync::Notify>,
}

impl Stream {
    /// Starts reading `opts.input` into the service; the input position saved with the
    /// state file (a followed file) is where reading starts again.
    pub fn start(service: Arc<Service>, opts: StreamOptions) -> Result<Self> {
        let start = match (&opts.input, &service.opts.state) {
            (Input::Follow(_), Some(state)) => {
                let p = position_path(state);
                match std::fs::read(&p) {
                    Ok(b) => match serde_json::from_slice::<InputPosition>(&b) {
                        Ok(pos) => Some(pos),
                        Err(e) => {
                            tracing::warn!(target: "gatewatch::serve", path = %p.display(), error = %e, "the saved input position is unreadable; reading the input from its start");
                            None
                        }
                    },
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let done = Arc::new(tokio::sync::Notify::new());
        // A bounded queue: a slow worker (or a sink that waits) holds the reader back.
        let (tx, rx) = sync_channel(8);
        {
            let (input, poll, stop) = (opts.input.clone(), opts.poll, stop.clone());
            std::thread::Builder::new()
                .name("gatewatch-input".into())
                .spawn(move || read_input(input, start, poll, tx, stop))
                .context("cannot start the input thread")?;
        }
        let worker = Worker {
            service: service.clone(),
            stop: stop.clone(),
            lines: LineReader::new(opts.format.clone()),
            scores: opts.scores.clone().map(|t| Sink::new("scores", t)),
            decisions: opts.decisions.clone().map(|t| Sink::new("decisions", t)),
            batch: Output::default(),
            text: String::new(),
            position: start,
            rejections: 0,
        };
        let every = service.opts.snapshot_every;
        let (idle, ends, note) = (opts.flush_every, ended.clone(), done.clone());
        let worker = std::thread::Builder::new()
            .name("gatewatch-stream".into())
            .spawn(move || {
                let r = worker.run(rx, idle, every, &ends);
                note.notify_one();
                r
            })
            .context("cannot start the stream thread")?;
        Ok(Self {
            stop,
            worker,
            ended,
            done,
        })
    }

    /// Resolves when the stream has stopped by itself (its input ended, or it failed).
    pub fn done(&self) -> Arc<tokio::sync::Notify> {
        self.done.clone()
    }

    /// Whether the input came to its end.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Stops reading, scores and delivers what was read, takes the last snapshot and waits
    /// for it.
    pub fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.worker.join() {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the stream thread panicked"),
        }
    }
}
