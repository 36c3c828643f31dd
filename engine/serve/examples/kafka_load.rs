//! Load for `gatewatch serve` with Kafka (used by `scripts/bench kafka`): produces the events
//! of an NDJSON file to a topic (keyed by client address, one event per message) and reads
//! the score records back, printing figures.
//!
//! ```text
//! kafka_load BROKERS create TOPIC PARTITIONS
//!     creates a topic
//! kafka_load BROKERS produce EVENTS_FILE TOPIC [RATE]
//!     every event (at RATE events/s when given, each event's time then set to the moment
//!     it is sent, as a live gateway's log would have it; else as fast as possible); prints
//!     the produce rate and writes each event's id and produce time (ms) to EVENTS_FILE.sent
//! kafka_load BROKERS scores TOPIC PARTITIONS N [EVENTS_FILE.sent]
//!     reads N score records from the start of TOPIC; prints the rate between the first and
//!     the last record's timestamps and, with the .sent file, the latency from produce to
//!     score record (p50 / p99 / p99.9, broker timestamps, 1 ms resolution)
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = &line[at..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(['"', ',', '}'])?;
    Some(&rest[..end])
}

fn produce(brokers: &str, file: &str, topic: &str, rate: Option<f64>) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("a producer");
    let lines: Vec<String> = BufReader::new(std::fs::File::open(file).expect("the events"))
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .collect();
    let mut sent = std::io::BufWriter::new(
        std::fs::File::create(format!("{file}.sent")).expect("the .sent file"),
    );
    let start = Instant::now();
    for (i, l) in lines.iter().enumerate() {
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(i as f64 / r);
            let elapsed = start.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let key = field(l, "client_ip").unwrap_or("");
        let live;
        let body = match (rate, l.find("\"ts\":\"")) {
            (Some(_), Some(at)) => {
                // `"ts":"…"` becomes `"ts":MILLISECONDS`.
                let open = at + 5;
                let close = l[open + 1..]
                    .find('"')
                    .map_or(l.len() - 1, |i| open + 1 + i);
                live = format!("{}{}{}", &l[..open], now_ms(), &l[close + 1..]);
                live.as_str()
            }
            _ => l.as_str(),
        };
        loop {
            match p.send(BaseRecord::to(topic).key(key).payload(body)) {
                Ok(()) => break,
                Err(_) => p.poll(Duration::from_millis(1)),
            }
        }
        if rate.is_some() {
            writeln!(sent, "{} {}", field(l, "id").unwrap_or(""), now_ms()).expect("written");
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("all delivered");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "produced {} events in {secs:.2} s: {:.0} events/s",
        lines.len(),
        lines.len() as f64 / secs
    );
}

fn scores(brokers: &str, topic: &str, partitions: i32, n: usize, sent: Option<&str>) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kafka-load")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("an offset");
    }
    c.assign(&tpl).expect("assigned");
    let mut first = i64::MAX;
    let mut last = i64::MIN;
    let mut seen = 0usize;
    let mut at: HashMap<String, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut quiet = Instant::now();
    // Until N records, or 10 s without one once some came (events refused as late have none).
    while seen < n
        && Instant::now() < deadline
        && !(seen > 0 && quiet.elapsed() > Duration::from_secs(10))
    {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            quiet = Instant::now();
            let ts = m.timestamp().to_millis().unwrap_or(0);
            first = first.min(ts);
            last = last.max(ts);
            seen += 1;
            if sent.is_some()
                && let Some(id) = m
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|s| field(s, "id"))
            {
                at.entry(id.to_string()).or_insert(ts);
            }
        }
    }
    let secs = ((last - first) as f64 / 1000.0).max(0.001);
    println!(
        "{seen} score records; first to last {secs:.2} s: {:.0} events/s",
        seen as f64 / secs
    );
    if let Some(file) = sent {
        let mut lat: Vec<i64> = Vec::new();
        for l in BufReader::new(std::fs::File::open(file).expect("the .sent file"))
            .lines()
            .map_while(Result::ok)
        {
            let mut it = l.split(' ');
            if let (Some(id), Some(t)) = (it.next(), it.next().and_then(|t| t.parse::<i64>().ok()))
                && let Some(s) = at.get(id)
            {
                lat.push(s - t);
            }
        }
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        if !lat.is_empty() {
            println!(
                "latency produce -> score record over {} events: p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
                lat.len(),
                q(0.5),
                q(0.99),
                q(0.999),
                lat[lat.len() - 1]
            );
        }
    }
}

/// Runs a future (the admin client's) to its end on this thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

fn create(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client");
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in block_on(admin.create_topics([&t], &AdminOptions::new())).expect("created") {
        r.expect("the topic");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "kafka_load BROKERS create TOPIC PARTITIONS | produce FILE TOPIC [RATE] | scores TOPIC PARTITIONS N [FILE.sent]";
    match args.get(2).map(String::as_str) {
        Some("create") if args.len() >= 5 => {
            create(&args[1], &args[3], args[4].parse().expect("PARTITIONS"));
        }
        Some("produce") if args.len() >= 5 => produce(
            &args[1],
            &args[3],
            &args[4],
            args.get(5).and_then(|r| r.parse().ok()),
        ),
        Some("scores") if args.len() >= 6 => scores(
            &args[1],
            &args[3],
            args[4].parse().expect("PARTITIONS"),
            args[5].parse().expect("N"),
            args.get(6).map(String::as_str),
        ),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
