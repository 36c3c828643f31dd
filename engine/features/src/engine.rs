//! The feature engine: event → client key and endpoint → ordered, point-in-time features.

use std::collections::VecDeque;
use std::io::{Read, Write};

use gatewatch_event::{ClientKeyExtractor, Endpoint, EndpointNormalizer, KeyKind, RequestEvent};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::population::Population;
use crate::registry::{PointFeature, Registry};
use crate::sketch::fnv1a;
use crate::state::{ClientState, Obs, Windows};
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
        match self.kind {
            RefusedKind::Late { behind_ms } => write!(
                f,
                "event {behind_ms} ms behind the newest event, beyond the allowed lateness"
            ),
            RefusedKind::Future { ahead_ms } => write!(
                f,
                "event {ahead_ms} ms ahead of event time, beyond max_future_ms, and the events \
                 after it did not follow"
            ),
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
    event: RequestEvent,
}

/// Computes point-in-time features for a stream of events.
///
/// Events go in with [`push`](Self::push) in arrival order; they come out, with features, in
/// event-time order (ties in arrival order) once the watermark (newest timestamp seen minus
/// the allowed lateness) has passed them, and all at [`finish`](Self::finish). The output
/// depends only on the sequence of events, not on how it was split into calls.
pub struct FeatureEngine {
    registry: Registry,
    windows: Windows,
    lateness_ms: i64,
    keys: ClientKeyExtractor,
    endpoints: EndpointNormalizer,
    store: ClientStore,
    population: Population,
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
    /// The newest timestamp among `ahead`.
    ahead_max: i64,
    stats: Stats,
    buf: Vec<f64>,
    key_buf: String,
    endpoint: Endpoint,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"GWSTATE\0";
/// Version of the snapshot format.
pub const SNAPSHOT_VERSION: u16 = 1;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    registry_hash: String,
    max_ts: i64,
    stats: Stats,
    evictions: Evictions,
    created: u64,
    population: Population,
    clients: Vec<(Box<str>, ClientState)>,
}

impl FeatureEngine {
    /// An engine for a configuration (validated here).
    pub fn new(cfg: &Config) -> Result<Self> {
        cfg.features.validate()?;
        let registry = Registry::new(&cfg.features);
        let n = registry.len();
        Ok(Self {
            windows: Windows::new(&cfg.features),
            lateness_ms: i64::try_from(cfg.features.allowed_lateness_ms).unwrap_or(i64::MAX),
            keys: ClientKeyExtractor::new(&cfg.client_key)?,
            endpoints: EndpointNormalizer::new(&cfg.endpoints)?,
            store: ClientStore::new(cfg.features.max_clients, cfg.features.idle_ttl_ms()),
            population: Population::new(cfg.features.max_endpoints),
            pending: VecDeque::new(),
            max_ts: i64::MIN,
            max_future_ms: i64::try_from(cfg.features.max_future_ms).unwrap_or(i64::MAX),
            future_confirm: cfg.features.future_confirm,
            ahead: Vec::new(),
            ahead_max: i64::MIN,
            stats: Stats::default(),
            buf: vec![0.0; n],
            key_buf: String::with_capacity(64),
            endpoint: Endpoint {
                template: String::with_capacity(64),
                ids: Vec::new(),
            },
            registry,
        })
    }

    /// The feature registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Run counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.malformed_jwt = self.keys.malformed_jwt;
        s
    }

    /// The client store.
    pub fn store(&self) -> &ClientStore {
        &self.store
    }

    /// The population statistics.
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
        self.stats.events_in += 1;
        let ts = event.ts_ms;
        let anchored = self.max_ts != i64::MIN;
        let in_bound = anchored && ts <= self.max_ts.saturating_add(self.max_future_ms);
        if self.ahead.is_empty() && in_bound {
            self.accept(Pending { ts, line, event }, sink, refused);
            return;
        }
        if !self.ahead.is_empty() && ts >= self.ahead_max.saturating_sub(self.lateness_ms) {
            // Follows the held events.
            self.ahead_max = self.ahead_max.max(ts);
            self.ahead.push(Pending { ts, line, event });
        } else if !anchored
            && !self.ahead.is_empty()
            && ts >= self.ahead_max.saturating_sub(self.max_future_ms)
        {
            // Before event time has an anchor, the held events stand for it: an event behind
            // them by more than the lateness, but not by a jump, is late.
            self.stats.late += 1;
            refused(LateEvent {
                line,
                ts_ms: ts,
                kind: RefusedKind::Late {
                    behind_ms: self.ahead_max.saturating_sub(ts),
                },
            });
            return;
        } else if in_bound || (anchored && ts < self.max_ts) {
            // Fits the current event time (or is late for it): the held events were wild.
            self.refuse_ahead(Some(ts), refused);
            self.accept(Pending { ts, line, event }, sink, refused);
            return;
        } else {
            // Ahead of event time, and not after the held events: a new candidate.
            self.refuse_ahead(Some(ts), refused);
            self.ahead_max = ts;
            self.ahead.push(Pending { ts, line, event });
        }
        if self.ahead.len() >= self.future_confirm {
            self.confirm_ahead(sink, refused);
        }
    }

    /// Event time follows the held events.
    fn confirm_ahead(&mut self, sink: &mut impl FnMut(&Record<'_>), refused: &mut impl FnMut(LateEvent)) {
        let held = std::mem::take(&mut self.ahead);
        self.ahead_max = i64::MIN;
        for p in held {
            self.accept(p, sink, refused);
        }
    }

    /// Refuses the held events; `now` is the timestamp that did not follow them (for the
    /// report when event time has no anchor yet).
    fn refuse_ahead(&mut self, now: Option<i64>, refused: &mut impl FnMut(LateEvent)) {
        let reference = if self.max_ts != i64::MIN {
            Some(self.max_ts)
        } else {
            now
        };
        for p in self.ahead.drain(..) {
            self.stats.future += 1;
            refused(LateEvent {
                line: p.line,
                ts_ms: p.ts,
                kind: RefusedKind::Future {
                    ahead_ms: reference.map_or(0, |r| p.ts.saturating_sub(r)),
                },
            });
        }
        self.ahead_max = i64::MIN;
    }

    /// The lateness check and the reorder buffer.
    fn accept(&mut self, p: Pending, sink: &mut impl FnMut(&Record<'_>), refused: &mut impl FnMut(LateEvent)) {
        let ts = p.ts;
        if self.max_ts != i64::MIN && ts < self.max_ts.saturating_sub(self.lateness_ms) {
            self.stats.late += 1;
            refused(LateEvent {
                line: p.line,
                ts_ms: ts,
                kind: RefusedKind::Late {
                    behind_ms: self.max_ts.saturating_sub(ts),
                },
            });
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
        let watermark = self.max_ts.saturating_sub(self.lateness_ms);
        while self.pending.front().is_some_and(|p| p.ts <= watermark) {
            let p = self.pending.pop_front().expect("non-empty");
            self.process(&p.event, p.line, sink);
        }
    }

    /// Emits every buffered event (end of input). Events still held ahead of event time are
    /// processed too: nothing comes after them that they could disturb.
    pub fn finish(&mut self, sink: &mut impl FnMut(&Record<'_>)) {
        if !self.ahead.is_empty() {
            // Each held event is within the allowed lateness of those before it: none is late.
            self.confirm_ahead(sink, &mut |_| {});
        }
        while let Some(p) = self.pending.pop_front() {
            self.process(&p.event, p.line, sink);
        }
    }

    fn process(&mut self, ev: &RequestEvent, line: u64, sink: &mut impl FnMut(&Record<'_>)) {
        let mut key = std::mem::take(&mut self.key_buf);
        let kind = self.keys.key_into(ev, &mut key);
        let mut endpoint = std::mem::take(&mut self.endpoint);
        self.endpoints.normalize_into(ev, &mut endpoint);
        let ep = self.population.intern(&endpoint.template);
        let ep_hash = self.population.endpoints[ep as usize].hash;
        let (id_hash, num_id) = match endpoint.ids.last() {
            Some(id) => (
                Some(fnv1a(id.value.as_bytes()) ^ ep_hash.rotate_left(17)),
                id.as_u64(),
            ),
            None => (None, None),
        };
        self.store.expire(ev.ts_ms);
        let state = self.store.get_or_insert(&key, ev.ts_ms);
        let prev_ep = state.prev_ep;
        let surprise = self.population.surprise(prev_ep, ep);
        let obs = Obs {
            ts: ev.ts_ms,
            ep,
            ep_hash,
            status: ev.status,
            bytes: ev.bytes(),
            id_hash,
            num_id,
            surprise,
        };
        let endpoint_count = state.update(&obs, &self.windows, &self.registry, &mut self.buf);
        self.population.count_transition(prev_ep, ep);
        let pop = self.population.count_request(ep, ev.ts_ms);
        let ratio = self.population.rate_ratio(ep, endpoint_count);
        self.buf[self.registry.point_index(PointFeature::TransitionSurprise)] = surprise;
        self.buf[self.registry.point_index(PointFeature::EndpointRateRatio)] = ratio;
        self.buf[self.registry.point_index(PointFeature::EndpointPopRate)] = f64::from(pop) / 60.0;
        self.stats.events_out += 1;
        self.stats.keys_by_kind[kind as usize] += 1;
        sink(&Record {
            event: ev,
            line,
            client: &key,
            client_kind: kind,
            endpoint: &endpoint.template,
            features: &self.buf,
        });
        self.key_buf = key;
        self.endpoint = endpoint;
    }

    /// Saves the engine's state (clients, population, counters) in the versioned binary format:
    /// `GWSTATE\0`, format version (u16 LE), then a postcard body. Buffered events are not
    /// part of a snapshot: call [`finish`](Self::finish) first.
    pub fn save_state(&self, w: &mut impl Write) -> Result<()> {
        let snap = Snapshot {
            registry_hash: self.registry.hash.clone(),
            max_ts: self.max_ts,
            stats: self.stats,
            evictions: self.store.evictions,
            created: self.store.created,
            population: self.population.clone(),
            clients: self
                .store
                .iter_lru()
                .map(|(k, s)| (k.into(), s.clone()))
                .collect(),
        };
        let body = postcard::to_stdvec(&snap).map_err(|e| Error::Snapshot(e.to_string()))?;
        w.write_all(SNAPSHOT_MAGIC)?;
        w.write_all(&SNAPSHOT_VERSION.to_le_bytes())?;
        w.write_all(&body)?;
        Ok(())
    }

    /// Restores a state saved by [`save_state`](Self::save_state) into this engine, replacing
    /// its state. Refused when the format version or the feature set differs.
    pub fn restore_state(&mut self, r: &mut impl Read) -> Result<()> {
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes)?;
        if bytes.len() < 10 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(Error::Snapshot(
                "not a gatewatch state snapshot (bad magic)".into(),
            ));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != SNAPSHOT_VERSION {
            return Err(Error::Snapshot(format!(
                "format version {version} is not supported (this build reads {SNAPSHOT_VERSION})"
            )));
        }
        let snap: Snapshot = postcard::from_bytes(&bytes[10..])
            .map_err(|e| Error::Snapshot(format!("corrupt body: {e}")))?;
        if snap.registry_hash != self.registry.hash {
            return Err(Error::Snapshot(format!(
                "feature set {} differs from this engine's {}",
                snap.registry_hash, self.registry.hash
            )));
        }
        let mut store = ClientStore::new(self.store.capacity(), self.store.ttl_ms());
        for (k, s) in snap.clients {
            store.push_restored(k, s);
        }
        store.evictions = snap.evictions;
        store.created = snap.created;
        self.store = store;
        self.population = snap.population;
        self.population.reindex();
        self.stats = snap.stats;
        self.max_ts = snap.max_ts;
        self.pending.clear();
        self.ahead.clear();
        self.ahead_max = i64::MIN;
        Ok(())
    }

    /// Splits this engine's clients into `parts` engines by Kafka's partitioner on the client
    /// key; each part gets a copy of the population statistics.
    pub fn split(self, parts: u32) -> Vec<FeatureEngine> {
        let FeatureEngine {
            registry,
            windows,
            lateness_ms,
            keys,
            endpoints,
            store,
            population,
            max_ts,
            max_future_ms,
            future_confirm,
            stats,
            buf,
            key_buf,
            endpoint,
            ..
        } = self;
        store
            .split(parts)
            .into_iter()
            .enumerate()
            .map(|(i, store)| FeatureEngine {
                registry: registry.clone(),
                windows: windows.clone(),
                lateness_ms,
                keys: keys.clone(),
                endpoints: endpoints.clone(),
                store,
                population: population.clone(),
                pending: VecDeque::new(),
                max_ts,
                max_future_ms,
                future_confirm,
                ahead: Vec::new(),
                ahead_max: i64::MIN,
                stats: if i == 0 { stats } else { Stats::default() },
                buf: buf.clone(),
                key_buf: key_buf.clone(),
                endpoint: endpoint.clone(),
            })
            .collect()
    }
}
