//! Feature selection: a configuration that selects features outputs exactly those columns of
//! the full run, bit for bit, on one thread and on several; bad selections are refused by
//! name.

use std::net::{IpAddr, Ipv4Addr};

use gatewatch_event::RequestEvent;
use gatewatch_features::{Config, FeatureEngine, Record, Registry};

fn events() -> Vec<RequestEvent> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t0 = 1_767_603_600_000i64;
    (0..6000)
        .map(|i| {
            let r = next();
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, (r % 3) as u8, (r >> 8) as u8 % 40));
            let path = format!(
                "/v1/{}/{}",
                ["users", "orders", "items"][(r >> 16) as usize % 3],
                r >> 20 & 63
            );
            let status = [200, 200, 200, 404, 401, 500][(r >> 30) as usize % 6];
            RequestEvent::new(
                t0 + i * 150 + (r >> 40) as i64 % 2000,
                ip,
                "GET",
                &path,
                status,
            )
        })
        .collect()
}

fn run(cfg: &Config, threads: usize, events: &[RequestEvent]) -> (Vec<Vec<u64>>, Registry) {
    let mut e = FeatureEngine::with_threads(cfg, threads).unwrap();
    let mut out = Vec::new();
    let mut sink = |r: &Record<'_>| out.push(r.features.iter().map(|v| v.to_bits()).collect());
    for (i, ev) in events.iter().enumerate() {
        e.push(ev.clone(), i as u64, &mut sink, &mut |_| {});
        if i % 997 == 0 {
            e.flush(&mut sink);
        }
    }
    e.finish(&mut sink);
    (out, e.registry().clone())
}

#[test]
fn a_selection_outputs_those_columns_of_the_full_run() {
    let evs = events();
    let full_cfg = Config::default();
    let (full, all) = run(&full_cfg, 1, &evs);
    let pick = [
        "req_count_1m",
        "error_ratio_10m",
        "distinct_endpoints_1m",
        "transition_surprise",
        "endpoint_rate_ratio",
        "req_count_10s",
    ];
    let cfg = Config::parse(&format!(
        "[features]\nselect = [{}]\n",
        pick.map(|p| format!("{p:?}")).join(", ")
    ))
    .unwrap();
    for threads in [1, 3] {
        let (sel, reg) = run(&cfg, threads, &evs);
        // Registry order, whatever the order of the list.
        let names: Vec<&str> = reg.names().collect();
        assert_eq!(
            names,
            [
                "req_count_10s",
                "req_count_1m",
                "distinct_endpoints_1m",
                "error_ratio_10m",
                "transition_surprise",
                "endpoint_rate_ratio"
            ]
        );
        assert_eq!(reg.hash, all.hash, "a selection keeps the feature set");
        assert_eq!(reg.full_len(), all.len());
        let idx: Vec<usize> = names.iter().map(|n| all.index_of(n).unwrap()).collect();
        assert_eq!(sel.len(), full.len());
        for (row, (s, f)) in sel.iter().zip(&full).enumerate() {
            let want: Vec<u64> = idx.iter().map(|&i| f[i]).collect();
            assert_eq!(s, &want, "row {row}, threads {threads}");
        }
    }
}

#[test]
fn only_point_features_or_one_horizon_selected_still_equal_the_full_run() {
    let evs = events();
    let (full, all) = run(&Config::default(), 1, &evs);
    for pick in [
        vec![
            "secs_since_prev",
            "transition_surprise",
            "endpoint_entropy_1m",
        ],
        vec!["iat_cv_1h", "client_age_secs"],
    ] {
        let list: Vec<String> = pick.iter().map(|p| format!("{p:?}")).collect();
        let cfg = Config::parse(&format!("[features]\nselect = [{}]\n", list.join(", "))).unwrap();
        for threads in [1, 2] {
            let (sel, reg) = run(&cfg, threads, &evs);
            let idx: Vec<usize> = reg.names().map(|n| all.index_of(n).unwrap()).collect();
            for (row, (s, f)) in sel.iter().zip(&full).enumerate() {
                let want: Vec<u64> = idx.iter().map(|&i| f[i]).collect();
                assert_eq!(s, &want, "{pick:?}, row {row}, threads {threads}");
            }
        }
    }
}

#[test]
fn a_state_keeps_the_horizons_it_computes() {
    let evs = events();
    let sel = Config::parse("[features]\nselect = [\"req_count_1m\"]\n").unwrap();
    let mut e = FeatureEngine::new(&sel).unwrap();
    for (i, ev) in evs.iter().take(500).enumerate() {
        e.push(ev.clone(), i as u64, &mut |_| {}, &mut |_| {});
    }
    e.finish(&mut |_| {});
    let mut bytes = Vec::new();
    e.save_state(&mut bytes).unwrap();
    // Restored into the same selection: fine; into the full configuration: refused, naming
    // the windows (the buckets of the other horizons were never kept).
    FeatureEngine::new(&sel)
        .unwrap()
        .restore_state(&mut bytes.as_slice())
        .unwrap();
    let err = FeatureEngine::new(&Config::default())
        .unwrap()
        .restore_state(&mut bytes.as_slice())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("horizons_secs = [60]") && err.contains("select"),
        "{err}"
    );
}

#[test]
fn bad_selections_are_refused_by_name() {
    let err = |toml: &str| Config::parse(toml).unwrap_err().to_string();
    let e = err("[features]\nselect = [\"req_count_1m\", \"req_cuont_1m\"]\n");
    assert!(
        e.contains("features.select: unknown feature \"req_cuont_1m\""),
        "{e}"
    );
    let e = err("[features]\nselect = [\"req_count_2m\"]\n");
    assert!(
        e.contains("req_count_2m") && e.contains("did you mean"),
        "{e}"
    );
    assert!(e.contains("req_count_1m"), "{e}");
    let e = err("[features]\nselect = []\n");
    assert!(e.contains("name at least one feature"), "{e}");
    let e = err("[features]\nselect = [\"iat_cv_1m\", \"iat_cv_1m\"]\n");
    assert!(e.contains("named twice"), "{e}");
    // Names follow the configured horizons.
    let e = err("[features]\nhorizons_secs = [60]\nselect = [\"req_count_10s\"]\n");
    assert!(e.contains("unknown feature \"req_count_10s\""), "{e}");
    Config::parse("[features]\nhorizons_secs = [90]\nselect = [\"req_count_90s\"]\n").unwrap();
}
