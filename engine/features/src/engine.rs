//! The feature engine: event → client key and endpoint → ordered, point-in-time features.

use std::collections::VecDeque;
use std::io::{Read, Write};

use gatewatch_event::{ClientKeyExtractor, Endpoint, EndpointNormalizer, KeyKind, RequestEvent};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::levels::{address_key, network_key};
use crate::population::{Delta, Ep, Population, START, epoch_of};
use crate::registry::{PointFeature, Registry};
use crate::share::{Exchange, Share};
use crate::sketch::{fnv1a, part_of};
use crate::state::{ClientState, Obs, RequestKind, Windows};
use crate::store::{ClientStore, Evictions};

/// One event with its features, handed to the caller's sink.
#[derive(Debug)]
pub struct Record<'a> {
    /// The event.
    pub event: &'a RequestEvent,
    /// Input line (or sequence) number the caller gave with the event.
    pub line: u64,
    /// Client key with its kind (`ip:203.0.113.7`).
    pub client: &'a str,
    /// The kind of the key.
    pub client_kind: KeyKind,
    /// Endpoint template.
    pub endpoint: &'a str,
    /// Feature values in registry order.
    pub features: &'a [f64],
}

/// Why the engine refused an event: it came too late, or too far ahead of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedKind {
    /// Later than the allowed lateness behind the newest event time.
    Late {
        /// How far behind the newest event time it was (ms).
        behind_ms: i64,
    },
    /// More than `max_future_ms` ahead of event time, and the events after it did not follow
    /// it there.
    Future {
        /// How far ahead of event time it was (ms).
        ahead_ms: i64,
    },
    /// Given for a part this engine does not own (an engine that shares its population
    /// statistics processes only its own parts' events).
    Foreign {
        /// The part it was given for.
        part: u32,
    },
}

/// An event the engine did not process, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateEvent {
    /// Its line number.
    pub line: u64,
    /// Its timestamp.
    pub ts_ms: i64,
    /// Why.
    pub kind: RefusedKind,
}

impl LateEvent {
    /// Whether it was refused for being ahead of event time.
    pub fn is_future(&self) -> bool {
        matches!(self.kind, RefusedKind::Future { .. })
    }
}

impl std::fmt::Display for LateEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::fmt::Display for RefusedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RefusedKind::Late { behind_ms } => write!(
                f,
                "event {behind_ms} ms behind the newest event, beyond the allowed lateness"
            ),
            RefusedKind::Future { ahead_ms } => write!(
                f,
                "event {ahead_ms} ms ahead of event time, beyond max_future_ms, and the events \
                 after it did not follow"
            ),
            RefusedKind::Foreign { part } => {
                write!(f, "event for part {part}, which this engine does not own")
            }
        }
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events given to the engine.
    pub events_in: u64,
    /// Events with features emitted.
    pub events_out: u64,
    /// Events later than the allowed lateness (not processed).
    pub late: u64,
    /// Events too far ahead of event time that the events after them did not confirm (not
    /// processed).
    #[serde(default)]
    pub future: u64,
    /// Emitted events per client-key kind (jwt, header, cookie, session, ip).
    pub keys_by_kind: [u64; 5],
    /// Bearer tokens that were not readable JWTs.
    pub malformed_jwt: u64,
}

struct Pending {
    ts: i64,
    line: u64,
    /// The part it was given for ([`BY_KEY`]: the part of its client key).
    part: u32,
    event: RequestEvent,
}

/// An event whose part is that of its client key.
const BY_KEY: u32 = u32::MAX;

/// One part of the clients: their states and their contributions to the current epoch's
/// population statistics.
struct Part {
    store: ClientStore,
    delta: Delta,
}

/// Computes point-in-time features for a stream of events.
///
/// Events go in with [`push`](Self::push) in arrival order; they come out, with features, in
/// event-time order (ties in arrival order) once the watermark (newest timestamp seen minus
/// the allowed lateness) has passed them, and all at [`finish`](Self::finish). The output
/// depends only on the sequence of events, not on how it was split into calls, nor on how
/// many parts the clients are split into ([`with_parts`](Self::with_parts)): population
/// statistics advance in epochs merged from every part (see [`Population`]).
pub struct FeatureEngine {
    registry: Registry,
    windows: Windows,
    lateness_ms: i64,
    endpoints: EndpointNormalizer,
    parts: Vec<Part>,
    /// `max_clients`: the cap of all parts together (each has its share, rounded up).
    max_clients: usize,
    /// Released events waiting for the next parallel batch.
    ready: Vec<Pending>,
    /// One key extractor per thread (one: events are processed as they are released; more:
    /// in parallel batches by `flush`).
    key_workers: Vec<ClientKeyExtractor>,
    /// The key and endpoint of the event processed now (one thread).
    prep: Prep,
    prepared: Vec<Prep>,
    /// Per-part feature rows of the current parallel batch.
    rows: Vec<Vec<f64>>,
    population: Population,
    /// The population epoch open now (`i64::MIN` before the first event).
    epoch: i64,
    /// Events not yet released, sorted by (timestamp, arrival).
    pending: VecDeque<Pending>,
    max_ts: i64,
    /// How far (ms) one event may move event time ahead on its own.
    max_future_ms: i64,
    /// Consecutive events that confirm a jump of event time.
    future_confirm: usize,
    /// Events ahead of event time, held until the events after them confirm the jump
    /// (arrival order; at most `future_confirm - 1`).
    ahead: Vec<Pending>,
    stats: Stats,
    /// The full feature vector of the event processed now (one thread).
    full: Vec<f64>,
    /// Its selected features, with a selection.
    buf: Vec<f64>,
    /// With population statistics shared with other engines: what is known of every part.
    exchange: Option<Box<Exchange>>,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"GWSTATE\0";
/// Version of the snapshot format: 2 adds the body's length and CRC-32 and the window shape;
/// 5 appends what an engine sharing its population statistics keeps (version 4 is read too).
pub const SNAPSHOT_VERSION: u16 = 5;
/// The oldest snapshot format this build reads.
const SNAPSHOT_OLDEST: u16 = 4;
/// Bytes before the body: magic, version, body length (u64), CRC-32 of the body (u32).
const SNAPSHOT_HEADER: usize = 8 + 2 + 8 + 4;

/// The window shape a state was built with (beyond the feature-set hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Shape {
    horizons_secs: Vec<u32>,
    buckets_per_horizon: u32,
    endpoint_slots: usize,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    registry_hash: String,
    shape: Shape,
    max_ts: i64,
    stats: Stats,
    evictions: Evictions,
    created: u64,
    population: Population,
    epoch: i64,
    delta: Delta,
    clients: Vec<(Box<str>, ClientState)>,
}

/// What a snapshot holds after the format-4 body: a sharing engine's view of every part
/// (its shares not taken yet are written again after a restore: the receivers ignore those
/// they have), and the part of each client, in the order of the snapshot's clients.
#[derive(Default, Serialize, Deserialize)]
struct Extension {
    shared: Option<Exchange>,
    client_parts: Vec<u32>,
}

/// How restored clients and contributions are laid out over the parts.
enum Layout {
    /// One whole state: clients by the part of their key, contributions into part 0.
    ByKey,
    /// One snapshot per part.
    PerPart,
    /// A sharing engine's state: `n` parts, each client in its given part, contributions
    /// into part `delta_part`.
    Given {
        n: usize,
        parts: Vec<u32>,
        delta_part: usize,
    },
}

/// Writes a snapshot in the versioned binary format.
fn write_snapshot(snap: &Snapshot, ext: &Extension, w: &mut impl Write) -> Result<()> {
    let mut body = postcard::to_stdvec(snap).map_err(|e| Error::Snapshot(e.to_string()))?;
    body.extend(postcard::to_stdvec(ext).map_err(|e| Error::Snapshot(e.to_string()))?);
    w.write_all(SNAPSHOT_MAGIC)?;
    w.write_all(&SNAPSHOT_VERSION.to_le_bytes())?;
    w.write_all(&(body.len() as u64).to_le_bytes())?;
    w.write_all(&crc32fast::hash(&body).to_le_bytes())?;
    w.write_all(&body)?;
    Ok(())
}

/// Events a threaded engine processes together.
const BATCH: usize = 16_384;

/// An event's client key and endpoint, worked out before its part processes it.
struct Prep {
    key: String,
    kind: KeyKind,
    endpoint: Endpoint,
    hash: u64,
    part: u32,
}

impl Default for Prep {
    fn default() -> Self {
        Self {
            key: String::with_capacity(64),
            kind: KeyKind::Ip,
            endpoint: Endpoint::default(),
            hash: 0,
            part: 0,
        }
    }
}

impl Prep {
    /// The event's client key, endpoint template and its hash, and the part it belongs
    /// to: `given`, or the part of its key among `parts` ([`BY_KEY`]).
    fn fill(
        &mut self,
        keys: &mut ClientKeyExtractor,
        endpoints: &EndpointNormalizer,
        ev: &RequestEvent,
        parts: u32,
        given: u32,
    ) {
        self.kind = keys.key_into(ev, &mut self.key);
        endpoints.normalize_into(ev, &mut self.endpoint);
        self.hash = fnv1a(self.endpoint.template.as_bytes());
        self.part = if given != BY_KEY {
            given
        } else if parts == 1 {
            0
        } else {
            part_of(&self.key, parts)
        };
    }
}

/// One request's features: the client's windows in its part, the population features from
/// the merged statistics, and the part's contributions to the open epoch.
#[allow(clippy::too_many_arguments)]
fn compute(
    part: &mut Part,
    pop: &Population,
    windows: &Windows,
    registry: &Registry,
    ev: &RequestEvent,
    key: &str,
    endpoint: &Endpoint,
    ep_hash: u64,
    epoch: i64,
    out: &mut [f64],
) {
    let ep = pop.lookup(ep_hash, &endpoint.template);
    let to = match ep {
        Ep::Known(i) => i,
        Ep::New(..) => 0,
    };
    let (id_hash, num_id) = match endpoint.ids.last() {
        Some(id) => (
            Some(fnv1a(id.value.as_bytes()) ^ ep_hash.rotate_left(17)),
            id.as_u64(),
        ),
        None => (None, None),
    };
    part.store.expire(ev.ts_ms);
    let state = part.store.get_or_insert(key, ev.ts_ms);
    let from = state.prev_ep.map_or(START, |h| pop.index_of(h));
    let surprise = pop.surprise(from, to);
    let obs = Obs {
        ts: ev.ts_ms,
        ep_hash,
        status: ev.status,
        bytes: ev.bytes(),
        id_hash,
        num_id,
        surprise,
        kind: RequestKind {
            night: windows.is_night(ev.ts_ms),
            ..RequestKind::of(&ev.method, &ev.path, ev.header("referer").is_some())
        },
    };
    let (count, repeat) = state.update(&obs, windows, registry, out);
    part.delta.count(pop, from, to, ep, count, repeat);
    let address = address_key(ev.client_ip);
    let network = network_key(ev.client_ip, ev.asn.as_deref(), pop.network);
    part.delta.levels.count(
        &pop.levels,
        address,
        network,
        fnv1a(key.as_bytes()),
        matches!(ev.status, 401 | 403),
    );
    let (a, n) = (
        pop.levels.addresses.view(address, epoch),
        pop.levels.networks.view(network, epoch),
    );
    for (f, v) in [
        (PointFeature::AddrClients, a.members),
        (PointFeature::AddrRequests, a.requests),
        (PointFeature::AddrAuthFailures, a.failures),
        (PointFeature::NetAddrs, n.members),
        (PointFeature::NetRequests, n.requests),
        (PointFeature::NetAuthFailures, n.failures),
    ] {
        out[registry.point_index(f)] = f64::from(v);
    }
    out[registry.point_index(PointFeature::TransitionSurprise)] = surprise;
    out[registry.point_index(PointFeature::EndpointRateRatio)] = pop.rate_ratio(to, count);
    out[registry.point_index(PointFeature::EndpointPopRate)] =
        f64::from(pop.recent_requests(to, epoch)) / 60.0;
}

impl FeatureEngine {
    /// An engine for a configuration (validated here).
    pub fn new(cfg: &Config) -> Result<Self> {
        Self::with_parts(cfg, 1)
    }

    /// An engine whose clients are split into `parts` parts by Kafka's partitioner on the
    /// client key (as the service's instances own them). Its output is the same for every
    /// number of parts while no part evicts a client for capacity (each part holds its share
    /// of `max_clients`, rounded up).
    pub fn with_parts(cfg: &Config, parts: u32) -> Result<Self> {
        Self::build(cfg, parts, 1)
    }

    /// An engine that uses `threads` cores: its clients are split into as many parts, each
    /// processed on its own thread, in batches of released events (so records come out in
    /// bursts; [`flush`](Self::flush) forces one). Same output as one thread.
    pub fn with_threads(cfg: &Config, threads: usize) -> Result<Self> {
        let t = threads.clamp(1, 256);
        Self::build(cfg, t as u32, t)
    }

    fn build(cfg: &Config, parts: u32, threads: usize) -> Result<Self> {
        cfg.features.validate()?;
        let keys = ClientKeyExtractor::new(&cfg.client_key)?;
        let registry = Registry::new(&cfg.features);
        let n = registry.len();
        Ok(Self {
            windows: Windows::new(&cfg.features),
            lateness_ms: i64::try_from(cfg.features.allowed_lateness_ms).unwrap_or(i64::MAX),
            key_workers: vec![keys; threads.max(1)],
            prep: Prep::default(),
            max_clients: cfg.features.max_clients,
            ready: Vec::new(),
            prepared: Vec::new(),
            rows: vec![Vec::new(); parts.max(1) as usize],
            endpoints: EndpointNormalizer::new(&cfg.endpoints)?,
            parts: (0..parts.max(1))
                .map(|_| Part {
                    store: ClientStore::new(
                        cfg.features.max_clients.div_ceil(parts.max(1) as usize),
                        cfg.features.idle_ttl_ms(),
                    ),
                    delta: Delta::default(),
                })
                .collect(),
            population: Population::new(
                cfg.features.max_endpoints,
                cfg.features.max_addresses,
                cfg.features.network_rule(),
            ),
            epoch: i64::MIN,
            pending: VecDeque::new(),
            max_ts: i64::MIN,
            max_future_ms: i64::try_from(cfg.features.max_future_ms).unwrap_or(i64::MAX),
            future_confirm: cfg.features.future_confirm,
            ahead: Vec::new(),
            stats: Stats::default(),
            full: vec![0.0; registry.full_len()],
            buf: vec![0.0; n],
            registry,
            exchange: None,
        })
    }

    /// The feature registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Run counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.malformed_jwt = self.key_workers.iter().map(|k| k.malformed_jwt).sum();
        s
    }

    /// The client store (of the first part).
    pub fn store(&self) -> &ClientStore {
        &self.parts[0].store
    }

    /// The number of parts.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Clients tracked in all parts.
    pub fn clients(&self) -> usize {
        self.parts.iter().map(|p| p.store.len()).sum()
    }

    /// The cap on clients of all parts together.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Clients created so far, in all parts.
    pub fn created(&self) -> u64 {
        self.parts.iter().map(|p| p.store.created).sum()
    }

    /// Clients evicted so far, in all parts.
    pub fn evictions(&self) -> Evictions {
        let mut e = Evictions::default();
        for p in &self.parts {
            e.idle += p.store.evictions.idle;
            e.capacity += p.store.evictions.capacity;
        }
        e
    }

    /// The population statistics (as of the last merged epoch).
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// Events waiting in the reorder buffer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds an event; emits every event the watermark has passed. An event later than the
    /// allowed lateness is refused (and counted).
    ///
    /// Event time is guarded against single wild timestamps: an event more than
    /// `max_future_ms` ahead of the newest event time is held, not processed, until
    /// `future_confirm` consecutive arrivals (it included) agree with it — each at most the
    /// allowed lateness behind the newest of them. Then event time jumps and the held events
    /// are processed in arrival order, so a log that resumes after a gap loses nothing. An
    /// arrival that fits the old event time instead refuses the held events as "future" and
    /// goes on as usual. Refused events go to `refused` (the one pushed now or the held ones).
    /// The first events anchor event time the same way: they are held until `future_confirm`
    /// of them agree; meanwhile an event behind them by more than the lateness is late, and
    /// one behind them by more than `max_future_ms` refuses them instead.
    pub fn push(
        &mut self,
        event: RequestEvent,
        line: u64,
        sink: &mut impl FnMut(&Record<'_>),
        refused: &mut impl FnMut(LateEvent),
    ) {
        self.push_pending(event, line, BY_KEY, sink, refused);
    }

    /// [`push`](Self::push) for an engine that shares its population statistics
    /// ([`share_population`](Self::share_population)): the event belongs to part `part`
    /// (the service's Kafka partition), which must be one of this engine's own. An event
    /// for another part is refused ([`RefusedKind::Foreign`]). On an engine that does not
    /// share, the part is that of the client key, as with `push`.
    pub fn push_in(
        &mut self,
        part: u32,
        event: RequestEvent,
        line: u64,
        sink: &mut impl FnMut(&Record<'_>),
        refused: &mut impl FnMut(LateEvent),
    ) {
        let Some(x) = &self.exchange else {
            return self.push(event, line, sink, refused);
        };
        if !x.local.get(part as usize).copied().unwrap_or(false) {
            self.stats.events_in += 1;
            refused(LateEvent {
                line,
                ts_ms: event.ts_ms,
                kind: RefusedKind::Foreign { part },
            });
            return;
        }
        self.push_pending(event, line, part, sink, refused);
    }

    fn push_pending(
        &mut self,
        event: RequestEvent,
        line: u64,
        part: u32,
        sink: &mut impl FnMut(&Record<'_>),
        refused: &mut impl FnMut(LateEvent),
    ) {
        self.stats.events_in += 1;
        let ts = event.ts_ms;
        let anchored = self.max_ts != i64::MIN;
        let in_bound = anchored && ts <= self.max_ts.saturating_add(self.max_future_ms);
        let p = Pending {
            ts,
            line,
            part,
            event,
        };
        // The newest held event stands for the time the held events would move to.
        let Some(held) = self.ahead.iter().map(|h| h.ts).max() else {
            if in_bound {
                self.accept(p, sink, refused);
            } else {
                self.ahead.push(p);
                self.confirm_if_due(sink, refused);
            }
            return;
        };
        if ts >= held.saturating_sub(self.lateness_ms) {
            // Follows the held events.
            self.ahead.push(p);
            self.confirm_if_due(sink, refused);
        } else if !anchored && ts >= held.saturating_sub(self.max_future_ms) {
            // Before event time has an anchor, the held events stand for it: an event behind
            // them by more than the lateness, but not by a jump, is late.
            self.refuse_late(&p, held, refused);
        } else if in_bound || (anchored && ts < self.max_ts) {
            // Fits the current event time (or is late for it): the held events were wild.
            self.refuse_ahead(ts, refused);
            self.accept(p, sink, refused);
        } else {
            // Ahead of event time, and not after the held events: a new candidate.
            self.refuse_ahead(ts, refused);
            self.ahead.push(p);
            self.confirm_if_due(sink, refused);
        }
    }

    /// Event time follows the held events once `future_confirm` of them agree.
    fn confirm_if_due(
        &mut self,
        sink: &mut impl FnMut(&Record<'_>),
        refused: &mut impl FnMut(LateEvent),
    ) {
        if self.ahead.len() >= self.future_confirm {
            self.confirm_ahead(sink, refused);
        }
    }

    /// Event time follows the held events.
    fn confirm_ahead(
        &mut self,
        sink: &mut impl FnMut(&Record<'_>),
        refused: &mut impl FnMut(LateEvent),
    ) {
        for p in std::mem::take(&mut self.ahead) {
            self.accept(p, sink, refused);
        }
    }

    /// Refuses the held events; `now` is the timestamp that did not follow them (the
    /// reference of the report when event time has no anchor yet).
    fn refuse_ahead(&mut self, now: i64, refused: &mut impl FnMut(LateEvent)) {
        let reference = if self.max_ts != i64::MIN {
            self.max_ts
        } else {
            now
        };
        for p in self.ahead.drain(..) {
            self.stats.future += 1;
            refused(LateEvent {
                line: p.line,
                ts_ms: p.ts,
                kind: RefusedKind::Future {
                    ahead_ms: p.ts.saturating_sub(reference),
                },
            });
        }
    }

    /// Refuses an event as later than the allowed lateness behind `newest`.
    fn refuse_late(&mut self, p: &Pending, newest: i64, refused: &mut impl FnMut(LateEvent)) {
        self.stats.late += 1;
        refused(LateEvent {
            line: p.line,
            ts_ms: p.ts,
            kind: RefusedKind::Late {
                behind_ms: newest.saturating_sub(p.ts),
            },
        });
    }

    /// The lateness check and the reorder buffer.
    fn accept(
        &mut self,
        p: Pending,
        sink: &mut impl FnMut(&Record<'_>),
        refused: &mut impl FnMut(LateEvent),
    ) {
        let ts = p.ts;
        if self.max_ts != i64::MIN && ts < self.max_ts.saturating_sub(self.lateness_ms) {
            self.refuse_late(&p, self.max_ts, refused);
            return;
        }
        if let Some(x) = &self.exchange
            && epoch_of(ts) <= x.local_through
        {
            // Its epoch's contributions are final (shared): it comes too late for them.
            let newest = self.max_ts.max(ts);
            self.refuse_late(&p, newest, refused);
            return;
        }
        self.max_ts = self.max_ts.max(ts);
        if self.pending.back().is_none_or(|b| b.ts <= ts) {
            self.pending.push_back(p);
        } else {
            // Out of order: after every pending event with a timestamp at or before its own.
            let at = self.pending.partition_point(|q| q.ts <= ts);
            self.pending.insert(at, p);
        }
        if self.exchange.is_some() {
            self.release_shared(false, sink);
            return;
        }
        let watermark = self.max_ts.saturating_sub(self.lateness_ms);
        while self.pending.front().is_some_and(|p| p.ts <= watermark) {
            let p = self.pending.pop_front().expect("non-empty");
            self.release(p, sink);
        }
    }

    /// Emits every buffered event (end of input). Events still held ahead of event time are
    /// processed too: nothing comes after them that they could disturb.
    pub fn finish(&mut self, sink: &mut impl FnMut(&Record<'_>)) {
        if !self.ahead.is_empty() {
            // Each held event is within the allowed lateness of those before it, and ahead of
            // event time: none is late (nor in an epoch a sharing engine has closed).
            self.confirm_ahead(sink, &mut |_| {});
        }
        if self.exchange.is_some() {
            self.release_shared(true, sink);
            return;
        }
        while let Some(p) = self.pending.pop_front() {
            self.release(p, sink);
        }
        self.flush(sink);
    }

    /// Processes an event the watermark has passed: now, or in the next parallel batch.
    fn release(&mut self, p: Pending, sink: &mut impl FnMut(&Record<'_>)) {
        if self.key_workers.len() <= 1 {
            self.process(&p.event, p.line, p.part, sink);
        } else {
            self.ready.push(p);
            if self.ready.len() >= BATCH {
                self.flush(sink);
            }
        }
    }

    /// Processes the events released so far and not yet processed (an engine with threads
    /// works in batches; [`finish`](Self::finish) flushes too). Records come out in the same
    /// order, with the same values, as without threads.
    pub fn flush(&mut self, sink: &mut impl FnMut(&Record<'_>)) {
        if self.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.ready);
        let mut start = 0;
        while start < ready.len() {
            let epoch = epoch_of(ready[start].ts);
            let len = ready[start..].partition_point(|p| epoch_of(p.ts) == epoch);
            self.run_segment(&ready[start..start + len], epoch, sink);
            start += len;
        }
        self.ready = ready;
        self.ready.clear();
    }

    /// Merges the open epoch's deltas when event time enters another epoch.
    fn enter_epoch(&mut self, epoch: i64) {
        if epoch == self.epoch {
            return;
        }
        if let Some(x) = self.exchange.as_deref_mut() {
            // Every epoch before this one whose contributions are all known, in order.
            let later = x.held.split_off(&epoch);
            for (e, mut deltas) in std::mem::replace(&mut x.held, later) {
                for d in &mut deltas {
                    d.reindex(&self.population);
                    if d.validate(&self.population).is_err() {
                        *d = Delta::default();
                        x.dropped += 1;
                    }
                }
                self.population.merge(e, deltas.iter_mut());
            }
        } else if self.epoch != i64::MIN {
            self.population
                .merge(self.epoch, self.parts.iter_mut().map(|p| &mut p.delta));
        }
        self.epoch = epoch;
    }

    /// One epoch's events on all cores: keys and templates by chunks of events, then
    /// features part by part, then the records in order.
    fn run_segment(&mut self, events: &[Pending], epoch: i64, sink: &mut impl FnMut(&Record<'_>)) {
        self.enter_epoch(epoch);
        let n_parts = self.parts.len() as u32;
        if self.prepared.len() < events.len() {
            self.prepared.resize_with(events.len(), Prep::default);
        }
        let prepared = &mut self.prepared[..events.len()];
        let chunk = events.len().div_ceil(self.key_workers.len()).max(1);
        let endpoints = &self.endpoints;
        std::thread::scope(|s| {
            for ((evs, preps), keys) in events
                .chunks(chunk)
                .zip(prepared.chunks_mut(chunk))
                .zip(self.key_workers.iter_mut())
            {
                s.spawn(move || {
                    for (p, prep) in evs.iter().zip(preps) {
                        prep.fill(keys, endpoints, &p.event, n_parts, p.part);
                    }
                });
            }
        });
        let prepared = &self.prepared[..events.len()];
        let nf = self.registry.len();
        let (pop, windows, registry) = (&self.population, &self.windows, &self.registry);
        // With a selection, each event's full vector is computed in a scratch row and only
        // the selected features are kept.
        let selected = registry.selection().is_some();
        let full_len = registry.full_len();
        std::thread::scope(|s| {
            for (i, (part, rows)) in self.parts.iter_mut().zip(&mut self.rows).enumerate() {
                s.spawn(move || {
                    let mut full = vec![0.0; if selected { full_len } else { 0 }];
                    rows.clear();
                    for (p, prep) in events.iter().zip(prepared) {
                        if prep.part as usize != i {
                            continue;
                        }
                        let at = rows.len();
                        rows.resize(at + nf, 0.0);
                        let out = if selected {
                            &mut full[..]
                        } else {
                            &mut rows[at..]
                        };
                        compute(
                            part,
                            pop,
                            windows,
                            registry,
                            &p.event,
                            &prep.key,
                            &prep.endpoint,
                            prep.hash,
                            epoch,
                            out,
                        );
                        if selected {
                            registry.select_into(&full, &mut rows[at..]);
                        }
                    }
                });
            }
        });
        let mut cursor = vec![0usize; self.parts.len()];
        for (p, prep) in events.iter().zip(prepared) {
            let part = prep.part as usize;
            let at = cursor[part];
            cursor[part] += nf;
            self.stats.events_out += 1;
            self.stats.keys_by_kind[prep.kind as usize] += 1;
            sink(&Record {
                event: &p.event,
                line: p.line,
                client: &prep.key,
                client_kind: prep.kind,
                endpoint: &prep.endpoint.template,
                features: &self.rows[part][at..at + nf],
            });
        }
    }

    fn process(
        &mut self,
        ev: &RequestEvent,
        line: u64,
        part: u32,
        sink: &mut impl FnMut(&Record<'_>),
    ) {
        let epoch = epoch_of(ev.ts_ms);
        self.enter_epoch(epoch);
        let prep = &mut self.prep;
        prep.fill(
            &mut self.key_workers[0],
            &self.endpoints,
            ev,
            self.parts.len() as u32,
            part,
        );
        compute(
            &mut self.parts[prep.part as usize],
            &self.population,
            &self.windows,
            &self.registry,
            ev,
            &prep.key,
            &prep.endpoint,
            prep.hash,
            epoch,
            &mut self.full,
        );
        let features = if self.registry.selection().is_some() {
            self.registry.select_into(&self.full, &mut self.buf);
            &self.buf
        } else {
            &self.full
        };
        self.stats.events_out += 1;
        self.stats.keys_by_kind[prep.kind as usize] += 1;
        sink(&Record {
            event: ev,
            line,
            client: &prep.key,
            client_kind: prep.kind,
            endpoint: &prep.endpoint.template,
            features,
        });
    }

    fn shape(&self) -> Shape {
        Shape {
            // The horizons whose buckets the state holds (with a selection, only those of the
            // selected window features).
            horizons_secs: self
                .windows
                .horizons_ms
                .iter()
                .zip(self.windows.active)
                .filter(|(_, a)| *a)
                .map(|(h, _)| (h / 1000) as u32)
                .collect(),
            buckets_per_horizon: self.windows.buckets,
            endpoint_slots: self.windows.slots,
        }
    }

    /// Saves the engine's state (clients, population, counters) in the versioned binary format:
    /// `GWSTATE\0`, format version (u16 LE), body length (u64 LE), CRC-32 of the body (u32
    /// LE), then a postcard body. Buffered events are not part of a snapshot: call
    /// [`finish`](Self::finish) first.
    ///
    /// An engine that shares its population statistics saves what it knows of the other
    /// parts too, and each client's part: it is restored sharing, owning the same parts.
    pub fn save_state(&self, w: &mut impl Write) -> Result<()> {
        let mut delta = Delta::default();
        for p in &self.parts {
            delta.absorb(&self.population, p.delta.clone());
        }
        let snap = self.snapshot(
            delta,
            self.evictions(),
            self.parts.iter().map(|p| p.store.created).sum(),
            self.parts.iter().flat_map(|p| p.store.iter_lru()),
        );
        let ext = match self.exchange.as_deref() {
            Some(x) => Extension {
                shared: Some(x.clone()),
                client_parts: self
                    .parts
                    .iter()
                    .enumerate()
                    .flat_map(|(i, p)| std::iter::repeat_n(i as u32, p.store.len()))
                    .collect(),
            },
            None => Extension::default(),
        };
        write_snapshot(&snap, &ext, w)
    }

    /// A snapshot of this engine's shared state with the given clients and their counters.
    fn snapshot<'a>(
        &self,
        delta: Delta,
        evictions: Evictions,
        created: u64,
        clients: impl Iterator<Item = (&'a str, &'a ClientState)>,
    ) -> Snapshot {
        // Buffered events are not in a snapshot: the caller reads them again after a restore,
        // so event time is saved as of before them (a sharing engine's events waiting for
        // the other parts are behind the watermark; the others are ahead of it, and this
        // changes nothing for them).
        let max_ts = match self.pending.front() {
            Some(p) => self.max_ts.min(p.ts.saturating_add(self.lateness_ms)),
            None => self.max_ts,
        };
        Snapshot {
            registry_hash: self.registry.hash.clone(),
            shape: self.shape(),
            max_ts,
            stats: self.stats,
            evictions,
            created,
            population: self.population.clone(),
            epoch: self.epoch,
            delta,
            clients: clients.map(|(k, s)| (k.into(), s.clone())).collect(),
        }
    }

    /// Saves one part's state in the same format: its clients and its contributions to the
    /// open epoch, with the population statistics every part shares and the engine's
    /// counters. [`restore_parts`](Self::restore_parts) puts the parts' files back, each
    /// into its part (what a service instance does for the partitions it owns).
    pub fn save_part(&self, part: usize, w: &mut impl Write) -> Result<()> {
        let Some(p) = self.parts.get(part) else {
            return Err(Error::Snapshot(format!(
                "no part {part}: the engine has {}",
                self.parts.len()
            )));
        };
        let snap = self.snapshot(
            p.delta.clone(),
            p.store.evictions,
            p.store.created,
            p.store.iter_lru(),
        );
        write_snapshot(&snap, &Extension::default(), w)
    }

    /// Restores a state saved by [`save_state`](Self::save_state) into this engine, replacing
    /// its state. Refused, with what was wrong, when the file is not a snapshot, is truncated,
    /// fails its checksum, has another format version, feature set or window shape, or holds
    /// values this engine could not have written (indices, lengths, counts, times). The
    /// configured caps apply: clients beyond `max_clients` are evicted, least recently used
    /// first (counted as capacity evictions). On error the engine keeps its state.
    ///
    /// A state saved by an engine that shares its population statistics is restored
    /// sharing, owning the same parts; any other state ends this engine's sharing.
    pub fn restore_state(&mut self, r: &mut impl Read) -> Result<()> {
        let (snap, ext) = self.read_snapshot(r)?;
        let Some(mut sh) = ext.shared else {
            return self
                .install(vec![snap], Layout::ByKey)
                .map(|()| self.exchange = None);
        };
        let bad = |m: String| {
            Err(Error::Snapshot(format!(
                "shared population statistics: {m}"
            )))
        };
        let n = sh.local.len();
        if n == 0 || n > 1 << 16 || sh.through.len() != n {
            return bad(format!("{n} parts, {} final epochs", sh.through.len()));
        }
        if ext.client_parts.len() != snap.clients.len() {
            return bad(format!(
                "{} client parts for {} clients",
                ext.client_parts.len(),
                snap.clients.len()
            ));
        }
        if let Some((i, p)) = ext
            .client_parts
            .iter()
            .enumerate()
            .find(|(_, p)| !sh.local.get(**p as usize).copied().unwrap_or(false))
        {
            return bad(format!(
                "client {i} is in part {p}, not one of the engine's own"
            ));
        }
        if sh
            .held
            .first_key_value()
            .is_some_and(|(e, _)| *e <= snap.population.epoch)
        {
            return bad("contributions held for epochs merged already".into());
        }
        let Some(delta_part) = sh.local.iter().position(|l| *l) else {
            return bad("the engine owns no part".into());
        };
        self.install(
            vec![snap],
            Layout::Given {
                n,
                parts: ext.client_parts,
                delta_part,
            },
        )?;
        sh.registry = fnv1a(self.registry.hash.as_bytes());
        self.exchange = Some(Box::new(sh));
        Ok(())
    }

    /// Restores the parts' states saved by [`save_part`](Self::save_part), file `i` into part
    /// `i` of this engine (which has as many parts). Each file is checked as
    /// [`restore_state`](Self::restore_state) checks one; besides, the files must come from
    /// the same moment of one engine (the same population statistics, open epoch, event time
    /// and counters) and each client must belong to its file's part. On error the engine
    /// keeps its state; the message names the part.
    pub fn restore_parts(&mut self, readers: &mut [&mut dyn Read]) -> Result<()> {
        let n = self.parts.len();
        if readers.len() != n {
            return Err(Error::Snapshot(format!(
                "{} part states for an engine of {n} parts",
                readers.len()
            )));
        }
        let mut snaps = Vec::with_capacity(n);
        for (i, r) in readers.iter_mut().enumerate() {
            let (snap, _) = self
                .read_snapshot(r)
                .map_err(|e| Error::Snapshot(format!("part {i}: {e}")))?;
            snaps.push(snap);
        }
        for (i, s) in snaps.iter().enumerate().skip(1) {
            let first = &snaps[0];
            if !s.population.same_as(&first.population)
                || s.epoch != first.epoch
                || s.max_ts != first.max_ts
                || s.stats != first.stats
            {
                return Err(Error::Snapshot(format!(
                    "part {i} was saved at another moment, or by another engine, than part 0 \
                     (population statistics, open epoch, event time or counters differ)"
                )));
            }
        }
        self.install(snaps, Layout::PerPart)
    }

    /// A snapshot read and checked against this engine: header, checksum, feature set, window
    /// shape, event time.
    fn read_snapshot(&self, r: &mut (impl Read + ?Sized)) -> Result<(Snapshot, Extension)> {
        let bad = |m: String| Err(Error::Snapshot(m));
        let mut head = [0u8; SNAPSHOT_HEADER];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got < 10 || &head[..8] != SNAPSHOT_MAGIC {
            return bad("not a gatewatch state snapshot (bad magic)".into());
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if !(SNAPSHOT_OLDEST..=SNAPSHOT_VERSION).contains(&version) {
            return bad(format!(
                "format version {version} is not supported (this build reads \
                 {SNAPSHOT_OLDEST} to {SNAPSHOT_VERSION})"
            ));
        }
        if got < SNAPSHOT_HEADER {
            return bad(format!("truncated: {got} bytes, shorter than the header"));
        }
        let len = u64::from_le_bytes(head[10..18].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(head[18..22].try_into().expect("4 bytes"));
        let mut body = Vec::new();
        // Never more than the header announces (plus one byte, to see trailing data).
        r.take(len.saturating_add(1)).read_to_end(&mut body)?;
        if (body.len() as u64) < len {
            return bad(format!(
                "truncated: the body has {} of its {len} bytes",
                body.len()
            ));
        }
        if body.len() as u64 > len {
            return bad(format!("trailing bytes after the {len}-byte body"));
        }
        let actual = crc32fast::hash(&body);
        if actual != crc {
            return bad(format!(
                "checksum mismatch (CRC-32 {actual:08x}, the header says {crc:08x}): the file is corrupt"
            ));
        }
        let (snap, rest): (Snapshot, _) = postcard::take_from_bytes(&body)
            .map_err(|e| Error::Snapshot(format!("corrupt body: {e}")))?;
        let (ext, rest) = if version >= 5 {
            postcard::take_from_bytes::<Extension>(rest)
                .map_err(|e| Error::Snapshot(format!("corrupt body: {e}")))?
        } else {
            (Extension::default(), rest)
        };
        if !rest.is_empty() {
            return bad(format!("{} bytes after the state", rest.len()));
        }
        if snap.registry_hash != self.registry.hash {
            return bad(format!(
                "feature set {} differs from this engine's {}",
                snap.registry_hash, self.registry.hash
            ));
        }
        let shape = self.shape();
        if snap.shape != shape {
            return bad(format!(
                "saved with windows of horizons_secs = {:?}, buckets_per_horizon = {}, \
                 endpoint_slots = {}; this configuration keeps {:?}, {}, {} (a [features] \
                 select keeps only the horizons of the window features it selects)",
                snap.shape.horizons_secs,
                snap.shape.buckets_per_horizon,
                snap.shape.endpoint_slots,
                shape.horizons_secs,
                shape.buckets_per_horizon,
                shape.endpoint_slots
            ));
        }
        let in_range =
            |t: i64| (gatewatch_event::MIN_TS_MS..=gatewatch_event::MAX_TS_MS).contains(&t);
        if snap.max_ts != i64::MIN && !in_range(snap.max_ts) {
            return bad(format!("event time {} out of range", snap.max_ts));
        }
        Ok((snap, ext))
    }

    /// Puts checked snapshots in place: one whole state (its clients spread over the parts),
    /// one per part (snapshot `i`'s clients and delta into part `i`), or a sharing engine's
    /// (its clients into their parts).
    fn install(&mut self, snaps: Vec<Snapshot>, layout: Layout) -> Result<()> {
        let per_part = matches!(layout, Layout::PerPart);
        let bad = |m: String| Err(Error::Snapshot(m));
        let name = |i: usize| {
            if per_part {
                format!("part {i}: ")
            } else {
                String::new()
            }
        };
        let first = &snaps[0];
        let (max_ts, epoch, stats) = (first.max_ts, first.epoch, first.stats);
        let mut population = first.population.clone();
        population.reindex();
        population
            .validate(self.population.max_endpoints())
            .map_err(|e| Error::Snapshot(format!("population: {e}")))?;
        population.set_max_endpoints(self.population.max_endpoints());
        if population.network != self.population.network {
            return bad(format!(
                "the state's networks are {:?}, this configuration's are {:?}",
                population.network, self.population.network
            ));
        }
        population.set_max_addresses(self.population.max_addresses());
        if epoch != i64::MIN
            && (epoch <= population.epoch || max_ts == i64::MIN || epoch > epoch_of(max_ts))
        {
            return bad(format!(
                "open epoch {epoch} does not follow the merged epoch {} and event time {max_ts}",
                population.epoch
            ));
        }
        let n = match &layout {
            Layout::Given { n, .. } => *n,
            _ => self.parts.len(),
        };
        let (cap, ttl) = (
            self.max_clients.div_ceil(n).max(1),
            self.parts[0].store.ttl_ms(),
        );
        let mut stores: Vec<ClientStore> = (0..n).map(|_| ClientStore::new(cap, ttl)).collect();
        let mut deltas: Vec<Delta> = (0..n).map(|_| Delta::default()).collect();
        for (j, snap) in snaps.into_iter().enumerate() {
            let mut delta = snap.delta;
            delta.reindex(&population);
            delta
                .validate(&population)
                .map_err(|e| Error::Snapshot(format!("{}population delta: {e}", name(j))))?;
            let target = match &layout {
                Layout::ByKey => 0,
                Layout::PerPart => j,
                Layout::Given { delta_part, .. } => *delta_part,
            };
            deltas[target] = delta;
            stores[target].evictions = snap.evictions;
            stores[target].created = snap.created;
            for (i, (k, s)) in snap.clients.into_iter().enumerate() {
                if k.is_empty() {
                    return bad(format!("{}client {i} has an empty key", name(j)));
                }
                s.validate(&self.windows)
                    .map_err(|e| Error::Snapshot(format!("{}client {i}: {e}", name(j))))?;
                if s.last_ts() > max_ts {
                    return bad(format!(
                        "{}client {i} was seen after the state's event time",
                        name(j)
                    ));
                }
                let at = match &layout {
                    Layout::Given { parts, .. } => parts[i] as usize,
                    _ if n == 1 => 0,
                    _ => part_of(&k, n as u32) as usize,
                };
                if per_part && at != j {
                    return bad(format!(
                        "{}client {i}: key {:?} belongs to part {at}",
                        name(j),
                        &*k
                    ));
                }
                let store = &mut stores[at];
                if store.get(&k).is_some() {
                    return bad(format!(
                        "{}client {i}: key {:?} appears twice",
                        name(j),
                        &*k
                    ));
                }
                // Least recently used first: over the cap, the oldest are evicted.
                store.push_restored(k, s);
            }
        }
        self.parts = stores
            .into_iter()
            .zip(deltas)
            .map(|(store, delta)| Part { store, delta })
            .collect();
        self.rows = vec![Vec::new(); n];
        self.population = population;
        self.epoch = epoch;
        self.stats = stats;
        self.max_ts = max_ts;
        self.pending.clear();
        self.ahead.clear();
        self.ready.clear();
        Ok(())
    }

    /// The same engine with its clients split into `parts` parts by Kafka's partitioner on
    /// the client key (each part's contributions to the open epoch are joined first). Buffered
    /// events are kept.
    pub fn repartition(mut self, parts: u32) -> Self {
        self.split_parts(parts);
        self
    }

    /// [`repartition`](Self::repartition) in place (an engine that shares its population
    /// statistics stops sharing).
    fn split_parts(&mut self, parts: u32) {
        self.exchange = None;
        let mut delta = Delta::default();
        let mut stores = Vec::new();
        for p in std::mem::take(&mut self.parts) {
            delta.absorb(&self.population, p.delta);
            stores.push(p.store);
        }
        let mut all = stores.remove(0);
        for s in stores {
            all.evictions.idle += s.evictions.idle;
            all.evictions.capacity += s.evictions.capacity;
            all.created += s.created;
            for (k, st) in s.iter_lru() {
                all.push_restored(k.into(), st.clone());
            }
        }
        let share = self.max_clients.div_ceil(parts.max(1) as usize);
        self.parts = all
            .split(parts)
            .into_iter()
            .map(|mut store| {
                store.set_capacity(share);
                store
            })
            .enumerate()
            .map(|(i, store)| Part {
                store,
                delta: if i == 0 {
                    std::mem::take(&mut delta)
                } else {
                    Delta::default()
                },
            })
            .collect();
        self.rows = vec![Vec::new(); self.parts.len()];
    }

    /// Makes this engine one of several that together own `parts` parts: it owns the parts
    /// in `local`, processes only their events ([`push_in`](Self::push_in)), and shares
    /// the population statistics with the engines owning the others through [`Share`]s —
    /// the ones it writes ([`take_shares`](Self::take_shares)) go to every other engine's
    /// [`receive`](Self::receive). Every engine then gives each of its events the features
    /// one engine with all the parts would (`docs/POPULATION.md`), as long as each client's
    /// events are all in one part and the engines' event times agree on what is late (see
    /// [`advance_time`](Self::advance_time)). An event of epoch *e* waits until every
    /// part's contributions to epoch *e* − 1 are known.
    ///
    /// The engine is split into `parts` parts first; it needs one thread, and a state
    /// without open contributions (a new engine, or one restored at the start of a run).
    pub fn share_population(&mut self, parts: u32, local: &[u32]) -> Result<()> {
        if self.key_workers.len() > 1 {
            return Err(Error::Config(
                "an engine that shares its population statistics runs on one thread".into(),
            ));
        }
        if parts == 0 || parts > 1 << 16 {
            return Err(Error::Config(format!("{parts} parts: between 1 and 65536")));
        }
        if let Some(p) = local.iter().find(|p| **p >= parts) {
            return Err(Error::Config(format!(
                "part {p} is not one of the {parts} parts"
            )));
        }
        let mut owned = vec![false; parts as usize];
        for p in local {
            owned[*p as usize] = true;
        }
        if let Some(x) = &self.exchange {
            if x.local == owned {
                // Restored from a state saved owning the same parts.
                return Ok(());
            }
            let had: Vec<usize> = (0..x.local.len()).filter(|i| x.local[*i]).collect();
            return Err(Error::Config(format!(
                "the state was saved owning parts {had:?} of {}; this run owns {local:?} of \
                 {parts} (parts are not handed over between engines)",
                x.local.len()
            )));
        }
        if self.clients() > 0 {
            return Err(Error::Config(
                "the state was saved without sharing population statistics: its clients are \
                 not split by part"
                    .into(),
            ));
        }
        self.split_parts(parts);
        // Contributions up to the epoch before the open one are merged already.
        let through = if self.epoch == i64::MIN {
            i64::MIN
        } else {
            self.epoch - 1
        };
        self.exchange = Some(Box::new(Exchange::new(
            fnv1a(self.registry.hash.as_bytes()),
            owned,
            through,
        )));
        Ok(())
    }

    /// Whether this engine shares its population statistics with others.
    pub fn is_sharing(&self) -> bool {
        self.exchange.is_some()
    }

    /// Whether a sharing engine owns part `part` (an engine that does not share owns all).
    pub fn owns(&self, part: u32) -> bool {
        match &self.exchange {
            Some(x) => x.local.get(part as usize).copied().unwrap_or(false),
            None => (part as usize) < self.parts.len(),
        }
    }

    /// The shares this engine's parts wrote since the last call, in the order written: each
    /// must reach every other engine, in that order per part.
    pub fn take_shares(&mut self) -> Vec<Share> {
        self.exchange
            .as_mut()
            .map(|x| std::mem::take(&mut x.outbox))
            .unwrap_or_default()
    }

    /// Whether a sharing engine holds events its watermark has passed, waiting for other
    /// parts' shares.
    pub fn waits_for_shares(&self) -> bool {
        self.exchange.is_some()
            && self
                .pending
                .front()
                .is_some_and(|p| p.ts <= self.max_ts.saturating_sub(self.lateness_ms))
    }

    /// The newest event time other engines reported in their shares (`i64::MIN` before any).
    pub fn remote_time(&self) -> i64 {
        self.exchange.as_ref().map_or(i64::MIN, |x| x.remote_ts)
    }

    /// Contributions of other engines dropped because they did not fit the statistics
    /// (written by an engine whose statistics differ: another configuration or version).
    pub fn shares_dropped(&self) -> u64 {
        self.exchange.as_ref().map_or(0, |x| x.dropped)
    }

    /// A share from an engine owning another part. Shares already known (the same part and
    /// epochs again) are ignored. Events waiting for it are processed. Refused, with the
    /// reason, when this engine does not share, or the share comes from another feature set
    /// or number of parts, or is about one of this engine's own parts.
    pub fn receive(&mut self, share: Share, sink: &mut impl FnMut(&Record<'_>)) -> Result<()> {
        let Some(x) = self.exchange.as_deref_mut() else {
            return Err(Error::Share(
                "this engine does not share its population statistics".into(),
            ));
        };
        if share.registry != x.registry {
            return Err(Error::Share(
                "written by an engine with another feature set".into(),
            ));
        }
        if share.parts as usize != x.local.len() {
            return Err(Error::Share(format!(
                "written by an engine of {} parts; this one has {}",
                share.parts,
                x.local.len()
            )));
        }
        let p = share.part as usize;
        if x.local[p] {
            return Err(Error::Share(format!(
                "about part {p}, which this engine owns"
            )));
        }
        if share.through <= x.through[p] {
            return Ok(());
        }
        if let Some((e, d)) = share.delta
            && e > x.through[p]
            && !d.is_empty()
        {
            x.held.entry(e).or_default().push(d);
        }
        x.through[p] = share.through;
        x.remote_ts = x.remote_ts.max(share.max_ts);
        self.release_shared(false, sink);
        Ok(())
    }

    /// Event time has reached `ts` elsewhere: this engine's event time moves there (when it
    /// is behind), so its watermark passes what it has and its own parts' contributions
    /// become final up to it — what an engine whose inputs are all read up to now does with
    /// [`remote_time`](Self::remote_time), so that parts without traffic do not hold the
    /// others back. Events later than the allowed lateness behind `ts` are refused after it.
    /// Events held ahead of event time (the first ones, before they anchor it) are confirmed
    /// by it when they are within `max_future_ms` of it.
    pub fn advance_time(
        &mut self,
        ts: i64,
        sink: &mut impl FnMut(&Record<'_>),
        refused: &mut impl FnMut(LateEvent),
    ) {
        if ts <= self.max_ts
            || !(gatewatch_event::MIN_TS_MS..=gatewatch_event::MAX_TS_MS).contains(&ts)
        {
            return;
        }
        self.max_ts = ts;
        let bound = ts.saturating_add(self.max_future_ms);
        if !self.ahead.is_empty() && self.ahead.iter().all(|h| h.ts <= bound) {
            self.confirm_ahead(sink, refused);
        }
        if self.exchange.is_some() {
            self.release_shared(false, sink);
        } else {
            let watermark = self.max_ts.saturating_sub(self.lateness_ms);
            while self.pending.front().is_some_and(|p| p.ts <= watermark) {
                let p = self.pending.pop_front().expect("non-empty");
                self.release(p, sink);
            }
        }
    }

    /// The release of a sharing engine: events the watermark has passed (all of them at the
    /// `end` of the input) in order, each once the contributions to the epoch before its own
    /// are known; the local parts' contributions published as they become final.
    fn release_shared(&mut self, end: bool, sink: &mut impl FnMut(&Record<'_>)) {
        loop {
            let watermark = if end {
                i64::MAX
            } else if self.max_ts == i64::MIN {
                return;
            } else {
                self.max_ts.saturating_sub(self.lateness_ms)
            };
            let front = self
                .pending
                .front()
                .map(|p| p.ts)
                .filter(|t| *t <= watermark);
            // No event of an epoch before this can come any more.
            let bound = match front {
                Some(t) => epoch_of(t) - 1,
                None if end => i64::MAX - 1,
                None => epoch_of(watermark) - 1,
            };
            self.publish_through(bound);
            let Some(t) = front else {
                return;
            };
            let e = epoch_of(t);
            let x = self.exchange.as_deref().expect("a sharing engine");
            if e != self.epoch && !x.final_through(e - 1) {
                return;
            }
            let p = self.pending.pop_front().expect("non-empty");
            self.process(&p.event, p.line, p.part, sink);
        }
    }

    /// The local parts' contributions are final through epoch `bound`: shares for them
    /// (with the open epoch's contributions when it is at or before `bound`).
    fn publish_through(&mut self, bound: i64) {
        let Some(x) = self.exchange.as_deref_mut() else {
            return;
        };
        if bound <= x.local_through {
            return;
        }
        let open = self.epoch;
        let carries = open != i64::MIN && open > x.local_through && open <= bound;
        for (i, part) in self.parts.iter_mut().enumerate() {
            if !x.local[i] {
                continue;
            }
            let delta = if carries {
                Some(std::mem::take(&mut part.delta)).filter(|d| !d.is_empty())
            } else {
                None
            };
            if let Some(d) = &delta {
                x.held.entry(open).or_default().push(d.clone());
            }
            x.through[i] = bound;
            x.outbox.push(Share {
                registry: x.registry,
                parts: x.local.len() as u32,
                part: i as u32,
                through: bound,
                max_ts: self.max_ts,
                delta: delta.map(|d| (open, d)),
            });
        }
        x.local_through = bound;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn saved() -> (FeatureEngine, Snapshot) {
        let mut e = FeatureEngine::new(&Config::default()).unwrap();
        for i in 0..6 {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i % 3));
            let ev = RequestEvent::new(i64::from(i) * 10_000, ip, "GET", &format!("/a/{i}"), 200);
            e.push(ev, 0, &mut |_| {}, &mut |l| panic!("{l}"));
        }
        e.finish(&mut |_| {});
        let mut bytes = Vec::new();
        e.save_state(&mut bytes).unwrap();
        let snap = postcard::from_bytes(&bytes[SNAPSHOT_HEADER..]).unwrap();
        (e, snap)
    }

    /// A snapshot file with a valid checksum around `snap`.
    fn file(snap: &Snapshot) -> Vec<u8> {
        let mut body = postcard::to_stdvec(snap).unwrap();
        body.extend(postcard::to_stdvec(&Extension::default()).unwrap());
        let mut out = SNAPSHOT_MAGIC.to_vec();
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn snapshots_with_a_valid_checksum_are_still_checked_value_by_value() {
        let (e, snap) = saved();
        let refused = |f: &dyn Fn(&mut Snapshot)| -> String {
            let (_, mut s) = saved();
            f(&mut s);
            let mut fresh = FeatureEngine::new(&Config::default()).unwrap();
            let err = fresh.restore_state(&mut file(&s).as_slice()).unwrap_err();
            assert_eq!(fresh.store().len(), 0);
            err.to_string()
        };
        let mut ok = FeatureEngine::new(&Config::default()).unwrap();
        ok.restore_state(&mut file(&snap).as_slice()).unwrap();
        assert_eq!(ok.store().len(), e.store().len());

        let m = refused(&|s| {
            let slot = s.clients[1].1.slots[0];
            s.clients[1].1.slots.push(slot);
        });
        assert!(m.contains("client 1: endpoint slot 1 repeats"), "{m}");
        let m = refused(&|s| s.epoch = s.population.epoch);
        assert!(m.contains("open epoch"), "{m}");
        let m = refused(&|s| s.clients[0].1.buckets[0].tag |= 7 << 29);
        assert!(m.contains("bucket of horizon 7"), "{m}");
        let m = refused(&|s| s.clients[0].1.buckets[0].err = 1000);
        assert!(m.contains("inconsistent counts"), "{m}");
        let m = refused(&|s| s.clients[0].1.first_ts = i64::MAX);
        assert!(m.contains("out of range"), "{m}");
        let m = refused(&|s| {
            let c = s.clients[0].clone();
            s.clients.push(c);
        });
        assert!(m.contains("appears twice"), "{m}");
        let m = refused(&|s| s.population.templates[1] = "GET /elsewhere".into());
        assert!(m.contains("does not match its hash"), "{m}");
        let m = refused(&|s| {
            s.population.templates.pop();
        });
        assert!(m.contains("endpoint templates but"), "{m}");
        let m = refused(&|s| s.max_ts = i64::MAX);
        assert!(m.contains("event time"), "{m}");
        let m = refused(&|s| {
            let b = s.clients[0].1.buckets[0];
            s.clients[0].1.buckets.extend([b; 40]);
        });
        assert!(m.contains("buckets, at most 20"), "{m}");
    }
}
