//! `gatewatch serve`: the stream scoring service (`gatewatch-serve`) with the CLI's
//! configuration, model and engine set up as `score` sets them up.

use std::path::Path;

use anyhow::{Context, Result};
use gatewatch_features::FeatureEngine;
use gatewatch_features::Format;
use gatewatch_pipeline::{Session, SessionOptions};
use gatewatch_serve::stream::{Input, SinkTarget, StreamOptions};
use gatewatch_serve::{ServeOptions, Service};

use crate::{LineFormat, ServeArgs};

/// A duration: `30s`, `5m`, `1h30m`, or a bare number of seconds.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?,
    };
    if d.is_zero() {
        return Err("must be longer than 0 s".into());
    }
    Ok(d)
}

/// The line format of `--format`.
fn line_format(a: &ServeArgs, settings: &gatewatch_config::Settings) -> Format {
    match a.format {
        LineFormat::Ndjson => Format::Ndjson,
        LineFormat::Combined => Format::Combined(settings.engine.input.combined.clone()),
    }
}

/// The stream input and sinks of `--input`.
fn stream_options(
    a: &ServeArgs,
    settings: &gatewatch_config::Settings,
) -> Result<Option<StreamOptions>> {
    let input = if a.simulate {
        Input::Simulator {
            config: gatewatch_sim::SimConfig {
                seed: a.sim_seed,
                duration_ms: gatewatch_sim::parse_duration(&a.sim_duration)
                    .map_err(|e| anyhow::anyhow!("--sim-duration: {e}"))?,
                users: a.sim_users,
                ..gatewatch_sim::SimConfig::default()
            },
            realtime: a.sim_realtime,
        }
    } else {
        let Some(path) = a.input.as_ref() else {
            return Ok(None);
        };
        if path.as_os_str() == "-" {
            Input::Stdin
        } else if a.follow {
            Input::Follow(path.clone())
        } else {
            Input::File(path.clone())
        }
    };
    let mut o = StreamOptions::new(input);
    o.format = line_format(a, settings);
    o.scores = a.scores_out.as_deref().map(SinkTarget::parse);
    o.decisions = a.decisions_out.as_deref().map(SinkTarget::parse);
    o.flush_every = a.flush_every;
    Ok(Some(o))
}

/// The Kafka topics of `--kafka-*`.
#[cfg(feature = "kafka")]
fn kafka_options(
    a: &ServeArgs,
    settings: &gatewatch_config::Settings,
) -> Result<Option<gatewatch_serve::kafka::KafkaOptions>> {
    let k = &settings.kafka;
    let brokers = a.kafka_brokers.clone().or_else(|| k.brokers.clone());
    let input = a.kafka_input.clone().or_else(|| k.input.clone());
    let (brokers, input) = match (brokers, input) {
        (Some(b), Some(i)) => (b, i),
        (None, None) => return Ok(None),
        (None, Some(_)) => anyhow::bail!(
            "Kafka input without brokers: --kafka-brokers (or GATEWATCH_KAFKA_BROKERS, [kafka] brokers)"
        ),
        (Some(_), None) => {
            anyhow::bail!("Kafka brokers without an input topic: --kafka-input (or [kafka] input)")
        }
    };
    if a.input.is_some() || a.simulate {
        anyhow::bail!(
            "--input or --simulate, and a Kafka input topic ([kafka] input): one input at a time"
        );
    }
    let mut o = gatewatch_serve::kafka::KafkaOptions::new(&brokers, &input);
    if let Some(g) = a.kafka_group.clone().or_else(|| k.group.clone()) {
        o.group = g;
    }
    o.scores = a.kafka_scores.clone().or_else(|| k.scores.clone());
    o.decisions = a.kafka_decisions.clone().or_else(|| k.decisions.clone());
    o.dead_letters = a
        .kafka_dead_letters
        .clone()
        .or_else(|| k.dead_letters.clone());
    o.properties = k.properties.clone().into_iter().collect();
    for kv in &a.kafka_set {
        let Some((key, v)) = kv.split_once('=') else {
            anyhow::bail!("--kafka-set {kv:?}: expected KEY=VALUE (a librdkafka property)");
        };
        o.properties
            .push((key.trim().to_string(), v.trim().to_string()));
    }
    o.population = a.kafka_population.clone().or_else(|| k.population.clone());
    o.partitions = a.kafka_partitions.clone().or_else(|| k.partitions.clone());
    if o.population.is_some() && o.partitions.is_none() {
        anyhow::bail!(
            "a population topic ([kafka] population) needs the partitions this instance \
             reads: --kafka-partitions (or [kafka] partitions)"
        );
    }
    o.format = line_format(a, settings);
    o.flush_every = a.flush_every;
    Ok(Some(o))
}

pub fn run(a: ServeArgs) -> Result<()> {
    let settings = crate::pipeline::settings(a.config.as_deref())?;
    let engine = FeatureEngine::new(&settings.engine)?;
    let model = a.model.as_deref().or(settings.model.path.as_deref());
    let scorer = crate::model_cmd::load_model(model, engine.registry())?;
    let mut session = Session::new(
        engine,
        Some(scorer),
        SessionOptions {
            batch: 256,
            reasons: a.reasons,
        },
    );
    let rules = a.rules.as_deref().or(settings.rules.path.as_deref());
    if let Some(p) = rules {
        session.set_rules(Some(crate::rules_cmd::load(p, &session)?));
    }
    let mut bouncer_keys = a.bouncer_keys.clone();
    bouncer_keys.extend(settings.rules.bouncer_keys.iter().cloned());
    bouncer_keys.retain(|k| !k.is_empty());
    if rules.is_some() && bouncer_keys.is_empty() {
        say!(
            "gatewatch serve: no bouncer key (--bouncer-key, [rules] bouncer_keys): the decisions API refuses every request"
        );
    }
    let service = Service::new(
        session,
        ServeOptions {
            state: a.state.clone(),
            snapshot_every: a.snapshot_every,
            model: model.map(Path::to_path_buf),
            rules: rules.map(Path::to_path_buf),
            bouncer_keys,
            stream: stream_options(&a, &settings)?,
            #[cfg(feature = "kafka")]
            kafka: kafka_options(&a, &settings)?,
            watch: !a.no_watch,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let model = service.model();
        let input = match service.input() {
            Some(i) => format!("input {i}; "),
            None => "POST /v1/events, ".to_string(),
        };
        gatewatch_serve::serve(
            service.clone(),
            listener,
            |addr| {
                say!("gatewatch serve: listening on http://{addr} (model {model}; {input}GET /healthz /readyz /metrics /v1/alerts /v1/decisions)");
            },
            |note| {
                if let Some(n) = note {
                    say!("gatewatch serve: {n}");
                }
            },
        )
        .await
    })?;
    if service.input().is_some() {
        say!("gatewatch serve: {}", service.summary());
    }
    match &a.state {
        Some(p) => say!("gatewatch serve: stopped; state saved to {}", p.display()),
        None => say!("gatewatch serve: stopped"),
    }
    Ok(())
}
