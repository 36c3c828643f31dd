//! Kafka in and out (feature `kafka`): events from an input topic read by a consumer
//! group, score records, decision changes and poison messages to their topics, at least
//! once.
//!
//! - **Input.** Each message is one NDJSON event or a batch of them (one per line). A line
//!   that is not an event is rejected with its partition and offset (counted by reason and
//!   logged); a message with such a line is copied whole to the dead-letter topic when one
//!   is configured (headers `gatewatch-reason`, `gatewatch-partition`, `gatewatch-offset`).
//!   Its offset is committed like any other: a poison message never blocks a partition.
//! - **Output.** One message per score record (key: the client) and per decision change
//!   (key: the decision's value). A failed delivery is sent again with backoff; the input
//!   waits meanwhile, nothing is dropped.
//! - **At least once.** `enable.auto.offset.store=false`: an input offset is stored only
//!   once every output for it has been delivered (the session's [`Ack`]). With a state file,
//!   offsets are committed with each snapshot (the state, its decisions, then
//!   `STATE.kafka.json` with the next offset of each partition the state covers), so a
//!   restart reads on exactly where the state ends; messages below those offsets, when the
//!   group's committed offsets lag behind them (a crash between the two), are skipped.
//!   Messages between a crash's last snapshot and the crash are read again: their records
//!   are written twice, and the events counted (`gatewatch_kafka_redelivered_total`, from
//!   the delivered offsets noted as batches are delivered: the deliveries of the last
//!   moments before the crash may be written twice uncounted).
//! - **Pipelined delivery.** A batch's records are produced while the next batches are
//!   scored; offsets move on once a batch and every batch before it are delivered; at most
//!   64 batches wait for delivery before the input waits. Without a state
//!   file, the delivered offsets are stored when the input is quiet and every snapshot
//!   interval, and committed every 5 s.
//! - **Rebalances.** Before partitions are revoked, everything read is scored, delivered,
//!   snapshotted and committed; newly assigned partitions are read from the group's
//!   committed offsets.
//!
//! - **Several instances** (`population` and `partitions`): each instance reads the input
//!   partitions it is given (assigned, not balanced by the group) and owns their clients;
//!   the instances share their population statistics on the population topic (one message
//!   per part and epoch, keyed by the part; `docs/POPULATION.md`), so that together they
//!   give every event the record one instance reading every partition gives it, as long as
//!   each client's events are in one partition. An instance whose partitions are all read
//!   up to now follows the event time of the others, so that partitions without traffic do
//!   not hold the others back.
//!
//! The consumer, the producer and the session run on one thread of their own.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gatewatch_event::ParseError;
use gatewatch_features::{Format, Line, MAX_LINE_BYTES, Share};
use gatewatch_pipeline::{Ack, Output, Position};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::{Service, lock, write_atomic};

/// Where the service reads and writes Kafka.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The consumer group (`group.id`).
    pub group: String,
    /// The input topic.
    pub input: String,
    /// The topic of score records.
    pub scores: Option<String>,
    /// The topic of decision changes.
    pub decisions: Option<String>,
    /// The topic poison messages are copied to.
    pub dead_letters: Option<String>,
    /// librdkafka properties for both clients (`consumer.NAME` or `producer.NAME` for one
    /// of them): security (`security.protocol`, `sasl.*`, `ssl.*`), timeouts, tuning.
    pub properties: Vec<(String, String)>,
    /// The line format of the events in a message.
    pub format: Format,
    /// The events held for reordering are scored at least this often (partitions still
    /// merged), and every queued event when no message has come for this long.
    pub flush_every: Duration,
    /// The topic on which instances share their population statistics (each instance
    /// reads the partitions in `partitions`).
    pub population: Option<String>,
    /// The input partitions this instance reads (assigned; `None`: those the consumer
    /// group gives it).
    pub partitions: Option<Vec<i32>>,
}

impl KafkaOptions {
    /// Defaults: group `gatewatch`, no output topics, NDJSON, flushed every 250 ms.
    pub fn new(brokers: &str, input: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            group: "gatewatch".to_string(),
            input: input.to_string(),
            scores: None,
            decisions: None,
            dead_letters: None,
            properties: Vec::new(),
            format: Format::Ndjson,
            flush_every: Duration::from_millis(250),
            population: None,
            partitions: None,
        }
    }

    /// The input in words.
    pub fn describe(&self) -> String {
        let parts = match &self.partitions {
            Some(p) => format!(
                ", partitions {}",
                p.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
            ),
            None => String::new(),
        };
        let shared = match &self.population {
            Some(t) => format!(", population shared on {t}"),
            None => String::new(),
        };
        format!(
            "Kafka topic {} at {} (group {}{parts}{shared})",
            self.input, self.brokers, self.group
        )
    }

    fn config(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            match k.split_once('.') {
                Some((r, rest)) if r == role => {
                    c.set(rest, v);
                }
                Some(("consumer" | "producer", _)) => {}
                _ => {
                    c.set(k, v);
                }
            }
        }
        c
    }
}

/// The offsets a snapshot covers: saved next to the state file as `STATE.kafka.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOffsets {
    /// The input topic.
    pub topic: String,
    /// Per partition, the next offset to read (every message below is in the state).
    pub next: BTreeMap<i32, i64>,
    /// Per partition, the events of message `next` already in the state (a message of
    /// several lines may be cut by a snapshot): skipped when it is read again.
    #[serde(default)]
    pub partial: BTreeMap<i32, u32>,
}

/// Where the covered offsets are saved next to a state file.
pub fn offsets_path(state: &Path) -> PathBuf {
    PathBuf::from(format!("{}.kafka.json", state.display()))
}

/// Where the delivered offsets are noted next to a state file (to count redeliveries).
fn delivered_path(state: &Path) -> PathBuf {
    PathBuf::from(format!("{}.kafka-delivered.json", state.display()))
}

/// An output message waiting for its delivery report (sent again when it failed).
struct Pending {
    /// The output batch it belongs to.
    batch: u64,
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Delivery reports of the producer.
#[derive(Default)]
struct Reports {
    /// The batch of each message delivered since the last look.
    delivered: Vec<u64>,
    failed: Vec<(Arc<Pending>, String)>,
}

struct ProducerCtx {
    reports: Mutex<Reports>,
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    // Shared with the record handed to the producer, which borrows its key and payload.
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Self::DeliveryOpaque) {
        let mut r = lock(&self.reports);
        match result {
            Ok(_) => r.delivered.push(pending.batch),
            Err((e, _)) => r.failed.push((pending, e.to_string())),
        }
    }
}

/// A message the consumer delivered, as the loop hands it to the driver (borrowed: only a
/// poison message is copied, for the dead-letter topic).
struct Input<'a> {
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
}

/// The session's side of the consumer: messages in, batches out, offsets stored.
struct Driver {
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
    opts: KafkaOptions,
    producer: Option<BaseProducer<ProducerCtx>>,
    batch: Output,
    text: String,
    /// Per assigned partition, its parsed inputs not yet pushed (in offset order) and
    /// whether the consumer has reached its end.
    queues: BTreeMap<i32, Queue>,
    /// Inputs held in `queues`.
    queued: usize,
    /// The inputs pushed into the session and not yet covered by a delivered batch, in
    /// push order.
    log: VecDeque<(i32, i64, u32)>,
    /// Per partition, the last input (offset, line of the message) out of the session.
    out: BTreeMap<i32, (i64, u32)>,
    /// Per partition, the lines of message `done` already out.
    partial: BTreeMap<i32, u32>,
    /// Per partition, the next offset whose outputs are all delivered.
    done: BTreeMap<i32, i64>,
    /// Per partition, the next offset the restored state covers (messages below are
    /// skipped).
    covered: SavedOffsets,
    /// Per partition, the next offset (and lines of it) delivered before the last stop
    /// (events below are read again: counted as redelivered).
    delivered_before: SavedOffsets,
    /// Poison messages waiting for the dead-letter topic.
    poison: Vec<Pending>,
    /// Output batches sent and not yet wholly delivered, oldest first.
    in_flight: VecDeque<Inflight>,
    /// The number of the next output batch.
    next_batch: u64,
    /// Entries popped from `log` so far (the absolute index of its front).
    log_base: u64,
    rejections: u64,
    /// The population topic, when this instance shares its statistics.
    population: Option<String>,
}

/// Delivery batch of the population shares (not an output batch: they acknowledge no
/// input).
const SHARE_BATCH: u64 = u64::MAX;

/// Events waiting in the session for the other instances' population statistics at most:
/// beyond it the input is paused.
const MAX_WAITING: usize = 200_000;

/// Inputs held for the event-time merge of the partitions, at most: beyond it the oldest
/// is pushed even when a partition has nothing buffered (its late events may then be
/// refused as late).
const MAX_QUEUED: usize = 200_000;

/// Output batches in flight at most before the input waits for their delivery.
const MAX_IN_FLIGHT: usize = 64;

/// An output batch sent: what its delivery acknowledges.
struct Inflight {
    batch: u64,
    /// The session's acknowledgement when it was taken.
    ack: Ack,
    /// The absolute index in `log` up to which it covers the inputs.
    upto: u64,
    /// Its messages not yet reported delivered.
    outstanding: usize,
}

/// The partition whose queued input goes into the session next: the oldest head, when every
/// assigned partition has an input queued or has been at its end for `idle` (or always,
/// with `force`, or while more than [`MAX_QUEUED`] are held); `None` when nothing may go.
/// A partition that has just reached its end still holds the others back for `idle`: the
/// end of a partition is often only a moment between two fetches of a live stream.
fn next_head(
    queues: &BTreeMap<i32, Queue>,
    queued: usize,
    force: bool,
    idle: Duration,
) -> Option<i32> {
    let mut best: Option<(i64, i32)> = None;
    let mut waiting = false;
    for (p, q) in queues {
        match q.items.front() {
            Some(x) => {
                if best.is_none_or(|(ts, _)| x.ts < ts) {
                    best = Some((x.ts, *p));
                }
            }
            None => waiting |= q.end_since.is_none_or(|t| t.elapsed() < idle),
        }
    }
    let (_, p) = best?;
    (!waiting || force || queued > MAX_QUEUED).then_some(p)
}

/// One partition's inputs waiting for the merge.
#[derive(Default)]
struct Queue {
    items: VecDeque<Parsed>,
    /// The consumer is at the partition's end (nothing more to wait for).
    at_end: bool,
    /// Since when it is.
    end_since: Option<Instant>,
}

impl Queue {
    /// The consumer reached the partition's end.
    fn end(&mut self) {
        if !self.at_end {
            self.at_end = true;
            self.end_since = Some(Instant::now());
        }
    }
}

/// One input line of a message, parsed.
struct Parsed {
    offset: i64,
    /// The line's index among the message's events.
    line: u32,
    /// Event time (inputs that are not events go first: `i64::MIN`).
    ts: i64,
    event: Result<gatewatch_event::RequestEvent, ParseError>,
}

impl Driver {
    /// A message from the consumer into the session.
    fn push(&mut self, m: Input<'_>) -> Result<()> {
        let (p, o) = (m.partition, m.offset);
        if self.covered.next.get(&p).is_some_and(|next| o < *next) {
            // Already in the restored state (the group's offsets lag behind the snapshot).
            self.service.metrics.kafka_skipped.inc();
            self.done
                .insert(p, (*self.done.get(&p).unwrap_or(&0)).max(o + 1));
            return Ok(());
        }
        self.service.metrics.kafka_messages.inc();
        let mut first_error: Option<String> = None;
        let mut parsed = Vec::new();
        let refuse = |reason: &str| ParseError {
            field: None,
            reason: reason.to_string(),
        };
        match m.payload {
            None | Some([]) => parsed.push(Err(refuse("empty message (no payload)"))),
            Some(payload) => {
                for raw in payload.split(|b| *b == b'\n') {
                    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                    if raw.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let line = if raw.len() > MAX_LINE_BYTES {
                        Line::TooLong
                    } else {
                        Line::Text(raw)
                    };
                    parsed.push(line.event(&self.opts.format));
                }
                if parsed.is_empty() {
                    parsed.push(Err(refuse("blank message (no event)")));
                }
            }
        }
        // Lines already in the restored state (a message cut by the snapshot).
        let skip = match (self.covered.next.get(&p), self.covered.partial.get(&p)) {
            (Some(next), Some(k)) if *next == o => *k as usize,
            _ => 0,
        };
        if skip > 0 {
            self.service.metrics.kafka_skipped.inc();
        }
        // Events whose records were delivered before the last stop are written again.
        let again = match self.delivered_before.next.get(&p) {
            Some(next) if o < *next => parsed.len(),
            Some(next) if o == *next => {
                self.delivered_before.partial.get(&p).copied().unwrap_or(0) as usize
            }
            _ => 0,
        };
        let again = again.min(parsed.len()).saturating_sub(skip);
        self.service.metrics.kafka_redelivered.inc_by(again as u64);
        let q = self.queues.entry(p).or_default();
        q.at_end = false;
        q.end_since = None;
        for (i, event) in parsed.into_iter().enumerate().skip(skip) {
            if let Err(e) = &event
                && first_error.is_none()
            {
                first_error = Some(format!("event {}: {e}", i + 1));
            }
            let ts = event.as_ref().map_or(i64::MIN, |e| e.ts_ms);
            q.items.push_back(Parsed {
                offset: o,
                line: u32::try_from(i).unwrap_or(u32::MAX),
                ts,
                event,
            });
            self.queued += 1;
        }
        if let (Some(reason), Some(topic)) = (first_error, &self.opts.dead_letters) {
            self.poison.push(Pending {
                batch: 0,
                topic: topic.clone(),
                key: m.key.unwrap_or_default().to_vec(),
                payload: m.payload.unwrap_or_default().to_vec(),
                headers: vec![
                    ("gatewatch-reason".into(), reason.into_bytes()),
                    (
                        "gatewatch-topic".into(),
                        self.opts.input.clone().into_bytes(),
                    ),
                    ("gatewatch-partition".into(), p.to_string().into_bytes()),
                    ("gatewatch-offset".into(), o.to_string().into_bytes()),
                ],
            });
        }
        self.release(false)?;
        Ok(())
    }

    /// Pushes queued inputs into the session in event-time order across partitions: the
    /// oldest head first, while every assigned partition has an input queued or is at its
    /// end (or always, with `force`, or while more than [`MAX_QUEUED`] are held).
    fn release(&mut self, force: bool) -> Result<()> {
        loop {
            let mut full = false;
            {
                let mut guard = self.service.session();
                let idle = self.opts.flush_every;
                while let Some(p) = next_head(&self.queues, self.queued, force, idle) {
                    if self.population.is_some() && guard.0.engine().pending() >= MAX_WAITING {
                        // Waiting for the other instances: the input is paused meanwhile.
                        break;
                    }
                    let x = self
                        .queues
                        .get_mut(&p)
                        .and_then(|q| q.items.pop_front())
                        .expect("the head just seen");
                    self.queued -= 1;
                    guard.0.push_parsed(Position::offset(p, x.offset), x.event);
                    self.log.push_back((p, x.offset, x.line));
                    if guard.0.is_full() {
                        full = true;
                        break;
                    }
                }
            }
            if !full {
                return Ok(());
            }
            self.drain(false)?;
        }
    }

    /// Takes the session's output (every buffered event first with `finish`), produces it
    /// and the poison messages, waits until all are delivered, then marks the messages the
    /// batch covers as done.
    fn drain(&mut self, finish: bool) -> Result<()> {
        // An instance sharing its statistics never ends its input: the end would close
        // every epoch for good.
        let finish = finish && self.population.is_none();
        let started = Instant::now();
        self.text.clear();
        let ack = {
            let mut guard = self.service.session();
            let text = self.opts.scores.is_some().then_some(&mut self.text);
            self.service
                .take(&mut guard, finish, &mut self.batch, text)?;
            guard.0.ack()
        };
        let upto = self.log_base + self.log.len() as u64;
        let batch = self.next_batch;
        self.next_batch += 1;
        self.in_flight.push_back(Inflight {
            batch,
            ack,
            upto,
            outstanding: 0,
        });
        crate::log_rejections(&self.batch, &mut self.rejections);
        // One message per score record (key: the client), per decision change (key: its
        // value).
        let message = |topic: &String, key: &[u8], payload: Vec<u8>| Pending {
            batch,
            topic: topic.clone(),
            key: key.to_vec(),
            payload,
            headers: Vec::new(),
        };
        let mut out = Vec::new();
        if let Some(topic) = &self.opts.scores {
            let lines = self.text.split_terminator('\n');
            out.extend(
                self.batch
                    .records()
                    .zip(lines)
                    .map(|(r, l)| message(topic, r.client.as_bytes(), l.as_bytes().to_vec())),
            );
        }
        if let Some(topic) = &self.opts.decisions {
            out.extend(self.batch.decisions().iter().map(|c| {
                let v = gatewatch_pipeline::schema::decision_json(c).to_string();
                message(topic, c.decision.value.as_bytes(), v.into_bytes())
            }));
        }
        for p in out {
            self.send(p)?;
        }
        for mut p in std::mem::take(&mut self.poison) {
            self.service.metrics.kafka_dead_letters.inc();
            p.batch = batch;
            self.send(p)?;
        }
        // Deliveries run on while the next batches are scored; the offsets move once a
        // batch and every one before it are delivered. At most MAX_IN_FLIGHT batches wait.
        self.settle(false)?;
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.settle(true)?;
        }
        if !self.batch.is_empty() {
            self.service
                .metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Sends the population shares the session wrote (one message each, keyed by its part).
    fn publish_shares(&mut self) -> Result<()> {
        if self.population.is_none() {
            return Ok(());
        }
        let shares = self.service.session().0.take_shares();
        let Some(topic) = self.population.clone().filter(|_| !shares.is_empty()) else {
            return Ok(());
        };
        for share in shares {
            self.service.metrics.population_shares_sent.inc();
            self.send(Pending {
                batch: SHARE_BATCH,
                topic: topic.clone(),
                key: share.part().to_string().into_bytes(),
                payload: share.to_bytes(),
                headers: Vec::new(),
            })?;
        }
        Ok(())
    }

    /// A message of the population topic: another instance's share (this instance's own,
    /// read back, are skipped).
    fn receive_share(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        let share = match Share::from_bytes(payload) {
            Ok(s) => s,
            Err(e) => {
                self.service.metrics.population_shares_refused.inc();
                tracing::warn!(target: "gatewatch::serve", partition, offset, error = %e, "population share refused");
                return;
            }
        };
        let mut guard = self.service.session();
        if guard.0.engine().owns(share.part()) {
            return;
        }
        match guard.0.receive_share(share) {
            Ok(()) => {
                self.service.metrics.population_shares_received.inc();
            }
            Err(e) => {
                self.service.metrics.population_shares_refused.inc();
                tracing::warn!(target: "gatewatch::serve", partition, offset, error = %e, "population share refused");
            }
        }
    }

    /// Sends what the other instances' shares released (the input may be quiet meanwhile).
    fn drain_released(&mut self) -> Result<()> {
        if self.population.is_some() && self.service.session().0.has_output() {
            self.drain(false)?;
        }
        Ok(())
    }

    /// Whether every input partition is read to its end and pushed into the session.
    fn caught_up(&self) -> bool {
        !self.queues.is_empty() && self.queues.values().all(|q| q.at_end && q.items.is_empty())
    }

    /// A turn with the population topic: the other instances' shares taken in (at most
    /// [`SHARES_PER_TURN`]; whether any came), event time following theirs once every
    /// input partition is read, and the input paused while too many events wait.
    fn share_turn(
        &mut self,
        shares: &BaseConsumer,
        consumer: &BaseConsumer<ConsumerCtx>,
        paused: &mut bool,
    ) -> bool {
        let mut came = false;
        for _ in 0..SHARES_PER_TURN {
            match shares.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    came = true;
                    self.receive_share(m.partition(), m.offset(), m.payload().unwrap_or_default());
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.service.metrics.kafka_errors.inc();
                    tracing::warn!(target: "gatewatch::serve", error = %e, "population topic error");
                    break;
                }
                None => break,
            }
        }
        let caught_up = self.caught_up();
        let waiting = {
            let mut guard = self.service.session();
            let t = guard.0.engine().remote_time();
            if caught_up && t != i64::MIN {
                guard.0.advance_time(t);
            }
            guard.0.engine().pending()
        };
        self.service.metrics.population_waiting.set(waiting as i64);
        let hold = waiting >= MAX_WAITING;
        if hold != *paused {
            let assigned = consumer.assignment().unwrap_or_default();
            let r = if hold {
                consumer.pause(&assigned)
            } else {
                consumer.resume(&assigned)
            };
            match r {
                Ok(()) => *paused = hold,
                Err(e) => {
                    tracing::warn!(target: "gatewatch::serve", error = %e, "cannot pause or resume the input")
                }
            }
        }
        came
    }

    /// Hands a message to the producer (waiting while its queue is full).
    fn send(&mut self, p: Pending) -> Result<()> {
        self.send_shared(Arc::new(p))
    }

    /// [`send`](Self::send) of a message the delivery report may hand back for a retry.
    fn send_shared(&mut self, p: Arc<Pending>) -> Result<()> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(p.headers.len());
            for (k, v) in &p.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            // librdkafka copies the key and payload: the borrows end with the call.
            let record = BaseRecord::with_opaque_to(&p.topic, Arc::clone(&p))
                .key(&p.key)
                .payload(&p.payload)
                .headers(headers);
            match producer.send(record) {
                Ok(()) => {
                    if let Some(b) = self.in_flight.iter_mut().rev().find(|b| b.batch == p.batch) {
                        b.outstanding += 1;
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    // Not sendable at all (too large, unknown topic): retried like a failed
                    // delivery, so that nothing is dropped.
                    self.sink_failure(&p.topic, &e.to_string());
                    if self.stop.load(Ordering::Acquire) {
                        anyhow::bail!("topic {}: {e}", p.topic);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    fn sink_failure(&self, topic: &str, error: &str) {
        self.service
            .metrics
            .sink_failures
            .get_or_create(&vec![("sink".to_string(), format!("kafka:{topic}"))])
            .inc();
        tracing::error!(target: "gatewatch::serve", topic, error, "cannot deliver; retrying (the input waits)");
    }

    /// Delivery reports so far: delivered ones counted off their batch; the failed ones.
    fn collect(&mut self) -> Vec<(Arc<Pending>, String)> {
        let Some(producer) = &self.producer else {
            return Vec::new();
        };
        let mut r = lock(&producer.context().reports);
        for batch in r.delivered.drain(..) {
            if let Some(b) = self.in_flight.iter_mut().find(|b| b.batch == batch) {
                b.outstanding = b.outstanding.saturating_sub(1);
            }
        }
        let failed = std::mem::take(&mut r.failed);
        drop(r);
        for (p, _) in &failed {
            if let Some(b) = self.in_flight.iter_mut().find(|b| b.batch == p.batch) {
                b.outstanding = b.outstanding.saturating_sub(1);
            }
        }
        failed
    }

    /// Takes the delivery reports (waiting up to 10 ms for some with `wait`): failed
    /// messages are sent again after a backoff (100 ms doubling to 5 s, the input waiting;
    /// given up only when the service stops), and the batches delivered in order move the
    /// offsets on.
    fn settle(&mut self, wait: bool) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(producer) = &self.producer {
                producer.poll(if wait {
                    Duration::from_millis(10)
                } else {
                    Duration::ZERO
                });
            }
            let failed = self.collect();
            if failed.is_empty() {
                break;
            }
            for (p, e) in &failed {
                self.sink_failure(&p.topic, e);
            }
            if self.stop.load(Ordering::Acquire) {
                anyhow::bail!("{} messages could not be delivered", failed.len());
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            for (p, _) in failed {
                self.send_shared(p)?;
            }
        }
        let mut moved = false;
        while self.in_flight.front().is_some_and(|b| b.outstanding == 0) {
            let b = self.in_flight.pop_front().expect("just seen");
            self.advance(b.ack, b.upto);
            moved = true;
        }
        if moved {
            self.note_delivered();
        }
        Ok(())
    }

    /// Waits until every batch sent is delivered.
    fn wait_delivered(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle(true)?;
        }
        self.note_delivered();
        Ok(())
    }

    /// The inputs a delivered batch covers (the first `upto` pushed, up to the session's
    /// first open input) are out; each partition is done up to its first input still
    /// queued or inside the session.
    fn advance(&mut self, ack: Ack, upto: u64) {
        while self.log_base < upto {
            let Some(&(p, o, l)) = self.log.front() else {
                break;
            };
            if let Ack::Before(Position::Offset { partition, offset }) = ack
                && (p, o) == (partition, offset)
            {
                break;
            }
            self.log.pop_front();
            self.log_base += 1;
            let out = self.out.entry(p).or_insert((o, l));
            *out = (*out).max((o, l));
        }
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, o, _) in &self.log {
            first.entry(*p).or_insert(*o);
        }
        for (p, q) in &self.queues {
            if let Some(x) = q.items.front() {
                let f = first.entry(*p).or_insert(x.offset);
                *f = (*f).min(x.offset);
            }
        }
        for (p, (o, l)) in &self.out {
            // A message whose first lines are out and later ones are not is not done: it
            // is read again, its first lines skipped when the state has them.
            let (next, partial) = match first.get(p) {
                Some(f) if f == o => (*o, l + 1),
                _ => (o + 1, 0),
            };
            let d = self.done.entry(*p).or_insert(next);
            if next >= *d {
                *d = next;
                self.partial.insert(*p, partial);
            }
        }
    }

    /// Stores the done offsets (committed by the consumer's auto-commit, or at once with
    /// `commit`).
    fn store(&self, consumer: &BaseConsumer<ConsumerCtx>, commit: bool) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        // Only partitions assigned now (a revoked one's inputs may still come out).
        for (p, next) in self
            .done
            .iter()
            .filter(|(p, _)| self.queues.contains_key(p))
        {
            tpl.add_partition_offset(&self.opts.input, *p, Offset::Offset(*next))
                .context("an offset")?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        consumer.store_offsets(&tpl).context("storing offsets")?;
        if commit {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .context("committing offsets")?;
        }
        Ok(())
    }

    /// What the session has released is delivered; with a state file the state (without
    /// the events still held for ordering: they are read again after a restart), its
    /// decisions and the offsets it covers are saved; then the offsets are committed.
    fn snapshot(&mut self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<()> {
        self.drain(false)?;
        self.wait_delivered()?;
        // The shares a state has written are delivered before it is saved: a restarted
        // instance writes only those after its state.
        self.publish_shares()?;
        if self.population.is_some()
            && let Some(p) = &self.producer
        {
            p.flush(Duration::from_secs(30))
                .context("delivering the population shares")?;
            self.settle(false)?;
        }
        if let Some(state) = self.service.opts.state.clone() {
            self.service.snapshot_state(false)?;
            let saved = SavedOffsets {
                topic: self.opts.input.clone(),
                next: self.done.clone(),
                partial: self.partial.clone(),
            };
            write_atomic(&offsets_path(&state), |w| {
                serde_json::to_writer(w, &saved).context("the offsets")
            })?;
        }
        self.store(consumer, true)?;
        Ok(())
    }

    /// Notes the delivered offsets (after delivered batches).
    fn note_delivered(&mut self) {
        let Some(state) = &self.service.opts.state else {
            return;
        };
        let noted = SavedOffsets {
            topic: self.opts.input.clone(),
            next: self.done.clone(),
            partial: self.partial.clone(),
        };
        let r = write_atomic(&delivered_path(state), |w| {
            serde_json::to_writer(w, &noted).context("the delivered offsets")
        });
        if let Err(e) = r {
            tracing::warn!(target: "gatewatch::serve", error = %format!("{e:#}"), "cannot note the delivered offsets");
        }
    }

    /// Partitions revoked: everything read is delivered, snapshotted and committed; they
    /// are forgotten.
    fn revoke(&mut self, consumer: &BaseConsumer<ConsumerCtx>, revoked: &[i32]) {
        if let Err(e) = self.snapshot(consumer) {
            tracing::error!(target: "gatewatch::serve", error = %format!("{e:#}"), "could not hand over the revoked partitions cleanly; their new owner reads again from the last commit");
        }
        for p in revoked {
            self.queues.remove(p);
            self.out.remove(p);
            self.done.remove(p);
            self.covered.next.remove(p);
            self.covered.partial.remove(p);
            self.partial.remove(p);
            self.service
                .metrics
                .kafka_lag
                .remove(&vec![("partition".to_string(), p.to_string())]);
        }
    }
}

/// The consumer's context: rebalances reach the driver.
struct ConsumerCtx {
    driver: Mutex<Option<Driver>>,
}

impl ClientContext for ConsumerCtx {
    /// librdkafka's statistics (every `statistics.interval.ms`, served by the consumer's
    /// poll): the consumer lag of each assigned partition of the input topic.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let guard = lock(&self.driver);
        let Some(d) = guard.as_ref() else {
            return;
        };
        let Some(topic) = statistics.topics.get(&d.opts.input) else {
            return;
        };
        for (p, part) in &topic.partitions {
            if *p >= 0 && part.consumer_lag >= 0 && d.queues.contains_key(p) {
                d.service
                    .metrics
                    .kafka_lag
                    .get_or_create(&vec![("partition".to_string(), p.to_string())])
                    .set(part.consumer_lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news for the merge, not an error.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        tracing::error!(target: "gatewatch::serve", error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(target: "gatewatch::serve", partitions = ?parts, "partitions revoked");
                if let Some(d) = lock(&self.driver).as_mut() {
                    d.revoke(consumer, &parts);
                    d.service.metrics.kafka_rebalances.inc();
                }
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(target: "gatewatch::serve", partitions = ?parts, "partitions assigned");
                if let Some(d) = lock(&self.driver).as_mut() {
                    for p in &parts {
                        d.queues.entry(*p).or_default();
                    }
                    d.service.metrics.kafka_rebalances.inc();
                    d.service
                        .metrics
                        .kafka_partitions
                        .set(d.queues.len() as i64);
                }
            }
            Rebalance::Error(e) => {
                tracing::error!(target: "gatewatch::serve", error = %e, "rebalance error");
            }
        }
    }
}

/// Sets `key` unless the user's properties did.
fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

fn read_offsets(path: &Path, topic: &str) -> SavedOffsets {
    let none = SavedOffsets {
        topic: topic.to_string(),
        ..SavedOffsets::default()
    };
    match std::fs::read(path) {
        Ok(b) => match serde_json::from_slice::<SavedOffsets>(&b) {
            Ok(s) if s.topic == topic => s,
            Ok(s) => {
                tracing::warn!(target: "gatewatch::serve", path = %path.display(), saved = %s.topic, topic, "offsets of another topic; ignored");
                none
            }
            Err(e) => {
                tracing::warn!(target: "gatewatch::serve", path = %path.display(), error = %e, "unreadable offsets; ignored");
                none
            }
        },
        Err(_) => none,
    }
}

/// A running Kafka stream.
pub struct KafkaStream {
    stop: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<Result<()>>,
    done: Arc<tokio::sync::Notify>,
}

impl KafkaStream {
    /// Connects (the input topic must exist), subscribes and starts consuming on a thread
    /// of its own.
    pub fn start(service: Arc<Service>, opts: KafkaOptions) -> Result<Self> {
        let mut cc = opts.config("consumer");
        cc.set("group.id", &opts.group)
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true");
        for (k, v) in [
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "5000"),
            ("auto.offset.reset", "earliest"),
            // The partitions are merged in event time: a partition with nothing new must
            // answer soon, or the others wait for its fetch (librdkafka's default is 500 ms).
            ("fetch.wait.max.ms", "20"),
            // The consumer lag per partition comes with librdkafka's statistics.
            ("statistics.interval.ms", "5000"),
        ] {
            set_default(&mut cc, k, v);
        }
        let needs_producer = opts.scores.is_some()
            || opts.decisions.is_some()
            || opts.dead_letters.is_some()
            || opts.population.is_some();
        let producer = if needs_producer {
            let mut pc = opts.config("producer");
            set_default(&mut pc, "linger.ms", "5");
            set_default(&mut pc, "enable.idempotence", "true");
            let p: BaseProducer<ProducerCtx> = pc
                .create_with_context(ProducerCtx {
                    reports: Mutex::default(),
                })
                .context("cannot create the Kafka producer")?;
            Some(p)
        } else {
            None
        };
        let (covered, delivered_before) = match &service.opts.state {
            Some(state) => (
                read_offsets(&offsets_path(state), &opts.input),
                read_offsets(&delivered_path(state), &opts.input),
            ),
            None => (SavedOffsets::default(), SavedOffsets::default()),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            service: service.clone(),
            stop: stop.clone(),
            opts: opts.clone(),
            producer,
            batch: Output::default(),
            text: String::new(),
            queues: BTreeMap::new(),
            queued: 0,
            log: VecDeque::new(),
            out: BTreeMap::new(),
            partial: covered.partial.clone(),
            done: covered.next.clone(),
            covered,
            delivered_before,
            poison: Vec::new(),
            in_flight: VecDeque::new(),
            next_batch: 0,
            log_base: 0,
            rejections: 0,
            population: opts.population.clone(),
        };
        let consumer: BaseConsumer<ConsumerCtx> = cc
            .create_with_context(ConsumerCtx {
                driver: Mutex::new(Some(driver)),
            })
            .context("cannot create the Kafka consumer")?;
        let n_partitions = partitions_of(&consumer, &opts.input, "input", &opts.brokers)?;
        let shares = match &opts.population {
            Some(topic) => {
                let Some(own) = &opts.partitions else {
                    anyhow::bail!(
                        "sharing population statistics on {topic} needs the input partitions \
                         this instance reads (--kafka-partitions): partitions balanced by the \
                         consumer group are not handed over between instances yet"
                    );
                };
                let own: Vec<u32> = own.iter().map(|p| *p as u32).collect();
                service
                    .session()
                    .0
                    .share_population(n_partitions as u32, &own)
                    .context("sharing population statistics")?;
                Some(population_consumer(&opts, topic)?)
            }
            None => None,
        };
        match &opts.partitions {
            Some(own) => {
                let mut tpl = TopicPartitionList::new();
                for p in own {
                    if *p < 0 || *p as usize >= n_partitions {
                        anyhow::bail!(
                            "partition {p} of {}: the topic has partitions 0 to {}",
                            opts.input,
                            n_partitions - 1
                        );
                    }
                    tpl.add_partition_offset(&opts.input, *p, Offset::Stored)
                        .context("a partition")?;
                }
                consumer
                    .assign(&tpl)
                    .with_context(|| format!("cannot read the partitions of {}", opts.input))?;
                if let Some(d) = lock(&consumer.context().driver).as_mut() {
                    for p in own {
                        d.queues.entry(*p).or_default();
                    }
                    d.service.metrics.kafka_partitions.set(own.len() as i64);
                }
            }
            None => consumer
                .subscribe(&[&opts.input])
                .with_context(|| format!("cannot subscribe to {}", opts.input))?,
        }
        let done = Arc::new(tokio::sync::Notify::new());
        let every = service.opts.snapshot_every;
        let (note, stopping, idle) = (done.clone(), stop.clone(), opts.flush_every);
        let worker = std::thread::Builder::new()
            .name("gatewatch-kafka".into())
            .spawn(move || {
                let r = run(&consumer, shares.as_ref(), &stopping, idle, every);
                note.notify_one();
                r
            })
            .context("cannot start the Kafka thread")?;
        Ok(Self { stop, worker, done })
    }

    /// Resolves when the stream has stopped by itself (it failed).
    pub fn done(&self) -> Arc<tokio::sync::Notify> {
        self.done.clone()
    }

    /// Stops consuming, delivers what was read, takes the last snapshot, commits.
    pub fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.worker.join() {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the Kafka thread panicked"),
        }
    }
}

/// The reader of the population topic: every partition from the start (shares already
/// known are ignored), no group offsets.
fn population_consumer(opts: &KafkaOptions, topic: &str) -> Result<BaseConsumer> {
    let mut cc = opts.config("consumer");
    cc.set("group.id", format!("{}-population", opts.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    set_default(&mut cc, "fetch.wait.max.ms", "20");
    let c: BaseConsumer = cc
        .create()
        .context("cannot create the population topic's reader")?;
    let n = partitions_of(&c, topic, "population", &opts.brokers)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .context("a partition")?;
    }
    c.assign(&tpl)
        .with_context(|| format!("cannot read {topic}"))?;
    Ok(c)
}

/// The number of partitions of `topic` (the `what` topic), which must exist.
fn partitions_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    what: &str,
    brokers: &str,
) -> Result<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("cannot reach the Kafka brokers {brokers}"))?;
    let n = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if n == 0 {
        anyhow::bail!("the {what} topic {topic} does not exist at {brokers}");
    }
    Ok(n)
}

/// Shares read from the population topic per turn of the loop, at most.
const SHARES_PER_TURN: usize = 1024;

/// The consumer loop.
fn run(
    consumer: &BaseConsumer<ConsumerCtx>,
    shares: Option<&BaseConsumer>,
    stop: &AtomicBool,
    idle: Duration,
    every: Duration,
) -> Result<()> {
    let ctx = consumer.context();
    let mut quiet_since = Instant::now();
    let mut quiet = true;
    let mut last_flush = Instant::now();
    let mut last_snapshot = Instant::now();
    let mut paused = false;
    let mut waiting_for_shares = false;
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        // While events wait for the other instances' shares, the population topic is looked
        // at every 2 ms rather than after a 50 ms wait for input.
        let polled = consumer.poll(Duration::from_millis(if waiting_for_shares {
            2
        } else {
            50
        }));
        let mut guard = lock(&ctx.driver);
        let Some(d) = guard.as_mut() else {
            break Ok(());
        };
        // Records the other instances' shares or the followed event time release are sent
        // when the input is quiet or a share came (a message's own go out in batches).
        let mut release_turn = polled.is_none();
        let step = match polled {
            Some(Ok(m)) => {
                let input = Input {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key(),
                    payload: m.payload(),
                };
                quiet = false;
                quiet_since = Instant::now();
                d.push(input).and_then(|()| {
                    // What the session holds for reordering, at least every `idle` (the
                    // partitions' merge queues keep their order).
                    if last_flush.elapsed() >= idle {
                        last_flush = Instant::now();
                        d.drain(true)
                    } else {
                        Ok(())
                    }
                })
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                d.queues.entry(p).or_default().end();
                d.release(false)
            }
            Some(Err(e)) => {
                d.service.metrics.kafka_errors.inc();
                tracing::warn!(target: "gatewatch::serve", error = %e, "Kafka consumer error");
                Ok(())
            }
            None => {
                if !quiet && quiet_since.elapsed() >= idle {
                    quiet = true;
                    last_flush = Instant::now();
                    d.release(true).and_then(|()| d.drain(true)).and_then(|()| {
                        if d.service.opts.state.is_none() {
                            d.store(consumer, false)?;
                        }
                        Ok(())
                    })
                } else {
                    Ok(())
                }
            }
        };
        // The other instances' population statistics; this one's, as they become final.
        if let Some(sc) = shares {
            release_turn |= d.share_turn(sc, consumer, &mut paused);
            waiting_for_shares = d.service.session().0.engine().waits_for_shares();
        }
        // Delivery reports as they come: offsets move on without waiting for the next batch.
        if let Err(e) = step
            .and_then(|()| {
                if release_turn {
                    d.drain_released()
                } else {
                    Ok(())
                }
            })
            .and_then(|()| d.publish_shares())
            .and_then(|()| d.settle(false))
        {
            break Err(e);
        }
        if d.service.opts.state.is_none() && !d.done.is_empty() && last_snapshot.elapsed() >= every
        {
            last_snapshot = Instant::now();
            if let Err(e) = d.store(consumer, false) {
                tracing::warn!(target: "gatewatch::serve", error = %format!("{e:#}"), "cannot store offsets");
            }
        }
        if d.service.opts.state.is_some() && last_snapshot.elapsed() >= every {
            last_snapshot = Instant::now();
            if let Err(e) = d.snapshot(consumer) {
                tracing::error!(target: "gatewatch::serve", error = %format!("{e:#}"), "snapshot failed");
            }
        }
    };
    // The last snapshot; then the driver goes (the revocation on close finds nothing).
    let last = match lock(&ctx.driver).take() {
        Some(mut d) => d.snapshot(consumer),
        None => Ok(()),
    };
    consumer.unsubscribe();
    result.and(last)
}
