//! `gatewatch replay`: a log's events sent as real HTTP requests to a gateway, paced in real
//! time (or a multiple of it), and what came back per label.
//!
//! Each event becomes one request: its method, host, path and query, its headers (tokens,
//! API keys, cookies), its user agent, `X-Forwarded-For` with its client address (the
//! gateway trusts it from the replay's loopback address) and `X-Sim-Status` with its status
//! (a stand-in API answers it). A client's requests go in order on one keep-alive
//! connection; clients are spread over `--connections` connections.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gatewatch_event::RequestEvent;

use crate::ReplayArgs;

/// One request to send: when (from the start), to which connection, what.
struct Job {
    due: Duration,
    label: String,
    client: String,
    request: Vec<u8>,
}

/// What came back for one request.
struct Answer {
    label: String,
    client: String,
    sent_at: Duration,
    status: u16,
    /// The gateway's enforcement answered (`X-Gatewatch`: block, rate-limit, challenge).
    enforced: Option<String>,
    micros: u64,
}

fn request(e: &RequestEvent, host: &str) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], "");
    let mut target = clean(&e.path);
    if let Some(q) = &e.query {
        target.push('?');
        target.push_str(&clean(q));
    }
    let mut r = format!(
        "{} {target} HTTP/1.1\r\nHost: {}\r\nX-Forwarded-For: {}\r\nX-Sim-Status: {}\r\nContent-Length: 0\r\n",
        clean(&e.method),
        e.host.as_deref().map_or_else(|| host.to_string(), clean),
        e.client_ip,
        e.status
    );
    if let Some(ua) = &e.user_agent {
        r.push_str(&format!("User-Agent: {}\r\n", clean(ua)));
    }
    for (k, v) in &e.headers {
        if matches!(
            &**k,
            "host" | "content-length" | "x-forwarded-for" | "connection"
        ) {
            continue;
        }
        r.push_str(&format!("{}: {}\r\n", clean(k), clean(v)));
    }
    if let Some(s) = &e.session_id {
        r.push_str(&format!("Cookie: session={}\r\n", clean(s)));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Reads one HTTP/1.1 answer: its status, the enforcement that answered it (`X-Gatewatch`),
/// and whether the connection stays open.
fn answer(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Option<String>, bool)> {
    let mut line = String::new();
    let (mut status, mut length, mut chunked, mut enforced, mut keep) =
        (0, 0usize, false, None, true);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(s) = l
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| l.strip_prefix("HTTP/1.0 "))
        {
            status = s.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "x-gatewatch" => enforced = Some(v.to_string()),
                "connection" => keep = !v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut skip = vec![0u8; n + 2];
            r.read_exact(&mut skip)?;
            if n == 0 {
                break;
            }
        }
    } else {
        std::io::copy(&mut r.by_ref().take(length as u64), &mut std::io::sink())?;
    }
    Ok((status, enforced, keep))
}

/// A connection's worker: its jobs in order, each sent at its time.
fn worker(addr: String, start: Instant, jobs: mpsc::Receiver<Job>, out: mpsc::Sender<Answer>) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    for job in jobs {
        let now = start.elapsed();
        if job.due > now {
            std::thread::sleep(job.due - now);
        }
        let sent_at = start.elapsed();
        let t = Instant::now();
        let mut result = Err(std::io::Error::other("not sent"));
        for _ in 0..2 {
            if conn.is_none() {
                conn = TcpStream::connect(&addr).ok().and_then(|s| {
                    s.set_nodelay(true).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                    Some((s.try_clone().ok()?, BufReader::new(s)))
                });
            }
            let Some((w, r)) = conn.as_mut() else {
                break;
            };
            result = w.write_all(&job.request).and_then(|()| answer(r));
            match &result {
                Ok((_, _, keep)) => {
                    if !keep {
                        conn = None;
                    }
                    break;
                }
                Err(_) => conn = None,
            }
        }
        let (status, enforced) = match result {
            Ok((s, e, _)) => (s, e),
            Err(_) => (0, None),
        };
        let _ = out.send(Answer {
            label: job.label,
            client: job.client,
            sent_at,
            status,
            enforced,
            micros: t.elapsed().as_micros() as u64,
        });
    }
}

/// Per label: requests, answers by kind (the enforcement module's apart from the API's own),
/// and how soon each client was first stopped.
#[derive(Default)]
struct Tally {
    requests: u64,
    ok: u64,
    blocked: u64,
    limited: u64,
    challenged: u64,
    other: u64,
    failed: u64,
    /// Per client: its first request and the first answer of the enforcement module.
    clients: BTreeMap<String, (Duration, Option<Duration>)>,
    micros: Vec<u64>,
}

pub fn run(a: ReplayArgs) -> Result<()> {
    let target = a.target.trim_end_matches('/');
    let Some(addr) = target.strip_prefix("http://") else {
        bail!("--target {target}: expected http://HOST:PORT");
    };
    let addr = addr.split('/').next().unwrap_or(addr).to_string();
    if !(a.speed > 0.0 && a.speed.is_finite()) {
        bail!("--speed {}: must be a positive number", a.speed);
    }
    let (input, _) = crate::io::open_input(&a.input)?;
    let mut events = Vec::new();
    let mut rejected = 0u64;
    for (n, line) in BufReader::new(input).split(b'\n').enumerate() {
        let line = line.context("reading the events")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match gatewatch_event::parse_ndjson(&line) {
            Ok(e) => events.push(e),
            Err(e) => {
                rejected += 1;
                if rejected <= 5 {
                    say!("gatewatch replay: line {}: {e}", n + 1);
                }
            }
        }
    }
    events.sort_by_key(|e| e.ts_ms);
    let Some(t0) = events.first().map(|e| e.ts_ms) else {
        bail!("no events to replay");
    };
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut lanes = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..a.connections.max(1) {
        let (jt, jr) = mpsc::sync_channel::<Job>(4096);
        let (addr, out) = (addr.clone(), tx.clone());
        handles.push(std::thread::spawn(move || worker(addr, start, jr, out)));
        lanes.push(jt);
    }
    drop(tx);
    let limit = a.duration.map(|d| d.as_secs_f64());
    let min_gap = a.max_rate.map(|r| 1.0 / r.max(1.0));
    let collector = std::thread::spawn(move || {
        let mut by: BTreeMap<String, Tally> = BTreeMap::new();
        for ans in rx {
            let t = by.entry(ans.label).or_default();
            t.requests += 1;
            t.micros.push(ans.micros);
            let stopped = match (ans.status, ans.enforced.as_deref()) {
                (0, _) => {
                    t.failed += 1;
                    false
                }
                (_, Some("block")) => {
                    t.blocked += 1;
                    true
                }
                (_, Some("rate-limit")) => {
                    t.limited += 1;
                    true
                }
                (_, Some(_)) => {
                    t.challenged += 1;
                    true
                }
                (200..=399, None) => {
                    t.ok += 1;
                    false
                }
                (_, None) => {
                    t.other += 1;
                    false
                }
            };
            let c = t.clients.entry(ans.client).or_insert((ans.sent_at, None));
            if stopped && c.1.is_none() {
                c.1 = Some(ans.sent_at);
            }
        }
        by
    });
    let mut sent = 0u64;
    let mut last_due = 0.0f64;
    for e in &events {
        let mut due = (e.ts_ms - t0) as f64 / 1000.0 / a.speed;
        if let Some(g) = min_gap {
            due = due.max(last_due + g);
        }
        last_due = due;
        if limit.is_some_and(|l| due > l) {
            break;
        }
        let lane = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            e.client_ip.hash(&mut h);
            (h.finish() % lanes.len() as u64) as usize
        };
        let label = e
            .label
            .as_deref()
            .map_or("(unlabelled)", |l| l.trim_matches('"'))
            .to_string();
        let job = Job {
            due: Duration::from_secs_f64(due),
            label,
            client: e.client_ip.to_string(),
            request: request(e, &addr),
        };
        if lanes[lane].send(job).is_err() {
            break;
        }
        sent += 1;
    }
    drop(lanes);
    for h in handles {
        let _ = h.join();
    }
    let by = collector
        .join()
        .map_err(|_| anyhow::anyhow!("the collector failed"))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replayed {sent} requests to {target} in {secs:.1} s ({:.0}/s, speed ×{}){}",
        sent as f64 / secs.max(0.001),
        a.speed,
        if rejected > 0 {
            format!("; {rejected} lines were not events")
        } else {
            String::new()
        }
    );
    println!(
        "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}  {:>8} {:>10} {:>11} {:>12}",
        "label",
        "requests",
        "ok",
        "blocked",
        "limited",
        "challeng",
        "other",
        "failed",
        "stopped",
        "clients",
        "attack stop",
        "client stop"
    );
    let mut report = serde_json::Map::new();
    for (label, t) in &by {
        let stopped = t.blocked + t.limited + t.challenged;
        let share = stopped as f64 / t.requests.max(1) as f64;
        let mut delays: Vec<f64> = t
            .clients
            .values()
            .filter_map(|(first, stop)| stop.map(|s| (s - *first).as_secs_f64()))
            .collect();
        delays.sort_by(f64::total_cmp);
        let stopped_clients = delays.len();
        let median = delays.get(delays.len() / 2).copied();
        // The label's first request to its first stop (any client).
        let first_request = t.clients.values().map(|(f, _)| *f).min();
        let first_stop = t.clients.values().filter_map(|(_, s)| *s).min();
        let attack_stop = first_request
            .zip(first_stop)
            .map(|(f, s)| s.saturating_sub(f).as_secs_f64());
        println!(
            "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}  {:>7.1}% {:>4}/{:<5} {:>11} {:>12}",
            label,
            t.requests,
            t.ok,
            t.blocked,
            t.limited,
            t.challenged,
            t.other,
            t.failed,
            100.0 * share,
            stopped_clients,
            t.clients.len(),
            attack_stop.map_or_else(|| "-".to_string(), |m| format!("{m:.1} s")),
            median.map_or_else(|| "-".to_string(), |m| format!("{m:.1} s")),
        );
        let mut micros = t.micros.clone();
        micros.sort_unstable();
        let q = |p: f64| {
            micros
                .get(((micros.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        report.insert(
            label.clone(),
            serde_json::json!({
                "requests": t.requests, "ok": t.ok, "blocked": t.blocked, "rate_limited": t.limited,
                "challenged": t.challenged, "other": t.other, "failed": t.failed,
                "stopped_share": share, "clients": t.clients.len(), "clients_stopped": stopped_clients,
                "seconds_to_first_stop": attack_stop,
                "median_seconds_to_first_stop": median,
                "max_seconds_to_first_stop": delays.last(),
                "latency_us": {"p50": q(0.5), "p99": q(0.99)},
            }),
        );
    }
    println!(
        "  blocked / limited / challeng(ed): answered by the gateway's gatewatch module (X-Gatewatch); other: the API's own 4xx / 5xx"
    );
    println!(
        "  stopped: their share; attack stop: from the label's first request to its first stop; client stop: the median over its clients of the same"
    );
    if let Some(path) = &a.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_the_event_and_nothing_can_split_its_head() {
        let mut e = gatewatch_event::parse_ndjson(
            br#"{"ts":1767603600000,"client_ip":"203.0.113.7","method":"POST","host":"api.example","path":"/v1/login?x=1","status":401,"user_agent":"ua\r\nEvil: 1","headers":{"authorization":"Bearer t"}}"#,
        )
        .unwrap();
        e.session_id = Some("s1".into());
        let r = String::from_utf8(request(&e, "gw")).unwrap();
        assert!(
            r.starts_with("POST /v1/login?x=1 HTTP/1.1\r\nHost: api.example\r\n"),
            "{r}"
        );
        assert!(r.contains("X-Forwarded-For: 203.0.113.7\r\n"));
        assert!(r.contains("X-Sim-Status: 401\r\n"));
        assert!(r.contains("authorization: Bearer t\r\n"));
        assert!(r.contains("Cookie: session=s1\r\n"));
        assert!(r.contains("User-Agent: uaEvil: 1\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
        assert_eq!(r.matches("\r\n").count(), 9, "{r}");
    }
}
