//! Window features against a naive recomputation over the raw events, for random streams with
//! out-of-order arrivals, at every horizon; and batch / chunked / split-and-restored runs
//! against each other.

use std::net::{IpAddr, Ipv4Addr};

use gatewatch_event::RequestEvent;
use gatewatch_features::{
    Config, ENDPOINT_BUCKET_MS, EPOCH_MS, FeatureEngine, Format, Ingest, LEVEL_EPOCHS, MAX_MEMBERS,
    PointFeature, Registry, VOTE_DECAY, WindowFeature, bit, fnv1a, linear_count,
};
use proptest::prelude::*;

const PATHS: [&str; 8] = [
    "/a",
    "/b/{}",
    "/c/{}/d",
    "/e",
    "/f/{}",
    "/login",
    "/robots.txt",
    "/img/logo.PNG",
];
const STATUSES: [u16; 8] = [200, 200, 201, 401, 403, 404, 429, 503];

fn config(lateness: u64) -> Config {
    config_with(lateness, 3)
}

/// Event time may move 2 s ahead on its own; `confirm` consecutive events confirm a jump.
/// Sixteen endpoint slots: every template of the generated streams keeps its own. The site's
/// time zone puts the streams' start 40 s before local midnight, so `night_ratio` changes.
fn config_with(lateness: u64, confirm: usize) -> Config {
    Config::parse(&format!(
        "[features]\nhorizons_secs = [1, 5, 20]\nbuckets_per_horizon = 5\nendpoint_slots = 16\nallowed_lateness_ms = {lateness}\nclient_idle_ttl_secs = 100000\nmax_future_ms = 2000\nfuture_confirm = {confirm}\nlocal_utc_offset_minutes = 106\n"
    ))
    .unwrap()
}

/// An event of client `client` (its API key) from address `addr` (two /24 networks of three
/// addresses each, so addresses serve several keys and networks several addresses).
#[derive(Debug, Clone)]
struct Raw {
    ts: i64,
    client: u8,
    addr: u8,
    path: usize,
    id: u64,
    status: u16,
    bytes: u64,
    head: bool,
    referred: bool,
}

impl Raw {
    fn method(&self) -> &'static str {
        if self.head { "HEAD" } else { "GET" }
    }
    fn template(&self) -> String {
        format!(
            "{} {}",
            self.method(),
            PATHS[self.path].replace("{}", "{id}")
        )
    }
    fn id(&self) -> Option<u64> {
        PATHS[self.path].contains("{}").then_some(self.id)
    }
    fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, self.addr / 3, self.addr % 3)
    }
    fn net(&self) -> u8 {
        self.addr / 3
    }
    fn event(&self) -> RequestEvent {
        let path = PATHS[self.path].replace("{}", &self.id.to_string());
        let mut e = RequestEvent::new(
            self.ts,
            IpAddr::V4(self.ip()),
            self.method(),
            &path,
            self.status,
        );
        e.resp_bytes = Some(self.bytes);
        e.headers
            .push(("x-api-key".into(), format!("k{}", self.client).into()));
        if self.referred {
            e.headers
                .push(("referer".into(), "https://example.com/".into()));
        }
        e
    }
}

fn stream() -> impl Strategy<Value = Vec<Raw>> {
    prop::collection::vec(
        (
            0i64..1500,
            0i64..400,
            0u8..4,
            0usize..8,
            0u64..8,
            0usize..8,
            0u64..5000,
            0u8..40,
            0u8..8,
            0u8..6,
        ),
        1..150,
    )
    .prop_map(|v| {
        let mut t = 1_700_000_000_000i64;
        v.into_iter()
            .map(
                |(dt, jitter, client, path, id, st, bytes, jump, kind, addr)| {
                    t += dt;
                    // Now and then the log resumes after a gap, or one event carries a wild time.
                    let wild = match jump {
                        0 => 50_000_000,
                        1 => {
                            t += 4_000;
                            0
                        }
                        _ => 0,
                    };
                    Raw {
                        ts: t - jitter + wild,
                        client,
                        addr,
                        path,
                        id,
                        status: STATUSES[st],
                        bytes,
                        head: kind == 0,
                        referred: kind % 2 == 1,
                    }
                },
            )
            .collect()
    })
}

/// The histogram bin of a count: exact for 1–7, then four per octave.
fn vote_bin(c: u32) -> usize {
    if c < 8 {
        return c as usize - 1;
    }
    let l = (c as f64).log2().floor() as usize;
    (7 + (l - 3) * 4 + ((c >> (l - 2)) & 3) as usize).min(39)
}

fn bin_floor(b: usize) -> f64 {
    if b < 7 {
        (b + 1) as f64
    } else {
        ((4 + (b - 7) % 4) << (3 + (b - 7) / 4 - 2)) as f64
    }
}

fn decay_over(n: u64) -> f64 {
    let (mut r, mut b, mut e) = (1.0f64, VOTE_DECAY, n);
    while e > 0 {
        if e & 1 == 1 {
            r *= b;
        }
        b *= b;
        e >>= 1;
    }
    r
}

/// 1 + the weighted median count.
fn typical(v: &[f64; 40]) -> Option<f64> {
    let total: f64 = v.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut cum = 0.0;
    for (b, x) in v.iter().enumerate() {
        cum += x;
        if cum >= total * 0.5 {
            return Some(1.0 + bin_floor(b));
        }
    }
    Some(1.0 + bin_floor(39))
}

/// The naive reference: every feature of every accepted event, recomputed from the raw list.
fn reference(raw: &[Raw], cfg: &Config) -> Vec<(usize, Vec<f64>)> {
    let lateness = cfg.features.allowed_lateness_ms as i64;
    let reg = Registry::new(&cfg.features);
    let b = i64::from(cfg.features.buckets_per_horizon);
    // Acceptance by arrival (events far ahead are held until enough consecutive ones follow
    // them), then processing order by (ts, arrival).
    let future = cfg.features.max_future_ms as i64;
    let confirm = cfg.features.future_confirm;
    let mut max_ts: Option<i64> = None;
    let mut order: Vec<usize> = Vec::new();
    let mut accept = |i: usize, max_ts: &mut Option<i64>| {
        if max_ts.is_some_and(|m| raw[i].ts < m - lateness) {
            return;
        }
        *max_ts = Some(max_ts.map_or(raw[i].ts, |m| m.max(raw[i].ts)));
        order.push(i);
    };
    let mut held: Vec<usize> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let in_bound = max_ts.is_some_and(|m| r.ts <= m + future);
        let held_max = held.iter().map(|&h| raw[h].ts).max();
        if held_max.is_some_and(|h| r.ts >= h - lateness) {
            held.push(i);
        } else if max_ts.is_none() && held_max.is_some_and(|h| r.ts >= h - future) {
            // late for the held events that stand for event time before it has an anchor
        } else if in_bound || max_ts.is_some_and(|m| r.ts < m) {
            held.clear();
            accept(i, &mut max_ts);
        } else {
            held = vec![i];
        }
        if held.len() >= confirm {
            for h in std::mem::take(&mut held) {
                accept(h, &mut max_ts);
            }
        }
    }
    for h in held {
        accept(h, &mut max_ts);
    }
    order.sort_by_key(|&i| (raw[i].ts, i));
    let max_ms = i64::from(*cfg.features.horizons_secs.last().unwrap()) * 1000;
    let mut out = Vec::new();
    let ep_count = |p: usize, q: usize, order: &[usize]| -> u32 {
        // events of q's client on q's endpoint in the endpoint window ending at q, up to p
        let e = &raw[order[q]];
        let cur = e.ts.div_euclid(ENDPOINT_BUCKET_MS);
        order[..=p]
            .iter()
            .filter(|&&j| {
                let x = &raw[j];
                x.client == e.client
                    && x.template() == e.template()
                    && cur - x.ts.div_euclid(ENDPOINT_BUCKET_MS) <= 1
            })
            .count() as u32
    };
    // The population model: statistics of the epochs before each event's epoch.
    let epoch = |q: usize| raw[order[q]].ts.div_euclid(EPOCH_MS);
    let prev = |q: usize| -> Option<String> {
        let c = raw[order[q]].client;
        (0..q)
            .rev()
            .find(|&k| raw[order[k]].client == c)
            .map(|k| raw[order[k]].template())
    };
    // A template is in the endpoint table from the epoch after its first request; before,
    // the overflow endpoint (None) stands for it. Transitions are keyed as they were seen.
    let admitted =
        |t: &str, e: i64| (0..order.len()).any(|q| epoch(q) < e && raw[order[q]].template() == t);
    #[derive(PartialEq)]
    enum From {
        Start,
        Ep(Option<String>),
    }
    let key_at = |q: usize, e: i64| -> (From, Option<String>) {
        let from = match prev(q) {
            None => From::Start,
            Some(t) => From::Ep(admitted(&t, e).then_some(t)),
        };
        let t = raw[order[q]].template();
        (from, admitted(&t, e).then_some(t))
    };
    let mut surprises = vec![0.0; order.len()];
    for (p, surprise) in surprises.iter_mut().enumerate() {
        let e = epoch(p);
        let (from, to) = key_at(p, e);
        let (mut c, mut total) = (0u32, 0u32);
        for q in (0..order.len()).filter(|&q| epoch(q) < e) {
            let (fq, tq) = key_at(q, epoch(q));
            if fq == from {
                total += 1;
                if tq == to {
                    c += 1;
                }
            }
        }
        let templates = 1 + {
            let mut seen: Vec<String> = (0..order.len())
                .filter(|&q| epoch(q) < e)
                .map(|q| raw[order[q]].template())
                .collect();
            seen.sort();
            seen.dedup();
            seen.len()
        };
        *surprise = -((f64::from(c) + 1.0) / (f64::from(total) + templates as f64)).log2();
    }
    for p in 0..order.len() {
        let e = &raw[order[p]];
        let mut f = vec![0.0; reg.len()];
        let mine: Vec<usize> = (0..=p)
            .filter(|&q| raw[order[q]].client == e.client)
            .collect();
        for (h, &hs) in cfg.features.horizons_secs.iter().enumerate() {
            let hms = i64::from(hs) * 1000;
            let width = hms / b;
            let cur = e.ts.div_euclid(width);
            let win: Vec<usize> = mine
                .iter()
                .copied()
                .filter(|&q| cur - raw[order[q]].ts.div_euclid(width) < b)
                .collect();
            let n = win.len() as f64;
            let st = |pred: &dyn Fn(u16) -> bool| {
                win.iter().filter(|&&q| pred(raw[order[q]].status)).count() as f64 / n
            };
            let mut gaps = Vec::new();
            let (mut ep_bits, mut id_bits, mut seq, mut surprise, mut bytes) =
                (0u64, 0u64, 0.0, 0.0, 0.0);
            let (mut asset, mut referred, mut head, mut robots, mut night) =
                (0.0, 0.0, 0.0, 0.0, 0.0);
            for &q in &win {
                let x = &raw[order[q]];
                let k = mine.iter().position(|&m| m == q).unwrap();
                if k > 0 {
                    gaps.push(((x.ts - raw[order[mine[k - 1]]].ts).min(hms)) as f64);
                }
                let eh = fnv1a(x.template().as_bytes());
                ep_bits |= bit(eh);
                if let Some(id) = x.id() {
                    id_bits |= bit(fnv1a(id.to_string().as_bytes()) ^ eh.rotate_left(17));
                    let last = mine[..k]
                        .iter()
                        .rev()
                        .map(|&m| &raw[order[m]])
                        .find(|y| y.template() == x.template());
                    if let Some(prev_id) = last.and_then(Raw::id) {
                        if (1..=2).contains(&id.abs_diff(prev_id)) {
                            seq += 1.0;
                        }
                    }
                }
                surprise += surprises[q];
                bytes += x.bytes as f64;
                asset += f64::from(u8::from(PATHS[x.path].ends_with(".PNG")));
                referred += f64::from(u8::from(x.referred));
                head += f64::from(u8::from(x.head));
                robots += f64::from(u8::from(PATHS[x.path] == "/robots.txt"));
                // Local time 00:00–06:00 at the configured offset of 106 minutes.
                let local_hour = (x.ts + 106 * 60_000).div_euclid(3_600_000).rem_euclid(24);
                night += f64::from(u8::from(local_hour < 6));
            }
            let o = |wf: WindowFeature| Registry::window_index(h, wf);
            f[o(WindowFeature::ReqCount)] = n;
            f[o(WindowFeature::ReqRate)] = n / f64::from(hs);
            f[o(WindowFeature::ErrorRatio)] = st(&|s| s >= 400);
            f[o(WindowFeature::AuthFailRatio)] = st(&|s| s == 401 || s == 403);
            f[o(WindowFeature::NotFoundRatio)] = st(&|s| s == 404);
            f[o(WindowFeature::ThrottledRatio)] = st(&|s| s == 429);
            f[o(WindowFeature::ServerErrorRatio)] = st(&|s| s >= 500);
            f[o(WindowFeature::BytesMean)] = bytes / n;
            f[o(WindowFeature::IatCv)] = 1.0;
            if gaps.is_empty() {
                f[o(WindowFeature::IatMean)] = f64::from(hs);
                f[o(WindowFeature::IatMin)] = f64::from(hs);
            } else {
                let g = gaps.len() as f64;
                let mean = gaps.iter().sum::<f64>() / g;
                f[o(WindowFeature::IatMean)] = mean / 1000.0;
                f[o(WindowFeature::IatMin)] =
                    gaps.iter().copied().fold(f64::INFINITY, f64::min) / 1000.0;
                if gaps.len() >= 2 {
                    let var = gaps.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / g;
                    f[o(WindowFeature::IatCv)] = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };
                }
            }
            f[o(WindowFeature::DistinctEndpoints)] = linear_count(ep_bits);
            f[o(WindowFeature::DistinctIds)] = linear_count(id_bits);
            f[o(WindowFeature::SeqIdRatio)] = seq / n;
            f[o(WindowFeature::SurpriseMean)] = surprise / n;
            f[o(WindowFeature::AssetRatio)] = asset / n;
            f[o(WindowFeature::ReferrerRatio)] = referred / n;
            f[o(WindowFeature::HeadRatio)] = head / n;
            f[o(WindowFeature::RobotsCount)] = robots;
            f[o(WindowFeature::NightRatio)] = night / n;
        }
        let k = mine.len() - 1;
        f[reg.point_index(PointFeature::SecsSincePrev)] = if k == 0 {
            max_ms
        } else {
            (e.ts - raw[order[mine[k - 1]]].ts).min(max_ms)
        } as f64
            / 1000.0;
        f[reg.point_index(PointFeature::ClientAgeSecs)] =
            (e.ts - raw[order[mine[0]]].ts) as f64 / 1000.0;
        f[reg.point_index(PointFeature::TransitionSurprise)] = surprises[p];
        let count = ep_count(p, p, &order);
        f[reg.point_index(PointFeature::EndpointCount)] = f64::from(count);
        // Entropy over this client's endpoints in the endpoint window.
        let cur = e.ts.div_euclid(ENDPOINT_BUCKET_MS);
        let mut per: std::collections::BTreeMap<String, f64> = Default::default();
        for &q in &mine {
            let x = &raw[order[q]];
            if cur - x.ts.div_euclid(ENDPOINT_BUCKET_MS) <= 1 {
                *per.entry(x.template()).or_default() += 1.0;
            }
        }
        let t: f64 = per.values().sum();
        f[reg.point_index(PointFeature::EndpointEntropy)] =
            -per.values().map(|c| (c / t) * (c / t).log2()).sum::<f64>();
        let e_p = epoch(p);
        let pop = (0..order.len())
            .filter(|&q| {
                raw[order[q]].template() == e.template() && (1..=2).contains(&(e_p - epoch(q)))
            })
            .count();
        f[reg.point_index(PointFeature::EndpointPopRate)] = pop as f64 / 60.0;
        // Votes: per client and earlier epoch, the bin of its count at its last request to
        // this endpoint in that epoch; folded epoch by epoch with the decay.
        let mut votes = [0.0f64; 40];
        let mut last_epoch: Option<i64> = None;
        for ve in (0..order.len())
            .map(epoch)
            .filter(|&x| x < e_p)
            .collect::<std::collections::BTreeSet<_>>()
        {
            let mut add = [0i32; 40];
            for client in 0..=255u8 {
                let last = (0..order.len()).rev().find(|&q| {
                    epoch(q) == ve
                        && raw[order[q]].client == client
                        && raw[order[q]].template() == e.template()
                });
                if let Some(q) = last {
                    add[vote_bin(ep_count(q, q, &order))] += 1;
                }
            }
            if add.iter().any(|v| *v != 0) {
                let d = last_epoch.map_or(1.0, |l| decay_over((ve - l) as u64));
                for (v, n) in votes.iter_mut().zip(add) {
                    *v = (*v * d + f64::from(n)).max(0.0);
                }
                last_epoch = Some(ve);
            }
        }
        f[reg.point_index(PointFeature::EndpointRateRatio)] = match typical(&votes) {
            Some(t) => (1.0 + f64::from(count)) / t,
            None => 1.0,
        };
        // Key levels: the address's and the network's requests in the 20 epochs before.
        let before: Vec<&Raw> = (0..order.len())
            .filter(|&q| (1..=LEVEL_EPOCHS).contains(&(e_p - epoch(q))))
            .map(|q| &raw[order[q]])
            .collect();
        let level = |same: &dyn Fn(&Raw) -> bool, member: &dyn Fn(&Raw) -> u8| {
            let mine: Vec<&&Raw> = before.iter().filter(|x| same(x)).collect();
            let failed = mine
                .iter()
                .filter(|x| [401, 403].contains(&x.status))
                .count();
            let members: std::collections::BTreeSet<u8> = mine.iter().map(|x| member(x)).collect();
            (
                mine.len() as f64,
                failed as f64,
                members.len().min(MAX_MEMBERS) as f64,
            )
        };
        let (r, fl, m) = level(&|x| x.addr == e.addr, &|x| x.client);
        f[reg.point_index(PointFeature::AddrRequests)] = r;
        f[reg.point_index(PointFeature::AddrAuthFailures)] = fl;
        f[reg.point_index(PointFeature::AddrClients)] = m;
        let (r, fl, m) = level(&|x| x.net() == e.net(), &|x| x.addr);
        f[reg.point_index(PointFeature::NetRequests)] = r;
        f[reg.point_index(PointFeature::NetAuthFailures)] = fl;
        f[reg.point_index(PointFeature::NetAddrs)] = m;
        out.push((order[p], f));
    }
    out
}

fn run(raw: &[Raw], cfg: &Config) -> Vec<(usize, Vec<f64>)> {
    let mut eng = FeatureEngine::new(cfg).unwrap();
    let mut out = Vec::new();
    let mut sink =
        |r: &gatewatch_features::Record<'_>| out.push((r.line as usize, r.features.to_vec()));
    for (i, r) in raw.iter().enumerate() {
        eng.push(r.event(), i as u64, &mut sink, &mut |_| {});
    }
    eng.finish(&mut sink);
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn features_equal_naive_recomputation(raw in stream(), lateness in prop::sample::select(vec![0u64, 150, 300, 10_000]), confirm in 1usize..5) {
        let cfg = config_with(lateness, confirm);
        let names: Vec<String> = Registry::new(&cfg.features).names().map(String::from).collect();
        let got = run(&raw, &cfg);
        let want = reference(&raw, &cfg);
        prop_assert_eq!(got.len(), want.len(), "accepted events");
        for ((gi, g), (wi, w)) in got.iter().zip(&want) {
            prop_assert_eq!(gi, wi, "processing order");
            for (k, (a, b)) in g.iter().zip(w).enumerate() {
                prop_assert!(close(*a, *b), "event {} feature {}: engine {} reference {}", gi, names[k], a, b);
            }
        }
    }
}

fn ndjson(raw: &[Raw]) -> Vec<u8> {
    let mut s = String::new();
    for (i, r) in raw.iter().enumerate() {
        let e = r.event();
        let referer = if r.referred {
            ",\"Referer\":\"https://example.com/\""
        } else {
            ""
        };
        let headers = format!(",\"headers\":{{\"X-Api-Key\":\"k{}\"{referer}}}", r.client);
        s.push_str(&format!(
            "{{\"id\":{i},\"ts\":{},\"client_ip\":\"{}\",\"method\":\"{}\",\"path\":\"{}\",\"status\":{},\"resp_bytes\":{}{headers}}}\n",
            e.ts_ms,
            e.client_ip,
            r.method(),
            e.path,
            e.status,
            r.bytes
        ));
        if i % 17 == 5 {
            s.push_str("{\"ts\": \"garbage\"}\n");
        }
    }
    s.into_bytes()
}

type Out = (Vec<(u64, String, Vec<u64>)>, Vec<String>);

fn ingest(bytes: &[u8], cuts: &[usize], cfg: &Config) -> Out {
    let mut eng = FeatureEngine::new(cfg).unwrap();
    let mut ing = Ingest::new(Format::Ndjson);
    let mut recs = Vec::new();
    let mut errs = Vec::new();
    let mut sink = |r: &gatewatch_features::Record<'_>| {
        recs.push((
            r.line,
            r.client.to_string(),
            r.features.iter().map(|f| f.to_bits()).collect(),
        ));
    };
    let mut reject = |e: gatewatch_features::Rejection| errs.push(e.to_string());
    let mut start = 0;
    for &c in cuts {
        let c = c.min(bytes.len()).max(start);
        ing.feed(&mut eng, &bytes[start..c], &mut sink, &mut reject);
        start = c;
    }
    ing.feed(&mut eng, &bytes[start..], &mut sink, &mut reject);
    ing.finish(&mut eng, &mut sink, &mut reject);
    (recs, errs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// A log processed whole equals the same log fed in arbitrary chunks, bit for bit.
    #[test]
    fn chunked_equals_whole(raw in stream(), mut cuts in prop::collection::vec(0usize..20_000, 0..40)) {
        let cfg = config(300);
        let bytes = ndjson(&raw);
        cuts.sort_unstable();
        let whole = ingest(&bytes, &[], &cfg);
        let chunked = ingest(&bytes, &cuts, &cfg);
        prop_assert!(!whole.1.is_empty() || raw.len() < 6);
        prop_assert_eq!(whole, chunked);
    }

    /// Saving the state half-way and restoring it into a new engine changes nothing.
    #[test]
    fn snapshot_restore_continues_identically(raw in stream(), at in 0usize..150) {
        let cfg = config(0);
        let mut sorted = raw.clone();
        sorted.sort_by_key(|r| r.ts);
        let at = at.min(sorted.len());
        let full = run(&sorted, &cfg);
        let mut a = FeatureEngine::new(&cfg).unwrap();
        let mut out = Vec::new();
        let mut sink = |r: &gatewatch_features::Record<'_>| out.push((r.line as usize, r.features.to_vec()));
        for (i, r) in sorted[..at].iter().enumerate() {
            a.push(r.event(), i as u64, &mut sink, &mut |l| panic!("refused: {l}"));
        }
        a.finish(&mut sink);
        let mut bytes = Vec::new();
        a.save_state(&mut bytes).unwrap();
        let mut b = FeatureEngine::new(&cfg).unwrap();
        b.restore_state(&mut bytes.as_slice()).unwrap();
        for (i, r) in sorted.iter().enumerate().skip(at) {
            b.push(r.event(), i as u64, &mut sink, &mut |l| panic!("refused: {l}"));
        }
        b.finish(&mut sink);
        prop_assert_eq!(out, full);
    }
}
