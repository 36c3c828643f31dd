//! The loop at a real nginx (`integrations/nginx`, started from a temporary prefix on
//! loopback ports; `scripts/setup-nginx` installs it): nginx logs each request as a
//! gatewatch event, `gatewatch serve` follows that log, and the Lua module enforces the
//! decisions it serves. Blocks, rate limits and challenges are answered, decisions end at
//! the gateway when they end in gatewatch, shadow rules never block, nginx fails open when
//! gatewatch is gone, and hostile requests through nginx never stop the pipeline.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Served, free_port, gw, wait_until};

/// The nginx binary: `GATEWATCH_NGINX`, else Debian's.
fn nginx_bin() -> PathBuf {
    let p = std::env::var_os("GATEWATCH_NGINX")
        .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
    assert!(
        p.exists() && Path::new("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists(),
        "nginx with its Lua module is not installed: run scripts/setup-nginx"
    );
    p
}

/// nginx from `integrations/nginx` in a temporary prefix, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    prefix: tempfile::TempDir,
}

impl Nginx {
    fn start(gatewatch: &str, key: &str) -> Self {
        let prefix = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integrations/nginx");
        let (port, api) = (free_port(), free_port());
        let conf = std::fs::read_to_string(src.join("nginx.conf"))
            .unwrap()
            .replace("127.0.0.1:8088", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:8089", &format!("127.0.0.1:{api}"));
        for d in ["conf", "lua", "logs"] {
            std::fs::create_dir_all(prefix.path().join(d)).unwrap();
        }
        std::fs::write(prefix.path().join("conf/nginx.conf"), conf).unwrap();
        std::fs::copy(
            src.join("gatewatch.lua"),
            prefix.path().join("lua/gatewatch.lua"),
        )
        .unwrap();
        let p = prefix.path().to_str().unwrap();
        let child = Command::new(nginx_bin())
            .args(["-p", p, "-c", &format!("{p}/conf/nginx.conf")])
            .args(["-g", "daemon off;"])
            .env("GATEWATCH_URL", format!("http://{gatewatch}"))
            .env("GATEWATCH_BOUNCER_KEY", key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            prefix,
        }
    }

    /// nginx and `gatewatch serve` following its log with `rules` (and `extra` options),
    /// sharing a bouncer key. nginx starts first (its log is gatewatch's input), pointed at
    /// the port gatewatch then takes.
    fn with_gatewatch(rules: &str, extra: &[&str]) -> (Self, Served) {
        let port = free_port();
        let ngx = Self::start(&format!("127.0.0.1:{port}"), "k1");
        let (listen, log) = (format!("127.0.0.1:{port}"), ngx.log());
        let mut args = vec!["--listen", &listen, "-i", log.to_str().unwrap(), "--follow"];
        args.extend(["--rules", rules, "--bouncer-key", "k1"]);
        args.extend(extra);
        let served = Served::start(&args);
        (ngx, served)
    }

    /// [`with_gatewatch`](Self::with_gatewatch) with the rules `text` (in a temporary
    /// folder, returned to be kept) and a flush every 100 ms.
    fn with_rules(text: &str) -> (Self, Served, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        std::fs::write(&rules, text).unwrap();
        let (ngx, served) =
            Self::with_gatewatch(rules.to_str().unwrap(), &["--flush-every", "100ms"]);
        (ngx, served, dir)
    }

    fn log(&self) -> PathBuf {
        self.prefix.path().join("logs/gatewatch.ndjson")
    }

    /// One request from client address `from` (X-Forwarded-For, trusted from loopback):
    /// its status and headers.
    fn get(
        &self,
        from: &str,
        path: &str,
        extra: &[(&str, &str)],
    ) -> (u16, BTreeMap<String, String>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: api.shop.example\r\nX-Forwarded-For: {from}\r\nConnection: close\r\n"
        );
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        (status, headers)
    }

    /// Requests from `from` until one is answered `want` (up to 10 s): the time it took.
    fn until(&self, from: &str, path: &str, extra: &[(&str, &str)], want: u16) -> Duration {
        let start = Instant::now();
        loop {
            let (status, _) = self.get(from, path, extra);
            if status == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{from} {path}: still {status}, never {want}; module {}; error log:\n{}",
                self.status(),
                std::fs::read_to_string(self.prefix.path().join("logs/error.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /gatewatch-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
        // A chunked answer: the JSON object is the line that starts with `{`.
        let line = body.lines().find(|l| l.starts_with('{')).unwrap_or("{}");
        serde_json::from_str(line).unwrap()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RULES: &str = r#"
[[rule]]
id = "admin-probe"
when = "request.path.startsWith('/admin')"
action = "block"
key = "ip"
ttl = "3s"

[[rule]]
id = "export-flood"
when = "request.path == '/v1/export'"
action = "rate_limit"
key = "client"
ttl = "1m"
rate = 10
per = "1m"

[[rule]]
id = "odd-login"
when = "request.path == '/v1/auth/login' && request.status == 401"
action = "challenge"
key = "client"
ttl = "1m"

[[rule]]
id = "would-block"
when = "request.path == '/v1/shadow'"
action = "block"
key = "ip"
ttl = "1m"
mode = "shadow"
"#;

/// A bearer token with subject `sub` (gatewatch keys on the claim, unverified).
fn token(sub: &str) -> String {
    use std::fmt::Write as _;
    let b64 = |s: &str| {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = c.iter().fold(0u32, |n, x| n << 8 | u32::from(*x)) << (8 * (3 - c.len()));
            for i in 0..=c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    let mut t = String::new();
    let _ = write!(
        t,
        "{}.{}.sig",
        b64(r#"{"alg":"none"}"#),
        b64(&format!(r#"{{"sub":"{sub}"}}"#))
    );
    t
}

#[test]
fn nginx_enforces_gatewatch_decisions_from_its_own_log() {
    let (ngx, served, _rules) = Nginx::with_rules(RULES);

    // Normal traffic passes and is logged as events gatewatch scores.
    assert_eq!(ngx.get("10.1.1.1", "/v1/products", &[]).0, 200);
    served.wait_for_metric("gatewatch_events_total 1");

    // An admin probe: that address is blocked at nginx within a bound; others are not.
    assert_eq!(
        ngx.get("10.1.1.2", "/admin/users", &[("X-Sim-Status", "404")])
            .0,
        404
    );
    let took = ngx.until("10.1.1.2", "/v1/products", &[], 403);
    eprintln!("block reached nginx {took:?} after the offending request");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (_, headers) = ngx.get("10.1.1.2", "/v1/products", &[]);
    assert_eq!(
        headers.get("x-gatewatch").map(String::as_str),
        Some("block")
    );
    assert_eq!(ngx.get("10.1.1.1", "/v1/products", &[]).0, 200);

    // A rate limit on an API key: 429 with Retry-After, for that key from any address.
    let key = [("X-Api-Key", "key-77")];
    assert_eq!(ngx.get("10.2.0.1", "/v1/export", &key).0, 200);
    ngx.until("10.2.0.9", "/v1/products", &key, 429);
    let (status, headers) = ngx.get("10.2.0.5", "/v1/products", &key);
    assert_eq!(status, 429);
    let retry: u64 = headers["retry-after"].parse().unwrap();
    assert_eq!(headers["x-gatewatch"], "rate-limit");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(ngx.get("10.2.0.5", "/v1/products", &[]).0, 200);

    // A challenge on a JWT subject.
    let bearer = format!("Bearer {}", token("mallory"));
    let auth = [("Authorization", bearer.as_str()), ("X-Sim-Status", "401")];
    assert_eq!(ngx.get("10.3.0.1", "/v1/auth/login", &auth).0, 401);
    let challenged = [("Authorization", bearer.as_str())];
    ngx.until("10.3.0.2", "/v1/orders", &challenged, 401);
    let (_, headers) = ngx.get("10.3.0.2", "/v1/orders", &challenged);
    assert_eq!(
        headers.get("x-gatewatch").map(String::as_str),
        Some("challenge")
    );

    // A shadow rule decides but never blocks.
    assert_eq!(ngx.get("10.4.0.1", "/v1/shadow", &[]).0, 200);
    served.wait_for_metric("gatewatch_decisions_total{change=\"new\",mode=\"shadow\"} 1");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ngx.get("10.4.0.1", "/v1/products", &[]).0, 200);

    // The block ends at nginx when it ends in gatewatch (3 s of event time: other
    // requests move event time on).
    let ended = Instant::now();
    loop {
        assert_eq!(ngx.get("10.9.9.9", "/v1/tick", &[]).0, 200);
        if ngx.get("10.1.1.2", "/v1/products", &[]).0 == 200 {
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_secs(15),
            "the block never ended"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Hostile requests through nginx: nginx answers them, gatewatch reads on.
    let long = format!("/v1/{}", "a".repeat(6000));
    let _ = ngx.get("10.5.0.1", &long, &[]);
    let _ = ngx.get(
        "10.5.0.1",
        "/v1/%00%ff%fe?x=\u{7f}",
        &[("User-Agent", "\u{1}\u{2}bot")],
    );
    let _ = ngx.get("10.5.0.1", "/v1/p", &[("Authorization", "Bearer a.%%%.b")]);
    let n = served.metric("gatewatch_events_total");
    assert_eq!(ngx.get("10.5.0.2", "/v1/after", &[]).0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.metric("gatewatch_events_total") <= n {
        assert!(
            Instant::now() < deadline,
            "gatewatch stopped reading the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let st = ngx.status();
    assert!(st["polls"].as_u64().unwrap() > 0, "{st}");
    assert!(st["answered_ban"].as_u64().unwrap() > 0, "{st}");
    assert!(st["answered_throttle"].as_u64().unwrap() > 0, "{st}");
    assert!(st["answered_captcha"].as_u64().unwrap() > 0, "{st}");

    // gatewatch gone: nginx keeps serving (fail-open) and counts it.
    assert!(served.stop().success());
    let failures = |st: &serde_json::Value| st["poll_failures"].as_u64().unwrap_or(0);
    let before = failures(&ngx.status());
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures(&ngx.status()) <= before {
        assert!(Instant::now() < deadline, "no failed poll counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each worker counts the requests it passed while it saw gatewatch down (it reads the
    // poll's health every `sync_interval`) and adds them to the status within that time.
    wait_until(5, "no request counted as failing open", || {
        assert_eq!(ngx.get("10.6.0.1", "/v1/products", &[]).0, 200);
        ngx.status()["fail_open"].as_u64().unwrap_or(0) > 0
    });
}

const RANGE_RULES: &str = r#"
[[rule]]
id = "probe-network"
when = "request.path == '/v1/probe'"
action = "block"
key = "ip/24"
ttl = "1m"

[[rule]]
id = "probe-address"
when = "request.path == '/v1/probe-one'"
action = "block"
key = "ip"
ttl = "1m"

[[rule]]
id = "order-walk"
when = "request.path.startsWith('/v1/orders/') && request.status == 404"
action = "rate_limit"
key = "endpoint+client"
ttl = "1m"
rate = 5
per = "1m"
"#;

#[test]
fn nginx_matches_ranges_ipv6_and_templated_endpoints() {
    let (ngx, served, _rules) = Nginx::with_rules(RANGE_RULES);

    // An IPv4 range: the /24 of the offending address, not the next one.
    assert_eq!(ngx.get("10.8.1.1", "/v1/probe", &[]).0, 200);
    ngx.until("10.8.1.200", "/v1/products", &[], 403);
    assert_eq!(ngx.get("10.8.2.1", "/v1/products", &[]).0, 200);
    // The same network as an IPv4-mapped IPv6 address (gatewatch reads it as IPv4).
    assert_eq!(ngx.get("::ffff:10.8.1.77", "/v1/products", &[]).0, 403);

    // An IPv6 range (the rules' IPv6 prefix, /48 by default): any address in it.
    assert_eq!(ngx.get("2001:db8:7::1", "/v1/probe", &[]).0, 200);
    ngx.until("2001:db8:7:ffff:abcd::2", "/v1/products", &[], 403);
    assert_eq!(ngx.get("2001:db8:8::1", "/v1/products", &[]).0, 200);

    // One IPv6 address, and not its neighbour.
    assert_eq!(ngx.get("2001:db8:9::5", "/v1/probe-one", &[]).0, 200);
    ngx.until("2001:db8:9::5", "/v1/products", &[], 403);
    assert_eq!(ngx.get("2001:db8:9::6", "/v1/products", &[]).0, 200);

    // An endpoint+client decision on a templated endpoint (`/v1/orders/{id}`): that client
    // on any order, not on other endpoints, and not other clients on orders.
    let key = [("X-Api-Key", "walker-1")];
    let missing = [("X-Api-Key", "walker-1"), ("X-Sim-Status", "404")];
    assert_eq!(ngx.get("10.9.0.1", "/v1/orders/17", &missing).0, 404);
    ngx.until("10.9.0.2", "/v1/orders/991", &key, 429);
    let (_, headers) = ngx.get("10.9.0.3", "/v1/orders/5", &key);
    assert_eq!(headers["x-gatewatch"], "rate-limit");
    assert_eq!(ngx.get("10.9.0.3", "/v1/orders/5/items", &key).0, 200);
    assert_eq!(ngx.get("10.9.0.3", "/v1/products", &key).0, 200);
    assert_eq!(
        ngx.get("10.9.0.3", "/v1/orders/5", &[("X-Api-Key", "other")])
            .0,
        200
    );
    let st = ngx.status();
    assert!(st["decisions"].as_u64().unwrap() >= 4, "{st}");
    assert!(served.stop().success());
}

#[test]
fn attacks_replayed_over_http_are_stopped_at_nginx_and_normal_users_pass() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    let sim = gw()
        .args([
            "simulate",
            "--seed",
            "11",
            "--duration",
            "75s",
            "--users",
            "100",
        ])
        .args(["--scenarios", "credential_stuffing,volumetric,scraping"])
        .args(["-o", events.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(sim.status.success());
    let (ngx, served) = Nginx::with_gatewatch("default", &[]);
    let report = dir.path().join("replay.json");
    let target = format!("http://127.0.0.1:{}", ngx.port);
    let out = gw()
        .args([
            "replay",
            "--target",
            &target,
            "-i",
            events.to_str().unwrap(),
        ])
        .args(["--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let f = |label: &str, key: &str| r[label][key].as_f64().unwrap_or(f64::NAN);
    // Both attacks stopped at nginx soon after their first request (measured 5.3–8.8 s on
    // idle machines: the rules' thresholds fill in event time, then one poll; the bound
    // leaves room for a loaded CI machine), most of their requests stopped, every stuffing
    // address stopped within 20 s of its own first.
    for label in ["credential_stuffing", "volumetric"] {
        assert!(f(label, "seconds_to_first_stop") <= 12.0, "{label}: {text}");
        assert!(f(label, "stopped_share") >= 0.8, "{label}: {text}");
    }
    // The scraper (one request a second, metronomic) is challenged once a minute's window
    // holds ten of its requests (measured 10.0 s, 87% stopped, on an idle machine).
    assert!(f("scraping", "seconds_to_first_stop") <= 20.0, "{text}");
    assert!(f("scraping", "stopped_share") >= 0.7, "{text}");
    assert_eq!(
        f("credential_stuffing", "clients_stopped"),
        f("credential_stuffing", "clients"),
        "{text}"
    );
    assert!(
        f("credential_stuffing", "max_seconds_to_first_stop") <= 20.0,
        "{text}"
    );
    // Normal users: none of their requests blocked or rate-limited, few challenged.
    assert_eq!(
        f("normal", "blocked") + f("normal", "rate_limited"),
        0.0,
        "{text}"
    );
    assert!(
        f("normal", "challenged") / f("normal", "requests") <= 0.005,
        "{text}"
    );
    assert_eq!(f("normal", "failed"), 0.0, "{text}");
    assert!(served.stop().success());
}
