//! A seeded, deterministic generator of labelled API traffic.
//!
//! The simulated API is a shop (`api.shop.example`): log in, browse and search products, look
//! at one's profile and orders, fill a cart, check out and pay; a public health endpoint is
//! probed by monitors. Normal users come as browser sessions (JWT after login, think times,
//! navigation, parallel sub-requests, shared NAT addresses, occasional errors), API
//! integrations (API key, periodic sync bursts) and anonymous visitors. Abuse scenarios run on
//! top, each labelled with its name; benign traffic is labelled `normal`.
//!
//! The same seed and options give the same events, byte for byte, on every machine.

mod rng;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine;
use gatewatch_event::RequestEvent;

pub use rng::Rng;

/// The host of the simulated API.
pub const HOST: &str = "api.shop.example";
/// Start of simulated time when none is given: 2026-01-05T09:00:00Z.
pub const DEFAULT_START_MS: i64 = 1_767_603_600_000;
const PRODUCTS: u64 = 5000;

/// An abuse scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// Many addresses trying leaked credentials on the login endpoint.
    CredentialStuffing,
    /// An authenticated user walking other users' object ids (BOLA).
    BolaEnumeration,
    /// A catalogue scraper with machine-regular timing.
    Scraping,
    /// One client flooding one endpoint.
    Volumetric,
    /// Login attempts spread thinly over many addresses and the whole run.
    LowAndSlow,
    /// Payment calls without the browse → cart → checkout flow (card testing).
    SequenceAbuse,
    /// One address logging into many leaked accounts in turn, each used briefly.
    AccountTakeover,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 7] = [
        Self::CredentialStuffing,
        Self::BolaEnumeration,
        Self::Scraping,
        Self::Volumetric,
        Self::LowAndSlow,
        Self::SequenceAbuse,
        Self::AccountTakeover,
    ];

    /// The name used in options and labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::CredentialStuffing => "credential_stuffing",
            Self::BolaEnumeration => "bola_enumeration",
            Self::Scraping => "scraping",
            Self::Volumetric => "volumetric",
            Self::LowAndSlow => "low_and_slow",
            Self::SequenceAbuse => "sequence_abuse",
            Self::AccountTakeover => "account_takeover",
        }
    }

    /// One line about it.
    pub fn description(self) -> &'static str {
        match self {
            Self::CredentialStuffing => {
                "15 addresses POST /v1/auth/login ~1.4/s each for 3–6 min, ~97% 401"
            }
            Self::BolaEnumeration => {
                "a logged-in user walks GET /v1/orders/{id} upwards for 300–600 ids, mostly 403/404"
            }
            Self::Scraping => {
                "one address fetches products and pages every 1.000 s ± 3 ms for 5–8 min"
            }
            Self::Volumetric => {
                "one logged-in client sends ~40 searches/s for 60–120 s, 429s after 10 s"
            }
            Self::LowAndSlow => {
                "150 addresses each try 1–3 logins spread over the whole run, mostly 401"
            }
            Self::SequenceAbuse => {
                "3 accounts POST /v1/payments directly every ~3 s for 5 min, ~85% 402"
            }
            Self::AccountTakeover => {
                "one address logs into 25–40 leaked accounts in turn, each token then reads its profile and orders"
            }
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self, SimError> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                SimError(format!(
                    "unknown scenario {s:?}; known: {}",
                    Self::ALL.map(Self::name).join(", ")
                ))
            })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A wrong simulator option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SimError(pub String);

/// Parses a duration: `500ms`, `90s`, `10m`, `2h`, `1d`, `1h30m` (humantime's syntax), or a
/// bare number of seconds.
pub fn parse_duration(s: &str) -> Result<i64, SimError> {
    let s = s.trim();
    let ms = if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        // A bare number is seconds.
        s.parse::<i64>().ok().and_then(|n| n.checked_mul(1000))
    } else {
        let d = humantime::parse_duration(s).map_err(|e| {
            SimError(format!(
                "not a duration: {s:?}: {e} (try 90s, 10m, 2h, 1h30m)"
            ))
        })?;
        i64::try_from(d.as_millis()).ok()
    };
    ms.filter(|v| *v > 0)
        .ok_or_else(|| SimError(format!("duration out of range: {s:?}")))
}

/// Simulator options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Seed.
    pub seed: u64,
    /// Length of simulated time (ms).
    pub duration_ms: i64,
    /// Normal users.
    pub users: usize,
    /// Abuse scenarios to include.
    pub scenarios: Vec<Scenario>,
    /// Start of simulated time (epoch ms).
    pub start_ms: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            duration_ms: 600_000,
            users: 200,
            scenarios: Scenario::ALL.to_vec(),
            start_ms: DEFAULT_START_MS,
        }
    }
}

const BROWSER_UAS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
];

#[derive(Clone)]
enum Auth {
    None,
    Jwt(String),
    ApiKey(String),
}

struct Emitter {
    events: Vec<RequestEvent>,
    start: i64,
    end: i64,
}

struct Req<'a> {
    ip: IpAddr,
    method: &'a str,
    path: &'a str,
    status: u16,
    auth: &'a Auth,
    ua: &'a str,
    label: &'static str,
}

impl<'a> Req<'a> {
    /// An anonymous `POST /v1/auth/login`.
    fn login(ip: IpAddr, status: u16, ua: &'a str, label: &'static str) -> Self {
        Self {
            ip,
            method: "POST",
            path: "/v1/auth/login",
            status,
            auth: &NO_AUTH,
            ua,
            label,
        }
    }
}

static NO_AUTH: Auth = Auth::None;

impl Emitter {
    fn emit(&mut self, rng: &mut Rng, ts: f64, r: Req<'_>) -> bool {
        let ts = ts.round() as i64;
        if ts < self.start || ts >= self.end {
            return false;
        }
        let mut e = RequestEvent::new(ts, r.ip, r.method, r.path, r.status);
        e.host = Some(HOST.into());
        e.req_bytes = Some(if r.method == "GET" {
            rng.range(200, 600)
        } else {
            rng.range(300, 1500)
        });
        e.resp_bytes = Some(match r.status {
            200 | 201 => {
                (rng.lognormal(
                    if r.path.contains("products") {
                        3000.0
                    } else {
                        900.0
                    },
                    0.5,
                )) as u64
            }
            _ => rng.range(60, 200),
        });
        e.latency_ms = Some(
            (rng.lognormal(if r.status >= 500 { 900.0 } else { 35.0 }, 0.6) * 10.0).round() / 10.0,
        );
        e.user_agent = Some(r.ua.into());
        match r.auth {
            Auth::None => {}
            Auth::Jwt(t) => e
                .headers
                .push(("authorization".into(), format!("Bearer {t}").into())),
            Auth::ApiKey(k) => e.headers.push(("x-api-key".into(), k.as_str().into())),
        }
        e.label = Some(format!("\"{}\"", r.label).into());
        self.events.push(e);
        true
    }
}

fn jwt(sub: &str, rng: &mut Rng) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig: Vec<u8> = (0..32).map(|_| rng.next_u64() as u8).collect();
    format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(format!(
            r#"{{"sub":"{sub}","iss":"shop","scope":"shop:user"}}"#
        )),
        b64.encode(sig)
    )
}

fn residential(rng: &mut Rng) -> IpAddr {
    let a = *rng.pick(&[81u8, 82, 84, 86, 91, 94, 109, 176, 185, 188, 213, 217]);
    IpAddr::V4(Ipv4Addr::new(
        a,
        rng.below(256) as u8,
        rng.below(256) as u8,
        rng.range(1, 255) as u8,
    ))
}

fn datacenter(rng: &mut Rng, block: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        45,
        block,
        rng.below(256) as u8,
        rng.range(1, 255) as u8,
    ))
}

/// Generates the traffic: events sorted by time, `id` 0.. in that order, `label` on each.
pub fn simulate(cfg: &SimConfig) -> Vec<RequestEvent> {
    let mut em = Emitter {
        events: Vec::new(),
        start: cfg.start_ms,
        end: cfg.start_ms + cfg.duration_ms,
    };
    // Carrier-grade NAT addresses, each shared by about ten users.
    let nat_pools: Vec<IpAddr> = (0..(cfg.users / 10).max(1))
        .map(|i| IpAddr::V4(Ipv4Addr::new(100, 64, (i / 200) as u8, (i % 200) as u8 + 1)))
        .collect();
    for u in 0..cfg.users {
        let mut rng = Rng::new(cfg.seed, 1000 + u as u64);
        normal_user(&mut em, &mut rng, cfg, u as u64, &nat_pools);
    }
    for p in 0..3u64 {
        let mut rng = Rng::new(cfg.seed, 500 + p);
        monitor(&mut em, &mut rng, cfg, p);
    }
    for (i, s) in cfg.scenarios.iter().enumerate() {
        let mut rng = Rng::new(cfg.seed, 100 + i as u64 * 7 + *s as u64);
        match s {
            Scenario::CredentialStuffing => credential_stuffing(&mut em, &mut rng, cfg),
            Scenario::BolaEnumeration => bola(&mut em, &mut rng, cfg),
            Scenario::Scraping => scraping(&mut em, &mut rng, cfg),
            Scenario::Volumetric => volumetric(&mut em, &mut rng, cfg),
            Scenario::LowAndSlow => low_and_slow(&mut em, &mut rng, cfg),
            Scenario::SequenceAbuse => sequence_abuse(&mut em, &mut rng, cfg),
            Scenario::AccountTakeover => account_takeover(&mut em, &mut rng, cfg),
        }
    }
    let mut events = em.events;
    events.sort_by_key(|e| e.ts_ms);
    for (i, e) in events.iter_mut().enumerate() {
        e.id = Some(i.to_string().into());
    }
    events
}

fn user_id(u: u64) -> u64 {
    10_000 + u * 7
}

fn orders_of(u: u64) -> Vec<u64> {
    (0..3 + u % 4).map(|k| 500_000 + u * 13 + k * 2).collect()
}

fn normal_user(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig, u: u64, nat: &[IpAddr]) {
    let uid = user_id(u);
    let kind = rng.weighted(&[0.7, 0.15, 0.15]);
    let ip = if rng.chance(0.3) {
        *rng.pick(nat)
    } else {
        residential(rng)
    };
    let ua = *rng.pick(&BROWSER_UAS);
    let span = cfg.duration_ms as f64;
    let mut t = cfg.start_ms as f64 + rng.f64() * span * 0.9;
    let end = (cfg.start_ms + cfg.duration_ms) as f64;
    match kind {
        // API integration: periodic sync bursts with an API key.
        1 => {
            let key = Auth::ApiKey(format!("ak_live_{:016x}", rng.next_u64()));
            let period = rng.range(120_000, 420_000) as f64;
            let ua = "shop-sync/2.4 (+integration)";
            while t < end {
                let mut s = t;
                let r = Req {
                    ip,
                    method: "GET",
                    path: "/v1/orders?since=cursor",
                    status: 200,
                    auth: &key,
                    ua,
                    label: "normal",
                };
                em.emit(rng, s, r);
                for _ in 0..rng.range(3, 15) {
                    s += rng.lognormal(250.0, 0.5);
                    let path = format!("/v1/products/{}", rng.range(1, PRODUCTS));
                    let status = if rng.chance(0.02) { 404 } else { 200 };
                    em.emit(
                        rng,
                        s,
                        Req {
                            ip,
                            method: "GET",
                            path: &path,
                            status,
                            auth: &key,
                            ua,
                            label: "normal",
                        },
                    );
                }
                t += period * (0.9 + 0.2 * rng.f64());
            }
        }
        // Browser sessions (0) or anonymous visitors (2).
        _ => {
            let anonymous = kind == 2;
            while t < end {
                t = session(em, rng, ip, ua, uid, u, anonymous, t);
                t += rng.exp(15.0 * 60_000.0);
            }
        }
    }
}

/// One browsing session; returns its end time.
#[allow(clippy::too_many_arguments)]
fn session(
    em: &mut Emitter,
    rng: &mut Rng,
    ip: IpAddr,
    ua: &str,
    uid: u64,
    u: u64,
    anonymous: bool,
    mut t: f64,
) -> f64 {
    let none = Auth::None;
    let auth = if anonymous {
        none.clone()
    } else {
        if rng.chance(0.06) {
            em.emit(rng, t, Req::login(ip, 401, ua, "normal"));
            t += rng.lognormal(6000.0, 0.5);
        }
        em.emit(rng, t, Req::login(ip, 200, ua, "normal"));
        t += rng.lognormal(1500.0, 0.6);
        Auth::Jwt(jwt(&format!("u{uid}"), rng))
    };
    let steps = 3 + rng.exp(18.0) as u64;
    let orders = orders_of(u);
    let mut state = 0usize; // 0 browse, 1 search, 2 product, 3 profile, 4 my orders, 5 order, 6 add to cart, 7 cart, 8 checkout
    let mut carted = false;
    for _ in 0..steps {
        let w: [f64; 9] = match state {
            0 | 1 => [0.2, 0.15, 0.55, 0.02, 0.03, 0.0, 0.0, 0.05, 0.0],
            2 => [0.25, 0.1, 0.35, 0.02, 0.02, 0.0, 0.2, 0.06, 0.0],
            3..=5 => [0.3, 0.1, 0.2, 0.05, 0.1, 0.2, 0.0, 0.05, 0.0],
            6 => [0.3, 0.1, 0.3, 0.0, 0.0, 0.0, 0.05, 0.2, 0.05],
            7 => [
                0.25,
                0.05,
                0.2,
                0.0,
                0.0,
                0.0,
                0.05,
                0.05,
                if carted { 0.4 } else { 0.0 },
            ],
            _ => [0.5, 0.1, 0.3, 0.05, 0.05, 0.0, 0.0, 0.0, 0.0],
        };
        let mut w = w;
        if anonymous {
            for s in [3, 4, 5, 6, 7, 8] {
                w[s] = 0.0;
            }
        }
        state = rng.weighted(&w);
        let err5 = rng.chance(0.004);
        let (method, path, mut status) = match state {
            0 => (
                "GET",
                format!("/v1/products?page={}", rng.range(1, 40)),
                200,
            ),
            1 => ("GET", format!("/v1/search?q=term{}", rng.below(300)), 200),
            2 => {
                let id = rng.range(1, PRODUCTS);
                (
                    "GET",
                    format!("/v1/products/{id}"),
                    if rng.chance(0.02) { 404 } else { 200 },
                )
            }
            3 => ("GET", format!("/v1/users/{uid}/profile"), 200),
            4 => ("GET", format!("/v1/users/{uid}/orders"), 200),
            5 => ("GET", format!("/v1/orders/{}", rng.pick(&orders)), 200),
            6 => {
                carted = true;
                ("POST", "/v1/cart/items".to_string(), 201)
            }
            7 => ("GET", "/v1/cart".to_string(), 200),
            _ => ("POST", "/v1/checkout".to_string(), 200),
        };
        if err5 {
            status = *rng.pick(&[500, 502, 503]);
        }
        em.emit(
            rng,
            t,
            Req {
                ip,
                method,
                path: &path,
                status,
                auth: &auth,
                ua,
                label: "normal",
            },
        );
        // Browsers fetch related resources in parallel.
        if state == 2 && status == 200 {
            let sub = format!("{path}/reviews");
            let ts = t + rng.range(40, 250) as f64;
            em.emit(
                rng,
                ts,
                Req {
                    ip,
                    method: "GET",
                    path: &sub,
                    status: 200,
                    auth: &auth,
                    ua,
                    label: "normal",
                },
            );
        }
        if state == 8 && status == 200 {
            t += rng.lognormal(8000.0, 0.5);
            let status = if rng.chance(0.08) { 402 } else { 201 };
            em.emit(
                rng,
                t,
                Req {
                    ip,
                    method: "POST",
                    path: "/v1/payments",
                    status,
                    auth: &auth,
                    ua,
                    label: "normal",
                },
            );
            carted = false;
        }
        t += rng.lognormal(5000.0, 1.0).min(300_000.0);
    }
    t
}

fn monitor(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig, p: u64) {
    let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + p as u8));
    let key = Auth::ApiKey(format!("mon_{p}"));
    let period = [15_000.0, 30_000.0, 60_000.0][p as usize % 3];
    let mut t = cfg.start_ms as f64 + rng.f64() * period;
    let end = (cfg.start_ms + cfg.duration_ms) as f64;
    while t < end {
        let status = if rng.chance(0.003) { 503 } else { 200 };
        let ts = t + rng.normal() * 20.0;
        em.emit(
            rng,
            ts,
            Req {
                ip,
                method: "GET",
                path: "/health",
                status,
                auth: &key,
                ua: "uptime-probe/1.2",
                label: "normal",
            },
        );
        t += period;
    }
}

/// A start time within the run, leaving room for `len` ms when possible.
fn window(rng: &mut Rng, cfg: &SimConfig, len: f64) -> f64 {
    let room = (cfg.duration_ms as f64 - len).max(0.0);
    cfg.start_ms as f64 + room * (0.1 + 0.8 * rng.f64())
}

fn credential_stuffing(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig) {
    let len = rng.range(180_000, 360_000) as f64;
    let t0 = window(rng, cfg, len);
    for _ in 0..15 {
        let ip = datacenter(rng, 13);
        let mut t = t0 + rng.f64() * 5000.0;
        while t < t0 + len {
            let ua = *rng.pick(&BROWSER_UAS);
            let status = if rng.chance(0.03) { 200 } else { 401 };
            em.emit(rng, t, Req::login(ip, status, ua, "credential_stuffing"));
            t += rng.exp(700.0);
        }
    }
}

fn bola(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig) {
    let n = rng.range(300, 600);
    let len = n as f64 * 900.0;
    let mut t = window(rng, cfg, len + 20_000.0);
    let ip = residential(rng);
    let ua = BROWSER_UAS[0];
    let attacker = user_id(cfg.users as u64 + 1);
    em.emit(rng, t, Req::login(ip, 200, ua, "bola_enumeration"));
    let auth = Auth::Jwt(jwt(&format!("u{attacker}"), rng));
    for path in [
        format!("/v1/users/{attacker}/profile"),
        format!("/v1/users/{attacker}/orders"),
    ] {
        t += rng.lognormal(3000.0, 0.5);
        em.emit(
            rng,
            t,
            Req {
                ip,
                method: "GET",
                path: &path,
                status: 200,
                auth: &auth,
                ua,
                label: "bola_enumeration",
            },
        );
    }
    let mut id = 500_000 + rng.below(1000);
    for _ in 0..n {
        t += rng.lognormal(800.0, 0.4);
        id += if rng.chance(0.85) { 1 } else { 2 };
        let status = if id % 2 == 0 && (id - 500_000) / 13 < cfg.users as u64 {
            403
        } else {
            404
        };
        let path = format!("/v1/orders/{id}");
        em.emit(
            rng,
            t,
            Req {
                ip,
                method: "GET",
                path: &path,
                status,
                auth: &auth,
                ua,
                label: "bola_enumeration",
            },
        );
    }
}

fn scraping(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig) {
    let len = rng.range(300_000, 480_000) as f64;
    let t0 = window(rng, cfg, len);
    let ip = datacenter(rng, 77);
    let none = Auth::None;
    let mut t = t0;
    let mut page = 1;
    let mut i = 0u64;
    while t < t0 + len {
        let (path, status) = if i % 20 == 0 {
            page += 1;
            (format!("/v1/products?page={page}"), 200)
        } else {
            (
                format!("/v1/products/{}", rng.range(1, PRODUCTS + 300)),
                200,
            )
        };
        let status = if path.contains("?page") || rng.chance(0.94) {
            status
        } else {
            404
        };
        em.emit(
            rng,
            t,
            Req {
                ip,
                method: "GET",
                path: &path,
                status,
                auth: &none,
                ua: "python-requests/2.32.3",
                label: "scraping",
            },
        );
        t += 1000.0 + (rng.f64() - 0.5) * 6.0;
        i += 1;
    }
}

fn volumetric(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig) {
    let len = rng.range(60_000, 120_000) as f64;
    let t0 = window(rng, cfg, len);
    let ip = residential(rng);
    let auth = Auth::Jwt(jwt(&format!("u{}", user_id(cfg.users as u64 + 2)), rng));
    let ua = "Go-http-client/1.1";
    let mut t = t0;
    while t < t0 + len {
        let status = if t - t0 > 10_000.0 && rng.chance(0.6) {
            429
        } else {
            200
        };
        let path = format!("/v1/search?q=term{}", rng.below(50));
        em.emit(
            rng,
            t,
            Req {
                ip,
                method: "GET",
                path: &path,
                status,
                auth: &auth,
                ua,
                label: "volumetric",
            },
        );
        t += rng.exp(25.0);
    }
}

fn low_and_slow(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig) {
    for _ in 0..150 {
        let ip = residential(rng);
        let ua = *rng.pick(&BROWSER_UAS);
        for _ in 0..rng.range(1, 4) {
            let t = cfg.start_ms as f64 + rng.f64() * cfg.duration_ms as f64;
            let status = if rng.chance(0.02) { 200 } else { 401 };
            em.emit(rng, t, Req::login(ip, status, ua, "low_and_slow"));
        }
    }
}

fn account_takeover(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig) {
    let n = rng.range(25, 41);
    let mut t = window(rng, cfg, n as f64 * 20_000.0);
    let ip = residential(rng);
    let ua = BROWSER_UAS[1];
    for a in 0..n {
        // Leaked accounts of users not active in this run: some passwords were changed.
        if rng.chance(0.3) {
            em.emit(rng, t, Req::login(ip, 401, ua, "account_takeover"));
            t += rng.lognormal(2500.0, 0.5);
        }
        em.emit(rng, t, Req::login(ip, 200, ua, "account_takeover"));
        let victim = user_id(cfg.users as u64 + 100 + a);
        let auth = Auth::Jwt(jwt(&format!("u{victim}"), rng));
        for path in [
            format!("/v1/users/{victim}/profile"),
            format!("/v1/users/{victim}/orders"),
            "/v1/cart".to_string(),
        ] {
            t += rng.lognormal(2500.0, 0.5);
            em.emit(
                rng,
                t,
                Req {
                    ip,
                    method: "GET",
                    path: &path,
                    status: 200,
                    auth: &auth,
                    ua,
                    label: "account_takeover",
                },
            );
        }
        t += rng.lognormal(8000.0, 0.5);
    }
}

fn sequence_abuse(em: &mut Emitter, rng: &mut Rng, cfg: &SimConfig) {
    let len = 300_000.0;
    let t0 = window(rng, cfg, len);
    for a in 0..3u64 {
        let ip = residential(rng);
        let ua = *rng.pick(&BROWSER_UAS);
        let auth = Auth::Jwt(jwt(
            &format!("u{}", user_id(cfg.users as u64 + 10 + a)),
            rng,
        ));
        let mut t = t0 + rng.f64() * 30_000.0;
        while t < t0 + len {
            let status = if rng.chance(0.85) { 402 } else { 201 };
            em.emit(
                rng,
                t,
                Req {
                    ip,
                    method: "POST",
                    path: "/v1/payments",
                    status,
                    auth: &auth,
                    ua,
                    label: "sequence_abuse",
                },
            );
            t += rng.lognormal(3000.0, 0.5);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(evs: &[RequestEvent]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in evs {
            *m.entry(
                e.label
                    .as_deref()
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string(),
            )
            .or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn deterministic_sorted_and_labelled() {
        let cfg = SimConfig {
            users: 50,
            ..SimConfig::default()
        };
        let a = simulate(&cfg);
        let b = simulate(&cfg);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        assert!(
            a.iter()
                .all(|e| e.ts_ms >= cfg.start_ms && e.ts_ms < cfg.start_ms + cfg.duration_ms)
        );
        assert_eq!(a[3].id.as_deref(), Some("3"));
        let l = labels(&a);
        for s in Scenario::ALL {
            assert!(
                l.get(s.name()).copied().unwrap_or(0) > 0,
                "{s} missing: {l:?}"
            );
        }
        assert!(l["normal"] > 1000, "{l:?}");
        let other = simulate(&SimConfig { seed: 2, ..cfg });
        assert_ne!(a, other);
    }

    #[test]
    fn scenario_selection_and_durations() {
        let cfg = SimConfig {
            users: 20,
            scenarios: vec![Scenario::Scraping],
            ..SimConfig::default()
        };
        let l = labels(&simulate(&cfg));
        assert_eq!(
            l.keys().cloned().collect::<Vec<_>>(),
            ["normal", "scraping"]
        );
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("90"), Ok(90_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert!(parse_duration("10x").is_err());
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("2d"), Ok(172_800_000));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(
            Scenario::parse("bola")
                .unwrap_err()
                .0
                .contains("bola_enumeration")
        );
    }

    #[test]
    fn scraper_timing_is_machine_regular() {
        let cfg = SimConfig {
            users: 5,
            scenarios: vec![Scenario::Scraping],
            ..SimConfig::default()
        };
        let ts: Vec<i64> = simulate(&cfg)
            .iter()
            .filter(|e| e.label.as_deref() == Some("\"scraping\""))
            .map(|e| e.ts_ms)
            .collect();
        assert!(ts.len() > 250);
        assert!(
            ts.windows(2).all(|w| (w[1] - w[0] - 1000).abs() <= 4),
            "gaps not regular"
        );
    }
}
