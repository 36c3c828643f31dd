//! Per-client window state and its update: the arithmetic behind every feature.

use serde::{Deserialize, Serialize};

use crate::config::FeatureConfig;
use crate::registry::{ENDPOINT_BUCKET_MS, PointFeature, Registry, WindowFeature};
use crate::sketch::{bit, linear_count};

/// No id.
const NO_ID: u64 = u64::MAX;

/// The window arithmetic of a configuration.
#[derive(Debug, Clone)]
pub(crate) struct Windows {
    /// Bucket width per horizon, ms.
    pub widths_ms: Vec<i64>,
    /// Horizon lengths, ms.
    pub horizons_ms: Vec<i64>,
    /// Buckets per window.
    pub buckets: u32,
    /// Longest horizon, ms.
    pub max_ms: i64,
    /// Endpoint slots per client.
    pub slots: usize,
    /// Per horizon, whether its window features are computed: all of them, or with a
    /// `select`ion only the horizons of selected window features (the others keep no
    /// buckets).
    pub active: [bool; 8],
    /// The site's offset from UTC, ms (`night_ratio`).
    pub local_offset_ms: i64,
}

impl Windows {
    pub fn new(cfg: &FeatureConfig) -> Self {
        let horizons_ms: Vec<i64> = cfg
            .horizons_secs
            .iter()
            .map(|h| i64::from(*h) * 1000)
            .collect();
        let widths_ms = horizons_ms
            .iter()
            .map(|h| h / i64::from(cfg.buckets_per_horizon))
            .collect();
        let max_ms = *horizons_ms.last().unwrap_or(&3_600_000);
        let mut active = [false; 8];
        match &cfg.select {
            None => active
                .iter_mut()
                .take(horizons_ms.len())
                .for_each(|a| *a = true),
            Some(names) => {
                let all = Registry::all(cfg);
                for n in names {
                    let h = all
                        .index_of(n)
                        .and_then(|i| all.features[i].horizon_secs)
                        .and_then(|h| cfg.horizons_secs.iter().position(|x| *x == h));
                    if let Some(h) = h {
                        active[h] = true;
                    }
                }
            }
        }
        Self {
            widths_ms,
            horizons_ms,
            buckets: cfg.buckets_per_horizon,
            max_ms,
            slots: cfg.endpoint_slots,
            active,
            local_offset_ms: i64::from(cfg.local_utc_offset_minutes) * 60_000,
        }
    }

    /// Whether a timestamp falls between 00:00 and 06:00 in the site's time zone.
    pub fn is_night(&self, ts_ms: i64) -> bool {
        ts_ms
            .saturating_add(self.local_offset_ms)
            .div_euclid(3_600_000)
            .rem_euclid(24)
            < 6
    }
}

/// Bucket index of a timestamp (wrapping: only differences are ever used).
#[inline]
pub(crate) fn bucket_of(ts_ms: i64, width_ms: i64) -> u32 {
    ts_ms.div_euclid(width_ms) as u32
}

/// Bucket indices wrap at 2^29 (only differences within a window are used); the top three
/// bits of a bucket's tag hold its horizon.
const IDX_MASK: u32 = (1 << 29) - 1;

/// The aggregates of one bucket of one horizon (96 bytes). Gaps are whole milliseconds,
/// capped at the horizon, so their sums are exact integers: within one bucket the gaps add up
/// to at most the bucket width plus one horizon.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bucket {
    /// Horizon (3 bits) and bucket index (29 bits).
    pub tag: u32,
    pub n: u32,
    pub err: u32,
    pub auth: u32,
    pub nf: u32,
    pub rl: u32,
    pub s5: u32,
    pub seq: u32,
    pub asset: u32,
    pub referred: u32,
    pub head: u32,
    pub robots: u32,
    pub night: u32,
    /// Smallest gap, ms (`u32::MAX` when none).
    pub gap_min: u32,
    /// Sum of gaps, ms.
    pub gap_sum: u32,
    /// Sum of squared gaps, ms².
    pub gap_sq: u64,
    pub bytes: u64,
    pub surprise: f64,
    pub ep_bits: u64,
    pub id_bits: u64,
}

impl Bucket {
    fn empty(h: usize, idx: u32) -> Self {
        Self {
            tag: ((h as u32) << 29) | (idx & IDX_MASK),
            n: 0,
            err: 0,
            auth: 0,
            nf: 0,
            rl: 0,
            s5: 0,
            seq: 0,
            asset: 0,
            referred: 0,
            head: 0,
            robots: 0,
            night: 0,
            gap_min: u32::MAX,
            gap_sum: 0,
            gap_sq: 0,
            bytes: 0,
            surprise: 0.0,
            ep_bits: 0,
            id_bits: 0,
        }
    }

    #[inline]
    fn h(&self) -> usize {
        (self.tag >> 29) as usize
    }

    #[inline]
    fn idx(&self) -> u32 {
        self.tag & IDX_MASK
    }
}

/// A window's sums (wider than a bucket's).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Agg {
    pub n: u32,
    pub err: u32,
    pub auth: u32,
    pub nf: u32,
    pub rl: u32,
    pub s5: u32,
    pub seq: u32,
    pub asset: u32,
    pub referred: u32,
    pub head: u32,
    pub robots: u32,
    pub night: u32,
    /// Requests in the window that have a previous request of the same client.
    pub gaps: u32,
    pub gap_min: u32,
    pub gap_sum: u64,
    pub gap_sq: f64,
    pub bytes: u64,
    pub surprise: f64,
    pub ep_bits: u64,
    pub id_bits: u64,
}

/// Counts in the endpoint window: the current bucket and the one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TwoBuckets {
    /// Bucket of `cur`.
    pub idx: u32,
    pub cur: u32,
    pub prev: u32,
}

impl TwoBuckets {
    /// Counts one request in bucket `now` (never before the last one counted) and returns the
    /// window's count.
    pub fn add(&mut self, now: u32) -> u32 {
        match now.wrapping_sub(self.idx) {
            0 if self.cur > 0 => self.cur += 1,
            1 => {
                self.prev = self.cur;
                self.cur = 1;
            }
            _ => {
                self.prev = 0;
                self.cur = 1;
            }
        }
        self.idx = now;
        self.cur + self.prev
    }

    /// Requests in the window ending in bucket `now`.
    pub fn count_at(&self, now: u32) -> u32 {
        match now.wrapping_sub(self.idx) {
            0 => self.cur + self.prev,
            1 => self.cur,
            _ => 0,
        }
    }
}

/// A client's state for one endpoint (a small LRU of slots per client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// The endpoint template's hash (its low 32 bits).
    pub ep: u32,
    pub win: TwoBuckets,
    /// Last numeric id used on this endpoint.
    pub last_id: u64,
}

/// All the state of one client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientState {
    pub(crate) first_ts: i64,
    pub(crate) last_ts: i64,
    /// Hash of the template of the client's previous request.
    pub(crate) prev_ep: Option<u64>,
    pub(crate) buckets: Vec<Bucket>,
    pub(crate) slots: Vec<Slot>,
}

/// What one request contributes, after normalisation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Obs {
    pub ts: i64,
    pub ep_hash: u64,
    pub status: u16,
    pub bytes: u64,
    /// Hash of (endpoint, last id value), when the path carries an id.
    pub id_hash: Option<u64>,
    /// The last id, when numeric.
    pub num_id: Option<u64>,
    pub surprise: f64,
    /// What kind of request it is (see [`RequestKind`]).
    pub kind: RequestKind,
}

/// The web-robot signals of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestKind {
    pub asset: bool,
    pub referred: bool,
    pub head: bool,
    pub robots: bool,
    /// Made between 00:00 and 06:00 local time.
    pub night: bool,
}

/// Extensions of static assets (`asset_ratio`).
const ASSET_EXTENSIONS: [&str; 21] = [
    "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "bmp",
    "woff", "woff2", "ttf", "otf", "eot", "mp4", "webm", "mp3",
];

impl RequestKind {
    /// The signals of a request: its method, its path (without the query) and whether it
    /// carries a referer.
    pub fn of(method: &str, path: &str, referred: bool) -> Self {
        let last = path.rsplit('/').next().unwrap_or("");
        let asset = last
            .rsplit_once('.')
            .is_some_and(|(_, ext)| ASSET_EXTENSIONS.iter().any(|a| a.eq_ignore_ascii_case(ext)));
        Self {
            asset,
            referred,
            head: method == "HEAD",
            robots: path == "/robots.txt",
            night: false,
        }
    }
}

impl ClientState {
    pub(crate) fn new(ts: i64) -> Self {
        Self {
            first_ts: ts,
            last_ts: i64::MIN,
            prev_ep: None,
            buckets: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Checks a restored state against the window arithmetic of this configuration and the
    /// what [`update`](Self::update) relies on.
    pub(crate) fn validate(&self, w: &Windows) -> Result<(), String> {
        use gatewatch_event::{MAX_TS_MS, MIN_TS_MS};
        let in_range = |t: i64| (MIN_TS_MS..=MAX_TS_MS).contains(&t);
        if !in_range(self.first_ts) || (self.last_ts != i64::MIN && !in_range(self.last_ts)) {
            return Err(format!(
                "timestamps out of range (first {}, last {})",
                self.first_ts, self.last_ts
            ));
        }
        if self.last_ts != i64::MIN && self.last_ts < self.first_ts {
            return Err("last seen before first seen".into());
        }
        if self.slots.len() > w.slots {
            return Err(format!(
                "{} endpoint slots, the configuration has {}",
                self.slots.len(),
                w.slots
            ));
        }
        if let Some((i, _)) = self
            .slots
            .iter()
            .enumerate()
            .find(|(i, s)| self.slots[..*i].iter().any(|o| o.ep == s.ep))
        {
            return Err(format!("endpoint slot {i} repeats an endpoint"));
        }
        let nh = w.widths_ms.len();
        if self.buckets.len() > nh * w.buckets as usize {
            return Err(format!(
                "{} buckets, at most {} in this configuration",
                self.buckets.len(),
                nh * w.buckets as usize
            ));
        }
        let mut per_h = [0u64; 8];
        for (i, b) in self.buckets.iter().enumerate() {
            let h = b.h();
            if h >= nh {
                return Err(format!("bucket of horizon {h}, the configuration has {nh}"));
            }
            if !w.active[h] {
                return Err(format!(
                    "bucket of horizon {h}, whose features this configuration does not compute"
                ));
            }
            if self.buckets[..i].iter().any(|o| o.tag == b.tag) {
                return Err("two buckets for the same time".into());
            }
            let counts = [
                b.err, b.auth, b.nf, b.rl, b.s5, b.seq, b.asset, b.referred, b.head, b.robots,
                b.night,
            ];
            let bound = w.widths_ms[h].unsigned_abs() + w.horizons_ms[h].unsigned_abs();
            if b.n == 0
                || counts.iter().any(|c| *c > b.n)
                || u64::from(b.gap_sum) > bound
                || (b.gap_min != u32::MAX && i64::from(b.gap_min) > w.horizons_ms[h])
                || !b.surprise.is_finite()
                || b.surprise < 0.0
            {
                return Err(format!("bucket {i} has inconsistent counts"));
            }
            per_h[h] += u64::from(b.n);
        }
        if per_h.iter().any(|n| *n > u64::from(u32::MAX / 2)) {
            return Err("request counts too large".into());
        }
        Ok(())
    }

    /// Last time this client was seen.
    pub fn last_ts(&self) -> i64 {
        self.last_ts
    }

    /// Heap bytes owned by this state.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    /// Adds one request and writes the client's features into `out` (window features of every
    /// horizon, then `secs_since_prev`, `client_age_secs`, `endpoint_count_1m` and
    /// `endpoint_entropy_1m`; the population features are written by the caller). Returns the
    /// client's count on this endpoint in the endpoint window, and whether its previous
    /// request on the endpoint was in the same endpoint bucket (population epoch): what the
    /// population's per-client vote needs.
    pub(crate) fn update(
        &mut self,
        o: &Obs,
        w: &Windows,
        reg: &Registry,
        out: &mut [f64],
    ) -> (u32, bool) {
        let ep = o.ep_hash as u32;
        let gap = (self.last_ts != i64::MIN).then(|| (o.ts - self.last_ts).max(0));

        // Endpoint slots.
        let eidx = bucket_of(o.ts, ENDPOINT_BUCKET_MS);
        let mut seq_step = false;
        let mut repeat = false;
        let pos = match self.slots.iter().position(|s| s.ep == ep) {
            Some(i) => {
                let s = &mut self.slots[i];
                repeat = s.win.idx == eidx;
                s.win.add(eidx);
                if let (Some(n), true) = (o.num_id, s.last_id != NO_ID) {
                    let d = n.abs_diff(s.last_id);
                    seq_step = (1..=2).contains(&d);
                }
                if let Some(n) = o.num_id {
                    s.last_id = n;
                }
                i
            }
            None => {
                let mut win = TwoBuckets::default();
                win.add(eidx);
                let slot = Slot {
                    ep,
                    win,
                    last_id: o.num_id.unwrap_or(NO_ID),
                };
                if self.slots.len() < w.slots {
                    if self.slots.len() == self.slots.capacity() {
                        self.slots.reserve_exact(1);
                    }
                    self.slots.push(slot);
                    self.slots.len() - 1
                } else {
                    // Reuse the least recently used slot (oldest bucket; first of equals).
                    let mut i = 0;
                    for (j, s) in self.slots.iter().enumerate() {
                        if eidx.wrapping_sub(s.win.idx) > eidx.wrapping_sub(self.slots[i].win.idx) {
                            i = j;
                        }
                    }
                    self.slots[i] = slot;
                    i
                }
            }
        };
        let endpoint_count = self.slots[pos].win.count_at(eidx);
        let mut total = 0u32;
        for s in &self.slots {
            total += s.win.count_at(eidx);
        }
        let mut entropy = 0.0;
        if total > 0 {
            let t = f64::from(total);
            for s in &self.slots {
                let c = s.win.count_at(eidx);
                if c > 0 {
                    let p = f64::from(c) / t;
                    entropy -= p * p.log2();
                }
            }
        }

        // Buckets: prune what left every window, find or add this event's bucket per horizon.
        let nh = w.widths_ms.len();
        let mut cur = [0u32; 8];
        for (h, width) in w.widths_ms.iter().enumerate() {
            cur[h] = bucket_of(o.ts, *width) & IDX_MASK;
        }
        let mut found = [usize::MAX; 8];
        let mut i = 0;
        while i < self.buckets.len() {
            let b = &self.buckets[i];
            let h = b.h();
            if cur[h].wrapping_sub(b.idx()) & IDX_MASK >= w.buckets {
                self.buckets.swap_remove(i);
                continue;
            }
            if b.idx() == cur[h] {
                found[h] = i;
            }
            i += 1;
        }
        for h in 0..nh {
            if !w.active[h] {
                continue;
            }
            if found[h] == usize::MAX {
                found[h] = self.buckets.len();
                if self.buckets.len() == self.buckets.capacity() {
                    self.buckets.reserve_exact(1);
                }
                self.buckets.push(Bucket::empty(h, cur[h]));
            }
            let b = &mut self.buckets[found[h]];
            b.n += 1;
            let st = o.status;
            b.err += u32::from(st >= 400);
            b.auth += u32::from(st == 401 || st == 403);
            b.nf += u32::from(st == 404);
            b.rl += u32::from(st == 429);
            b.s5 += u32::from(st >= 500);
            b.seq += u32::from(seq_step);
            b.asset += u32::from(o.kind.asset);
            b.referred += u32::from(o.kind.referred);
            b.head += u32::from(o.kind.head);
            b.robots += u32::from(o.kind.robots);
            b.night += u32::from(o.kind.night);
            b.bytes = b.bytes.saturating_add(o.bytes);
            b.surprise += o.surprise;
            b.ep_bits |= bit(o.ep_hash);
            if let Some(ih) = o.id_hash {
                b.id_bits |= bit(ih);
            }
            if let Some(g) = gap {
                let g = g.min(w.horizons_ms[h]) as u32;
                b.gap_sum += g;
                b.gap_sq += u64::from(g) * u64::from(g);
                b.gap_min = b.gap_min.min(g);
            }
        }
        if self.buckets.capacity() > self.buckets.len() + 4 {
            self.buckets.shrink_to_fit();
        }

        // Window features: sum every horizon's buckets in one pass.
        let mut agg = [Agg {
            gap_min: u32::MAX,
            ..Agg::default()
        }; 8];
        for b in &self.buckets {
            let a = &mut agg[b.h()];
            a.n += b.n;
            a.err += b.err;
            a.auth += b.auth;
            a.nf += b.nf;
            a.rl += b.rl;
            a.s5 += b.s5;
            a.seq += b.seq;
            a.asset += b.asset;
            a.referred += b.referred;
            a.head += b.head;
            a.robots += b.robots;
            a.night += b.night;
            a.gap_min = a.gap_min.min(b.gap_min);
            a.gap_sum += u64::from(b.gap_sum);
            a.gap_sq += b.gap_sq as f64;
            a.bytes = a.bytes.saturating_add(b.bytes);
            a.surprise += b.surprise;
            a.ep_bits |= b.ep_bits;
            a.id_bits |= b.id_bits;
        }
        for (h, a) in agg.iter_mut().enumerate().take(nh) {
            if !w.active[h] {
                continue;
            }
            // Every request in the window has a gap except the client's first one.
            let first = bucket_of(self.first_ts, w.widths_ms[h]) & IDX_MASK;
            let first_in_window =
                self.last_ts == i64::MIN || cur[h].wrapping_sub(first) & IDX_MASK < w.buckets;
            a.gaps = a.n - u32::from(first_in_window);
            window_features(
                a,
                w.horizons_ms[h],
                &mut out[h * WindowFeature::COUNT..(h + 1) * WindowFeature::COUNT],
            );
        }

        let since = gap.map_or(w.max_ms, |g| g.min(w.max_ms));
        out[reg.point_index(PointFeature::SecsSincePrev)] = since as f64 / 1000.0;
        out[reg.point_index(PointFeature::ClientAgeSecs)] = (o.ts - self.first_ts) as f64 / 1000.0;
        out[reg.point_index(PointFeature::EndpointCount)] = f64::from(endpoint_count);
        out[reg.point_index(PointFeature::EndpointEntropy)] = entropy;

        self.last_ts = o.ts;
        self.prev_ep = Some(o.ep_hash);
        (endpoint_count, repeat)
    }
}

/// Window features from a window's summed aggregates (shared with the reference in tests).
pub(crate) fn window_features(a: &Agg, horizon_ms: i64, out: &mut [f64]) {
    use WindowFeature as F;
    let n = f64::from(a.n.max(1));
    let hs = horizon_ms as f64 / 1000.0;
    out[F::ReqCount as usize] = f64::from(a.n);
    out[F::ReqRate as usize] = f64::from(a.n) / hs;
    out[F::ErrorRatio as usize] = f64::from(a.err) / n;
    out[F::AuthFailRatio as usize] = f64::from(a.auth) / n;
    out[F::NotFoundRatio as usize] = f64::from(a.nf) / n;
    out[F::ThrottledRatio as usize] = f64::from(a.rl) / n;
    out[F::ServerErrorRatio as usize] = f64::from(a.s5) / n;
    out[F::BytesMean as usize] = a.bytes as f64 / n;
    if a.gaps == 0 {
        out[F::IatMean as usize] = hs;
        out[F::IatMin as usize] = hs;
        out[F::IatCv as usize] = 1.0;
    } else {
        let g = f64::from(a.gaps);
        let mean = a.gap_sum as f64 / g;
        out[F::IatMean as usize] = mean / 1000.0;
        out[F::IatMin as usize] = f64::from(a.gap_min) / 1000.0;
        out[F::IatCv as usize] = if a.gaps < 2 {
            1.0
        } else if mean <= 0.0 {
            0.0
        } else {
            let var = (a.gap_sq / g - mean * mean).max(0.0);
            var.sqrt() / mean
        };
    }
    out[F::DistinctEndpoints as usize] = linear_count(a.ep_bits);
    out[F::DistinctIds as usize] = linear_count(a.id_bits);
    out[F::SeqIdRatio as usize] = f64::from(a.seq) / n;
    out[F::SurpriseMean as usize] = a.surprise / n;
    out[F::AssetRatio as usize] = f64::from(a.asset) / n;
    out[F::ReferrerRatio as usize] = f64::from(a.referred) / n;
    out[F::HeadRatio as usize] = f64::from(a.head) / n;
    out[F::RobotsCount as usize] = f64::from(a.robots);
    out[F::NightRatio as usize] = f64::from(a.night) / n;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_layout() {
        assert_eq!(std::mem::size_of::<Bucket>(), 104);
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }
}
