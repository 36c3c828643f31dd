//! The streaming detectors on hostile series: any timestamps (repeated, backwards, at the
//! ends of the range), any values (NaN, infinities, huge), any valid parameters — no panic,
//! scores in [0, 1], surprisal finite and ≥ 0, non-finite and out-of-range values refused
//! and not learnt.

use gatewatch_models::{DetectorError, EwmaParams, HalfLife, MAX_VALUE, RelativeEntropyParams};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e6f64..1e6,
        1 => Just(0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::MAX),
        1 => Just(-f64::MAX),
        1 => Just(1e-300),
    ]
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 0i64..10_000_000,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(0),
    ]
}

fn ewma_params() -> impl Strategy<Value = EwmaParams> {
    (
        prop_oneof![
            (1e-6f64..1e6).prop_map(HalfLife::Samples),
            (1e-6f64..1e6).prop_map(HalfLife::Seconds)
        ],
        0usize..30,
        prop_oneof![Just(1e-9), 1e-9f64..10.0],
        0.0f64..1.0,
        prop_oneof![Just(None), (1.0f64..1e7).prop_map(Some)],
        0usize..300,
        0.0f64..=1.0,
    )
        .prop_map(
            |(half_life, warmup, min_std, rel_std, season_secs, w, g)| EwmaParams {
                half_life,
                warmup,
                min_std,
                rel_std,
                season_secs,
                repeat_window: w,
                repeat_weight: g,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ewma_never_panics_and_stays_in_range(
        p in ewma_params(),
        series in prop::collection::vec((timestamp(), value()), 0..400),
    ) {
        let mut d = p.build().unwrap();
        for (t, v) in series {
            match d.update(t, v) {
                Ok(pt) => {
                    prop_assert!(v.abs() <= MAX_VALUE);
                    prop_assert!((0.0..=1.0).contains(&pt.score), "{pt:?}");
                    prop_assert!(pt.surprisal >= 0.0 && pt.surprisal.is_finite(), "{pt:?}");
                    prop_assert!(pt.statistic.is_finite(), "{pt:?}");
                }
                Err(DetectorError::NonFinite { .. }) => prop_assert!(!v.is_finite()),
                Err(DetectorError::OutOfRange { .. }) => prop_assert!(v.abs() > MAX_VALUE),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }

    #[test]
    fn relative_entropy_never_panics_and_stays_in_range(
        bins in 2usize..10,
        extra in 0usize..20,
        series in prop::collection::vec((timestamp(), value()), 0..300),
    ) {
        let p = RelativeEntropyParams { reference: 2 * bins + extra, recent: bins + extra / 2, bins };
        let mut d = p.build().unwrap();
        for (t, v) in series {
            match d.update(t, v) {
                Ok(pt) => {
                    prop_assert!((0.0..=1.0).contains(&pt.score), "{pt:?}");
                    prop_assert!(pt.surprisal >= 0.0 && pt.surprisal.is_finite(), "{pt:?}");
                }
                Err(DetectorError::NonFinite { .. }) => prop_assert!(!v.is_finite()),
                Err(DetectorError::OutOfRange { .. }) => prop_assert!(v.abs() > MAX_VALUE),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}

#[test]
fn the_largest_doubles_are_refused_and_the_largest_allowed_do_not_poison_the_detectors() {
    for p in [EwmaParams::default(), EwmaParams::plain(60.0, 0, 1e-6)] {
        let mut d = p.build().unwrap();
        let values = [
            1.0, MAX_VALUE, -MAX_VALUE, MAX_VALUE, 2.0, 3.0, -MAX_VALUE, 1.0,
        ];
        for (i, v) in values.iter().cycle().take(200).enumerate() {
            let pt = d.update(i as i64 * 1000, *v).unwrap();
            assert!((0.0..=1.0).contains(&pt.score), "{i}: {pt:?}");
            assert!(
                pt.surprisal >= 0.0 && pt.surprisal.is_finite(),
                "{i}: {pt:?}"
            );
        }
        let e = d.update(300_000, f64::MAX).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}
