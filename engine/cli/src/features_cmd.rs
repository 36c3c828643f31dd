//! `gatewatch features`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use gatewatch_event::KeyKind;
use gatewatch_features::{DistinctCount, FeatureEngine, Format};
use gatewatch_pipeline::{FeatureWriter, Output, Session, SessionOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::FeaturesArgs;

/// Features shown per label in the summary (when the configuration has them).
const SUMMARY_FEATURES: [&str; 6] = [
    "req_rate_1m",
    "error_ratio_1m",
    "iat_cv_1m",
    "distinct_ids_10m",
    "seq_id_ratio_10m",
    "transition_surprise",
];

#[derive(Default)]
struct LabelStats {
    events: u64,
    clients: DistinctCount,
    sums: Vec<f64>,
}

/// Records per output batch.
const BATCH_RECORDS: usize = 1024;

pub fn run(a: FeaturesArgs) -> Result<()> {
    let (settings, source) = crate::pipeline::setup(&a.input)?;
    let cfg = &settings.engine;
    let engine = FeatureEngine::with_parts(cfg, a.input.threads() as u32)?;
    if a.list {
        write!(
            std::io::stdout().lock(),
            "{}",
            engine.registry().to_markdown()
        )?;
        return Ok(());
    }
    if a.schema {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(engine.registry())?
        )?;
        return Ok(());
    }
    let registry = engine.registry().clone();
    let mut session = Session::features_only(
        engine,
        SessionOptions {
            batch: BATCH_RECORDS,
            reasons: 0,
        },
    );
    if let Some(p) = &a.load_state {
        let mut f = File::open(p).with_context(|| format!("cannot open state {}", p.display()))?;
        session
            .restore_state(&mut std::io::BufReader::new(&mut f))
            .with_context(|| format!("state {}", p.display()))?;
    }
    let size = source.size();
    if a.parse_only {
        let (mut input, format) = source.into_lines()?;
        return parse_only(&mut input, &format);
    }
    let sink_kind = crate::table::sink(&a.output)?;
    let mut out = None;
    let mut table = None;
    if !a.no_output {
        match sink_kind {
            crate::table::Sink::Lines => out = Some(crate::io::open_output(&a.output.output)?),
            crate::table::Sink::Table(path, format) => {
                let names = registry.names().map(String::from).collect();
                table = Some(crate::table::TableOut::new(path, format, names, false));
            }
        }
    }
    let mut rejects = crate::pipeline::Rejects::new(a.rejects.as_deref())?;
    let show_progress = a.progress.unwrap_or_else(|| {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal() && !crate::io::output_is_terminal(&a.output.output)
    });
    let bar = if show_progress {
        let b = match size {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {bytes} read {binary_bytes_per_sec}")
                    .expect("valid template"),
            ),
        };
        Some(b)
    } else {
        None
    };

    let summary_idx: Vec<(usize, &str)> = SUMMARY_FEATURES
        .iter()
        .filter_map(|n| registry.index_of(n).map(|i| (i, *n)))
        .collect();
    let mut writer = FeatureWriter::new(registry.names());
    // With parser threads, records are formatted and written on other threads too.
    let mut parallel = None;
    if a.input.parsers() > 0 {
        if let Some(o) = out.take() {
            let names: Vec<String> = registry.names().map(String::from).collect();
            parallel = Some(crate::output::ParallelRecords::new(
                || FeatureWriter::new(names.iter().map(String::as_str)),
                a.input.parsers(),
                o,
            ));
        }
    }
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 17);
    let mut labels: BTreeMap<String, LabelStats> = BTreeMap::new();
    let started = Instant::now();

    let read = {
        let consume = |batch: &mut Output| -> Result<()> {
            for r in batch.records() {
                if let Some(l) = r.label_text() {
                    let st = crate::pipeline::label_entry(&mut labels, &l, || LabelStats {
                        sums: vec![0.0; summary_idx.len()],
                        ..LabelStats::default()
                    });
                    st.events += 1;
                    st.clients.add(r.client);
                    for (k, (i, _)) in summary_idx.iter().enumerate() {
                        st.sums[k] += r.features[*i];
                    }
                }
            }
            if let Some(t) = table.as_mut() {
                for r in batch.records() {
                    t.push_key(&r);
                    t.push_values(r.features);
                }
                t.maybe_flush()?;
            }
            if let Some(o) = out.as_mut() {
                writer.write_batch(batch, &mut buf);
                if buf.len() >= 1 << 16 {
                    o.write_all(&buf)?;
                    buf.clear();
                }
            }
            if let Some(p) = parallel.as_mut() {
                p.push(batch)?;
            }
            Ok(())
        };
        let mut delivery = crate::pipeline::Delivery::new(&mut rejects, consume);
        crate::pipeline::drive(
            source,
            a.input.parsers(),
            &mut session,
            &mut delivery,
            |n| {
                if let Some(b) = &bar {
                    b.inc(n as u64);
                }
            },
        )?
    };
    if let Some(p) = parallel {
        p.finish()?;
    }
    if let Some(o) = out.as_mut() {
        o.write_all(&buf)?;
        o.flush()?;
    }
    if let Some(t) = table {
        t.finish()?;
    }
    rejects.finish()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(p) = &a.save_state {
        let f = File::create(p).with_context(|| format!("cannot create state {}", p.display()))?;
        let mut w = BufWriter::new(f);
        session
            .save_state(&mut w)
            .with_context(|| format!("saving state to {}", p.display()))?;
        w.flush()
            .with_context(|| format!("saving state to {}", p.display()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let engine = session.engine();
    let st = engine.stats();
    tracing::info!(
        message = "Features computed.",
        events = st.events_out,
        rejected = rejects.total(),
        late = st.late,
        clients = engine.clients(),
        secs
    );
    summary(engine, &read, &rejects.counts, &labels, &summary_idx, secs);
    Ok(())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn summary(
    engine: &FeatureEngine,
    read: &crate::pipeline::Consumed,
    rejected: &BTreeMap<String, u64>,
    labels: &BTreeMap<String, LabelStats>,
    idx: &[(usize, &str)],
    secs: f64,
) {
    let st = engine.stats();
    let evicted = engine.evictions();
    let n_rej: u64 = rejected.values().sum();
    let mut e = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        e,
        "gatewatch features: {} events with features in {:.2} s ({:.0} events/s)",
        thousands(st.events_out),
        secs,
        st.events_out as f64 / secs.max(1e-9)
    );
    let _ = write!(
        e,
        "  {} read: {}; rejected: {}",
        read.unit(),
        thousands(read.units),
        thousands(n_rej)
    );
    if n_rej > 0 {
        let parts: Vec<String> = rejected
            .iter()
            .map(|(k, v)| format!("{} {k}", thousands(*v)))
            .collect();
        let _ = write!(e, " ({})", parts.join(", "));
    }
    if read.blank > 0 {
        let _ = write!(e, "; blank lines skipped: {}", read.blank);
    }
    e.push('\n');
    let kinds: Vec<String> = KeyKind::ALL
        .iter()
        .zip(st.keys_by_kind)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{} {}", k.as_str(), thousands(n)))
        .collect();
    let _ = writeln!(
        e,
        "  clients: {} tracked at the end (cap {}{}), {} seen, evicted {} idle + {} over capacity; keys used: {}",
        thousands(engine.clients() as u64),
        thousands(engine.max_clients() as u64),
        if engine.parts() > 1 {
            format!(
                ", {} parts of {}",
                engine.parts(),
                thousands(engine.store().capacity() as u64)
            )
        } else {
            String::new()
        },
        thousands(engine.created()),
        thousands(evicted.idle),
        thousands(evicted.capacity),
        if kinds.is_empty() {
            "-".into()
        } else {
            kinds.join(", ")
        }
    );
    let pop = engine.population();
    let _ = writeln!(
        e,
        "  endpoints: {} templates{}; malformed bearer tokens: {}; feature set {}",
        pop.endpoints() - 1,
        if pop.overflowed > 0 {
            format!(" ({} requests over the template cap)", pop.overflowed)
        } else {
            String::new()
        },
        st.malformed_jwt,
        engine.registry().hash
    );
    if !labels.is_empty() && !idx.is_empty() {
        let _ = write!(
            e,
            "  mean features by label:\n    {:<20} {:>8} {:>7}",
            "label", "events", "clients"
        );
        for (_, n) in idx {
            let _ = write!(e, " {n:>19}");
        }
        e.push('\n');
        for (l, s) in labels {
            let _ = write!(
                e,
                "    {:<20} {:>8} {:>7}",
                l,
                s.events,
                crate::pipeline::distinct(&s.clients)
            );
            for v in &s.sums {
                let _ = write!(e, " {:>19.3}", v / s.events.max(1) as f64);
            }
            e.push('\n');
        }
    }
    say_raw!("{e}");
}

/// Parses every line and counts: the ceiling the full pipeline is measured against.
fn parse_only(input: &mut dyn Read, format: &Format) -> Result<()> {
    let started = Instant::now();
    let mut data = Vec::new();
    input.read_to_end(&mut data).context("reading input")?;
    let (mut ok, mut bad) = (0u64, 0u64);
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match format.parse(line) {
            Ok(ev) => {
                ok += 1;
                std::hint::black_box(ev);
            }
            Err(_) => bad += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    say!(
        "gatewatch features --parse-only: {ok} events, {bad} rejected in {secs:.2} s ({:.0} events/s)",
        ok as f64 / secs.max(1e-9)
    );
    Ok(())
}
