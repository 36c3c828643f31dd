//! Owned output batches: records with features (and scores), and rejected inputs.

use std::borrow::Cow;
use std::net::IpAddr;

use gatewatch_event::KeyKind;
use gatewatch_features::Record;
use gatewatch_models::{Batch, BatchScores};
use gatewatch_rules::{DecisionEvent, RequestView, Verdict};

use crate::position::{Ack, Position};
use crate::rejection::Rejection;

/// One batch of a session's output, owned by the caller: the records in the engine's output
/// order (event time, ties in input order) with their features, their scores when the
/// session has a model, the inputs rejected since the batch before, and the acknowledgeable
/// point. Buffers are reused when a batch is given back to [`Session::take_into`].
///
/// [`Session::take_into`]: crate::Session::take_into
#[derive(Debug, Default)]
pub struct Output {
    /// Feature rows and endpoints (what the scorer reads).
    pub(crate) batch: Batch,
    width: usize,
    positions: Vec<Position>,
    ts_ms: Vec<i64>,
    status: Vec<u16>,
    kinds: Vec<KeyKind>,
    /// `id`, `label` (raw JSON; an empty span is none) and `client`, in `text`.
    spans: Vec<[(usize, usize); 3]>,
    text: String,
    pub(crate) scores: BatchScores,
    pub(crate) scored: bool,
    pub(crate) rejections: Vec<Rejection>,
    pub(crate) ack: Ack,
    /// The request fields rules read, kept when the session has rules.
    pub(crate) requests: Option<Requests>,
    /// Per record, the strongest decision covering it (when the session has rules).
    pub(crate) verdicts: Vec<Option<Verdict>>,
    /// Decisions started, escalated and ended while this batch was decided, in order.
    pub(crate) decisions: Vec<DecisionEvent>,
    /// Per decision change, the record whose event time it happened at.
    pub(crate) decision_records: Vec<u32>,
    /// Per record, the endpoint monitor's authentication-failure alert score of its
    /// endpoint, for the rules (when the session has a monitor and rules).
    pub(crate) endpoint_auth: Vec<f64>,
    /// Client alerts the endpoint monitor decided while this batch went through it.
    pub(crate) client_alerts: Vec<gatewatch_models::ClientAlert>,
}

/// The request fields of a batch's records that rules read: text in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    text: String,
    /// method, host, path, query, user agent, ASN, country, JA4.
    spans: Vec<[(u32, u32); 8]>,
    ips: Vec<IpAddr>,
    /// Per record, its first header and the number of headers.
    header_range: Vec<(u32, u32)>,
    headers: Vec<[(u32, u32); 2]>,
}

impl Requests {
    fn clear(&mut self) {
        self.text.clear();
        self.spans.clear();
        self.ips.clear();
        self.header_range.clear();
        self.headers.clear();
    }

    fn span(&mut self, s: Option<&str>) -> (u32, u32) {
        let a = self.text.len();
        if let Some(s) = s {
            self.text.push_str(s);
        }
        (a as u32, self.text.len() as u32)
    }

    fn push(&mut self, e: &gatewatch_event::RequestEvent) {
        let spans = [
            self.span(Some(&e.method)),
            self.span(e.host.as_deref()),
            self.span(Some(&e.path)),
            self.span(e.query.as_deref()),
            self.span(e.user_agent.as_deref()),
            self.span(e.asn.as_deref()),
            self.span(e.country.as_deref()),
            self.span(e.ja4.as_deref()),
        ];
        self.spans.push(spans);
        self.ips.push(e.client_ip);
        let first = self.headers.len() as u32;
        for h in &e.headers {
            let pair = [self.span(Some(&h.0)), self.span(Some(&h.1))];
            self.headers.push(pair);
        }
        self.header_range
            .push((first, self.headers.len() as u32 - first));
    }

    fn str(&self, (a, z): (u32, u32)) -> &str {
        &self.text[a as usize..z as usize]
    }

    /// Record `i`'s headers into `into`.
    pub(crate) fn headers<'a>(&'a self, i: usize, into: &mut Vec<(&'a str, &'a str)>) {
        into.clear();
        let (first, n) = self.header_range[i];
        for [k, v] in &self.headers[first as usize..(first + n) as usize] {
            into.push((self.str(*k), self.str(*v)));
        }
    }

    /// Record `i` of `out` as rules see its request (headers from `headers`).
    pub(crate) fn view<'a>(
        &'a self,
        out: &'a Output,
        i: usize,
        headers: &'a [(&'a str, &'a str)],
    ) -> RequestView<'a> {
        let r = out.record(i);
        let [method, host, path, query, ua, asn, country, ja4] = self.spans[i];
        RequestView {
            ts_ms: r.ts_ms,
            ip: self.ips[i],
            method: self.str(method),
            host: self.str(host),
            path: self.str(path),
            query: self.str(query),
            endpoint: r.endpoint,
            status: r.status,
            client: r.client,
            client_kind: r.client_kind.as_str(),
            user_agent: self.str(ua),
            headers,
            asn: self.str(asn),
            country: self.str(country),
            ja4: self.str(ja4),
        }
    }
}

/// One record of an [`Output`] batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRef<'a> {
    /// Where its event was in the source.
    pub position: Position,
    /// Event time (epoch milliseconds).
    pub ts_ms: i64,
    /// Response status.
    pub status: u16,
    /// The event's `id`, as raw JSON.
    pub id: Option<&'a str>,
    /// The event's `label`, as raw JSON.
    pub label: Option<&'a str>,
    /// Client key with its kind (`ip:203.0.113.7`).
    pub client: &'a str,
    /// The key's kind.
    pub client_kind: KeyKind,
    /// Endpoint template.
    pub endpoint: &'a str,
    /// Feature values in registry order.
    pub features: &'a [f64],
}

impl<'a> RecordRef<'a> {
    /// The label's text (`"normal"` → `normal`; other JSON as it is).
    pub fn label_text(&self) -> Option<Cow<'a, str>> {
        self.label.map(unquote)
    }
}

/// The text of a JSON string literal (`"normal"` → `normal`); other JSON as it is.
pub fn unquote(raw: &str) -> Cow<'_, str> {
    match raw.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        _ => match serde_json::from_str::<String>(raw) {
            Ok(s) => Cow::Owned(s),
            Err(_) => Cow::Borrowed(raw),
        },
    }
}

impl Output {
    /// An empty batch of records with `width` features.
    pub fn new(width: usize) -> Self {
        Self {
            width,
            ..Self::default()
        }
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.ts_ms.len()
    }

    /// True when the batch has no records (it may still have rejections).
    pub fn is_empty(&self) -> bool {
        self.ts_ms.is_empty()
    }

    /// Features per record.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Record `i`.
    pub fn record(&self, i: usize) -> RecordRef<'_> {
        let [id, label, client] = self.spans[i];
        let opt = |(a, z): (usize, usize)| (a != z).then(|| &self.text[a..z]);
        RecordRef {
            position: self.positions[i],
            ts_ms: self.ts_ms[i],
            status: self.status[i],
            id: opt(id),
            label: opt(label),
            client: &self.text[client.0..client.1],
            client_kind: self.kinds[i],
            endpoint: self.batch.endpoint(i),
            features: self.features(i),
        }
    }

    /// The records in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> {
        (0..self.len()).map(|i| self.record(i))
    }

    /// Record `i`'s features.
    pub fn features(&self, i: usize) -> &[f64] {
        &self.batch.rows()[i * self.width..(i + 1) * self.width]
    }

    /// All records' features, row after row.
    pub fn rows(&self) -> &[f64] {
        self.batch.rows()
    }

    /// The scores of the records (index `i` is record `i`), when the session has a model.
    pub fn scores(&self) -> Option<&BatchScores> {
        self.scored.then_some(&self.scores)
    }

    /// Per record, the strongest decision covering it, when the session has rules (empty
    /// otherwise).
    pub fn verdicts(&self) -> &[Option<Verdict>] {
        &self.verdicts
    }

    /// Record `i`'s verdict, when the session has rules and a decision covers it.
    pub fn verdict(&self, i: usize) -> Option<&Verdict> {
        self.verdicts.get(i).and_then(Option::as_ref)
    }

    /// Decisions started, escalated and ended while this batch was decided.
    pub fn decisions(&self) -> &[DecisionEvent] {
        &self.decisions
    }

    /// Client alerts the session's endpoint monitor decided while this batch went through
    /// it (empty without a monitor).
    pub fn client_alerts(&self) -> &[gatewatch_models::ClientAlert] {
        &self.client_alerts
    }

    /// The record at whose event time decision change `j` happened (for a start or an
    /// escalation, the request that caused it).
    pub fn decision_record(&self, j: usize) -> usize {
        self.decision_records[j] as usize
    }

    /// Inputs rejected since the batch before, in the order they were rejected.
    pub fn rejections(&self) -> &[Rejection] {
        &self.rejections
    }

    /// How far the session's output has come once this batch is out.
    pub fn ack(&self) -> Ack {
        self.ack
    }

    /// Empties the batch (buffers are kept).
    pub fn clear(&mut self) {
        self.batch.clear();
        self.positions.clear();
        self.ts_ms.clear();
        self.status.clear();
        self.kinds.clear();
        self.spans.clear();
        self.text.clear();
        self.scored = false;
        self.rejections.clear();
        self.ack = Ack::Nothing;
        if let Some(r) = self.requests.as_mut() {
            r.clear();
        }
        self.verdicts.clear();
        self.decisions.clear();
        self.decision_records.clear();
        self.endpoint_auth.clear();
        self.client_alerts.clear();
    }

    pub(crate) fn set_width(&mut self, width: usize) {
        debug_assert!(self.is_empty());
        self.width = width;
    }

    /// Text bytes held (records' ids, labels and clients).
    pub(crate) fn text_len(&self) -> usize {
        self.text.len() + self.requests.as_ref().map_or(0, |r| r.text.len())
    }

    /// Keeps (or stops keeping) the request fields rules read.
    pub(crate) fn keep_requests(&mut self, keep: bool) {
        match (keep, self.requests.is_some()) {
            (true, false) => self.requests = Some(Requests::default()),
            (false, true) => self.requests = None,
            _ => {}
        }
    }

    pub(crate) fn push(&mut self, position: Position, r: &Record<'_>) {
        let mut span = |s: Option<&str>| {
            let a = self.text.len();
            if let Some(s) = s {
                self.text.push_str(s);
            }
            (a, self.text.len())
        };
        let spans = [
            span(r.event.id.as_deref()),
            span(r.event.label.as_deref()),
            span(Some(r.client)),
        ];
        self.spans.push(spans);
        self.positions.push(position);
        self.ts_ms.push(r.event.ts_ms);
        self.status.push(r.event.status);
        self.kinds.push(r.client_kind);
        self.batch.push(r.features, r.endpoint);
        if let Some(req) = self.requests.as_mut() {
            req.push(r.event);
        }
    }
}
