//! `gatewatch simulate`.

use std::io::Write;

use anyhow::{Result, bail};
use gatewatch_event::{parse_rfc3339_ms, write_ndjson};
use gatewatch_sim::{Scenario, SimConfig, parse_duration, simulate};

use crate::SimulateArgs;

pub fn run(a: SimulateArgs) -> Result<()> {
    if a.list_scenarios {
        for s in Scenario::ALL {
            writeln!(
                std::io::stdout().lock(),
                "{:<20} {}",
                s.name(),
                s.description()
            )?;
        }
        return Ok(());
    }
    let scenarios = match a.scenarios.trim() {
        "all" => Scenario::ALL.to_vec(),
        "none" | "" => Vec::new(),
        list => list
            .split(',')
            .map(|s| Scenario::parse(s.trim()))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if a.users > 1_000_000 {
        bail!(
            "--users {} is more than the 1000000 this simulator generates",
            a.users
        );
    }
    let cfg = SimConfig {
        seed: a.seed,
        duration_ms: parse_duration(&a.duration)?,
        users: a.users,
        scenarios,
        start_ms: match &a.start {
            Some(s) => parse_rfc3339_ms(s).map_err(|e| anyhow::anyhow!("--start: {e}"))?,
            None => gatewatch_sim::DEFAULT_START_MS,
        },
    };
    let events = simulate(&cfg);
    if crate::table::write_events(&events, a.output.as_deref())? {
        return Ok(());
    }
    let mut out = crate::io::open_output(&a.output)?;
    let mut line = String::with_capacity(512);
    for e in &events {
        line.clear();
        write_ndjson(e, &mut line);
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    tracing::info!(
        message = "Traffic simulated.",
        events = events.len(),
        seed = a.seed
    );
    Ok(())
}
