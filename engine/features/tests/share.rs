//! Engines that own different parts and share their population statistics through
//! [`Share`]s (service instances owning different Kafka partitions) give every event the
//! features one engine gives it, bit for bit, whatever the number of engines and parts,
//! however late the shares arrive, and with engines that own idle parts or none.

use std::collections::VecDeque;

use gatewatch_event::{ClientKeyExtractor, RequestEvent};
use gatewatch_features::{Config, FeatureEngine, Record, RefusedKind, Share, part_of};
use proptest::prelude::*;

mod common;
use common::{Out, bits, config, log};

/// The one-engine run: its records and the lines it refused, both by line.
fn single(events: &[RequestEvent], cfg: &Config) -> (Out, Vec<u64>) {
    let mut eng = FeatureEngine::new(cfg).unwrap();
    let mut out = Vec::new();
    let mut refused = Vec::new();
    let mut sink = |r: &Record<'_>| out.push(bits(r));
    for (i, e) in events.iter().enumerate() {
        eng.push(e.clone(), i as u64, &mut sink, &mut |l| {
            refused.push(l.line)
        });
    }
    eng.finish(&mut sink);
    out.sort();
    refused.sort_unstable();
    (out, refused)
}

/// A share as it travels: to bytes and back.
fn travel(s: &Share) -> Share {
    Share::from_bytes(&s.to_bytes()).unwrap()
}

/// `instances` engines over `parts` parts (part `p` owned by engine `p % instances`; a
/// client's events all in the part of its key), each share delivered to the other engines
/// after `delays[k]` further events. Every engine's event time follows the newest event
/// of all (as the service's engines do once their inputs are read up to now). At the first
/// moment from event `restart` on when engine 0 holds no event, its state is saved and
/// restored into a new engine that goes on in its place.
fn shared(
    events: &[RequestEvent],
    cfg: &Config,
    parts: u32,
    instances: usize,
    delays: &[usize],
    mut restart: usize,
) -> (Out, Vec<u64>) {
    let mut keys = ClientKeyExtractor::new(&cfg.client_key).unwrap();
    let mut engines: Vec<FeatureEngine> = (0..instances)
        .map(|i| {
            let mut e = FeatureEngine::new(cfg).unwrap();
            let own: Vec<u32> = (0..parts)
                .filter(|p| *p as usize % instances == i)
                .collect();
            e.share_population(parts, &own).unwrap();
            e
        })
        .collect();
    let mut out = Vec::new();
    let mut refused = Vec::new();
    // (due after event, from engine, share)
    let mut wire: VecDeque<(usize, usize, Share)> = VecDeque::new();
    let mut sent = 0usize;
    let mut newest = i64::MIN;
    let mut key = String::new();
    let deliver = |engines: &mut Vec<FeatureEngine>,
                   wire: &mut VecDeque<(usize, usize, Share)>,
                   now: usize,
                   out: &mut Out| {
        while wire.front().is_some_and(|(due, _, _)| *due <= now) {
            let (_, from, share) = wire.pop_front().unwrap();
            for (j, e) in engines.iter_mut().enumerate() {
                if j != from {
                    e.receive(travel(&share), &mut |r| out.push(bits(r)))
                        .unwrap();
                }
            }
        }
    };
    for (i, ev) in events.iter().enumerate() {
        keys.key_into(ev, &mut key);
        let part = part_of(&key, parts);
        let owner = part as usize % instances;
        newest = newest.max(ev.ts_ms);
        engines[owner].push_in(
            part,
            ev.clone(),
            i as u64,
            &mut |r| out.push(bits(r)),
            &mut |l| refused.push(l.line),
        );
        for e in engines.iter_mut() {
            e.advance_time(newest, &mut |r| out.push(bits(r)), &mut |l| {
                refused.push(l.line)
            });
        }
        for (from, e) in engines.iter_mut().enumerate() {
            for s in e.take_shares() {
                let delay = delays[sent % delays.len()];
                sent += 1;
                // Shares of one engine stay in order: due no earlier than the one before.
                let due = wire
                    .back()
                    .map_or(i + delay, |(d, _, _)| (*d).max(i + delay));
                wire.push_back((due, from, s));
            }
        }
        deliver(&mut engines, &mut wire, i, &mut out);
        if i >= restart && engines[0].pending() == 0 {
            restart = usize::MAX;
            let mut bytes = Vec::new();
            engines[0].save_state(&mut bytes).unwrap();
            let mut fresh = FeatureEngine::new(cfg).unwrap();
            fresh.restore_state(&mut bytes.as_slice()).unwrap();
            assert!(fresh.is_sharing());
            assert_eq!(fresh.clients(), engines[0].clients());
            let own: Vec<u32> = (0..parts)
                .filter(|p| *p as usize % instances == 0)
                .collect();
            fresh.share_population(parts, &own).unwrap();
            engines[0] = fresh;
        }
    }
    // The end of the input: every engine processes what it can and seals its parts; the
    // shares that lets them write go round until nothing is left.
    for _ in 0..100 {
        for e in engines.iter_mut() {
            e.finish(&mut |r| out.push(bits(r)));
        }
        for (from, e) in engines.iter_mut().enumerate() {
            for s in e.take_shares() {
                wire.push_back((0, from, s));
            }
        }
        if wire.is_empty() && engines.iter().all(|e| e.pending() == 0) {
            break;
        }
        deliver(&mut engines, &mut wire, usize::MAX, &mut out);
    }
    assert!(
        engines.iter().all(|e| e.pending() == 0),
        "events left waiting"
    );
    for e in &engines {
        assert_eq!(e.shares_dropped(), 0);
    }
    out.sort();
    refused.sort_unstable();
    (out, refused)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// 2–3 engines over 2–5 parts (some engines own idle parts, one owns none when there are
    /// fewer parts than engines), shares delayed by 0–40 events, one engine saved and
    /// restored mid-stream: the same records bit for bit as one engine, and the same events
    /// refused as late; also with endpoint, address and network tables too small for the log.
    #[test]
    fn engines_sharing_population_statistics_equal_one_engine(
        events in log(),
        small in any::<bool>(),
        delays in prop::collection::vec(0usize..40, 1..8),
        restart in 8usize..120,
    ) {
        let cfg = config(if small { "max_endpoints = 4\nmax_addresses = 3" } else { "" });
        let (one, late) = single(&events, &cfg);
        prop_assert_eq!(one.len() + late.len(), events.len());
        for (parts, instances) in [(2, 2), (3, 2), (5, 3), (2, 3)] {
            let (got, got_late) = shared(&events, &cfg, parts, instances, &delays, restart);
            prop_assert_eq!(&got_late, &late, "{} parts, {} engines", parts, instances);
            prop_assert_eq!(&got, &one, "{} parts, {} engines", parts, instances);
        }
    }
}

fn event(ts: i64, ip: u8) -> RequestEvent {
    RequestEvent::new(
        ts,
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, ip)),
        "GET",
        "/a",
        200,
    )
}

/// An event of epoch e waits for every part's contributions to epoch e − 1; the share
/// that completes them releases it.
#[test]
fn an_event_of_a_new_epoch_waits_for_the_other_parts() {
    let cfg = config("");
    let mut a = FeatureEngine::new(&cfg).unwrap();
    let mut b = FeatureEngine::new(&cfg).unwrap();
    a.share_population(2, &[0]).unwrap();
    b.share_population(2, &[1]).unwrap();
    // 10 s into an epoch.
    let t0 = 1_700_000_020_000i64;
    let mut got = Vec::new();
    let mut none = |_: gatewatch_features::LateEvent| panic!("nothing is refused");
    // Even the first event waits: part 1 may have had events in an earlier epoch.
    a.push_in(0, event(t0, 1), 0, &mut |r| got.push(r.line), &mut none);
    a.advance_time(t0, &mut |r| got.push(r.line), &mut none);
    a.push_in(
        0,
        event(t0 + 35_000, 1),
        1,
        &mut |r| got.push(r.line),
        &mut none,
    );
    // Past the watermark too (2 s of lateness).
    a.advance_time(t0 + 40_000, &mut |r| got.push(r.line), &mut none);
    assert!(got.is_empty());
    assert_eq!(a.pending(), 2);
    // Part 1 had nothing; its engine's time follows part 0's, and its shares release the
    // events one epoch at a time.
    let round = |a: &mut FeatureEngine, b: &mut FeatureEngine, got: &mut Vec<u64>| {
        for s in a.take_shares() {
            b.receive(travel(&s), &mut |_| panic!("b has no events"))
                .unwrap();
        }
        let t = b.remote_time();
        b.advance_time(t, &mut |_| {}, &mut |_| {});
        let from_b = b.take_shares();
        for s in &from_b {
            assert_eq!(s.epoch(), None, "an idle part sends no contributions");
            a.receive(travel(s), &mut |r| got.push(r.line)).unwrap();
        }
        from_b.len()
    };
    assert_eq!(round(&mut a, &mut b, &mut got), 1);
    assert_eq!(got, [0], "the first epoch's event, not the second's");
    assert_eq!(a.pending(), 1);
    let shares = a.take_shares();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].part(), 0);
    assert!(shares[0].epoch().is_some(), "part 0's contributions travel");
    for s in &shares {
        b.receive(travel(s), &mut |_| {}).unwrap();
    }
    assert_eq!(round(&mut a, &mut b, &mut got), 1);
    assert_eq!(got, [0, 1]);
    assert_eq!(a.pending(), 0);
}

/// Events of parts the engine does not own, shares about its own parts, from another number
/// of parts or another feature set, and damaged shares are refused by reason.
#[test]
fn foreign_events_and_wrong_shares_are_refused() {
    let cfg = config("");
    let mut a = FeatureEngine::new(&cfg).unwrap();
    a.share_population(3, &[0, 2]).unwrap();
    assert!(a.owns(0) && !a.owns(1) && a.owns(2) && !a.owns(3));
    let mut refused = Vec::new();
    a.push_in(
        1,
        event(1_700_000_000_000, 1),
        7,
        &mut |_| panic!("refused"),
        &mut |l| refused.push(l),
    );
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].line, 7);
    assert_eq!(refused[0].kind, RefusedKind::Foreign { part: 1 });
    assert!(refused[0].to_string().contains("part 1"));

    a.push_in(0, event(1_700_000_000_000, 1), 8, &mut |_| {}, &mut |_| {});
    a.advance_time(1_700_000_100_000, &mut |_| {}, &mut |_| {});
    let own = a.take_shares();
    assert_eq!(own.len(), 2);
    let mut c = FeatureEngine::new(&cfg).unwrap();
    c.share_population(3, &[0]).unwrap();
    let e = c.receive(own[0].clone(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("which this engine owns"), "{e}");
    let mut d = FeatureEngine::new(&cfg).unwrap();
    d.share_population(4, &[1]).unwrap();
    let e = d.receive(own[0].clone(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("engine of 3 parts"), "{e}");
    let mut other = FeatureEngine::new(&Config::default()).unwrap();
    other.share_population(3, &[1]).unwrap();
    let e = other.receive(own[0].clone(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("another feature set"), "{e}");
    let mut plain = FeatureEngine::new(&cfg).unwrap();
    assert!(plain.receive(own[0].clone(), &mut |_| {}).is_err());

    let bytes = own[0].to_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        assert!(Share::from_bytes(&b).is_err(), "byte {i} flipped");
    }
    for n in 0..bytes.len() {
        assert!(Share::from_bytes(&bytes[..n]).is_err(), "cut at {n}");
    }
    assert!(Share::from_bytes(&bytes).is_ok());
}

/// A state saved without sharing cannot be split by part; one saved sharing is restored
/// owning the same parts, and refuses others.
#[test]
fn a_restored_state_shares_only_as_it_was_saved() {
    let cfg = config("");
    let mut plain = FeatureEngine::new(&cfg).unwrap();
    plain.push(event(1_700_000_000_000, 1), 0, &mut |_| {}, &mut |_| {});
    plain.finish(&mut |_| {});
    let e = plain.share_population(2, &[0]).unwrap_err();
    assert!(e.to_string().contains("without sharing"), "{e}");

    let mut a = FeatureEngine::new(&cfg).unwrap();
    a.share_population(4, &[1, 3]).unwrap();
    a.push_in(3, event(1_700_000_000_000, 1), 0, &mut |_| {}, &mut |_| {});
    a.advance_time(1_700_000_001_000, &mut |_| {}, &mut |_| {});
    let mut bytes = Vec::new();
    a.save_state(&mut bytes).unwrap();
    let mut b = FeatureEngine::new(&cfg).unwrap();
    b.restore_state(&mut bytes.as_slice()).unwrap();
    assert!(b.is_sharing() && b.owns(1) && b.owns(3) && !b.owns(0));
    assert_eq!(b.parts(), 4);
    let e = b.share_population(4, &[0, 1]).unwrap_err();
    assert!(e.to_string().contains("owning parts [1, 3] of 4"), "{e}");
    b.share_population(4, &[3, 1]).unwrap();
    // A plain state restored into a sharing engine ends its sharing.
    let mut plain_bytes = Vec::new();
    plain.save_state(&mut plain_bytes).unwrap();
    b.restore_state(&mut plain_bytes.as_slice()).unwrap();
    assert!(!b.is_sharing());
}
