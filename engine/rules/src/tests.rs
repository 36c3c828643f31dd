use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use crate::*;

fn schema() -> Schema {
    Schema {
        features: vec![
            "req_rate_1m".into(),
            "error_ratio_1m".into(),
            "auth_fail_10m".into(),
        ],
        detectors: vec!["robust".into(), "volumetric".into()],
    }
}

fn rules(text: &str) -> Rules {
    Rules::parse(text, &schema()).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(text: &str) -> RulesError {
    Rules::parse(text, &schema()).expect_err("the rules should be refused")
}

struct Ev {
    ts: i64,
    ip: IpAddr,
    client: String,
    method: &'static str,
    path: &'static str,
    status: u16,
    ua: &'static str,
    features: [f64; 3],
    score: f64,
    flagged: bool,
}

fn ev(ts: i64, ip: &str, rate: f64) -> Ev {
    Ev {
        ts,
        ip: ip.parse().unwrap(),
        client: format!("ip:{ip}"),
        method: "POST",
        path: "/login",
        status: 401,
        ua: "curl/8",
        features: [rate, 0.5, 3.0],
        score: 0.9,
        flagged: rate > 10.0,
    }
}

impl Ev {
    fn input(&self) -> Input<'_> {
        Input {
            request: RequestView {
                ts_ms: self.ts,
                ip: self.ip,
                method: self.method,
                host: "api.example.com",
                path: self.path,
                query: "",
                endpoint: "POST api.example.com/login",
                status: self.status,
                client: &self.client,
                client_kind: self.client.split(':').next().unwrap_or(""),
                user_agent: self.ua,
                headers: &[("x-api-key", "k-1")],
                asn: "64500",
                country: "NL",
                ja4: "",
            },
            features: &self.features,
            score: Some(ScoreView {
                overall: self.score,
                surprisal: 3.3,
                flagged: self.flagged,
                members: &[0.9, 0.1],
                endpoint_auth: 0.0,
            }),
        }
    }
}

fn observe(d: &mut Decider, e: &Ev, events: &mut Vec<DecisionEvent>) -> Option<Verdict> {
    d.observe(&e.input(), &|| vec!["req_rate_1m".to_string()], events)
}

const FAST: &str = r#"
[[rule]]
id = "fast"
when = "features.req_rate_1m > 10.0"
action = "block"
key = "ip"
ttl = "1m"
"#;

#[test]
fn a_matching_request_starts_a_decision_that_expires_in_event_time() {
    let mut d = Decider::new(Arc::new(rules(FAST)));
    let mut events = Vec::new();
    assert_eq!(observe(&mut d, &ev(0, "10.0.0.1", 1.0), &mut events), None);
    assert!(events.is_empty());
    let v = observe(&mut d, &ev(1_000, "10.0.0.1", 20.0), &mut events).unwrap();
    assert_eq!(
        (v.action, v.mode, v.fresh),
        (Action::Block, Mode::Enforce, true)
    );
    assert_eq!((v.scope, v.value.as_str()), (KeyScope::Ip, "10.0.0.1"));
    assert_eq!(v.until_ms, 61_000);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].change, Change::New);
    assert_eq!(events[0].decision.reasons, vec!["req_rate_1m".to_string()]);
    // Covered, not fresh, while it lasts, even by a request that does not match.
    let v = observe(&mut d, &ev(30_000, "10.0.0.1", 1.0), &mut events).unwrap();
    assert!(!v.fresh);
    // Another address is not covered.
    assert_eq!(
        observe(&mut d, &ev(30_000, "10.0.0.2", 1.0), &mut events),
        None
    );
    // One active decision per rule and key: a second match does not start another.
    observe(&mut d, &ev(40_000, "10.0.0.1", 20.0), &mut events);
    assert_eq!(events.len(), 1);
    assert_eq!(d.active().next().unwrap().hits, 2);
    // At its end it expires, before the request at that time is judged.
    assert_eq!(
        observe(&mut d, &ev(61_000, "10.0.0.1", 1.0), &mut events),
        None
    );
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[1].change, events[1].ts_ms, events[1].why),
        (Change::Expire, 61_000, Some("ttl"))
    );
    assert_eq!(d.active().count(), 0);
    assert_eq!(d.stats().rules[0].matched, 2);
    assert_eq!(d.stats().rules[0].decisions, 1);
    assert_eq!(d.stats().expired, 1);
}

#[test]
fn repeat_offenders_climb_the_ladder_until_they_are_forgotten() {
    let text = r#"
[[rule]]
id = "stuffing"
when = "request.status == 401 && features.auth_fail_10m >= 3"
action = "challenge"
key = "client"
ttl = "1m"
[rule.escalation]
ladder = ["block"]
ttl_factor = 3
forget = "10m"
"#;
    let mut d = Decider::new(Arc::new(rules(text)));
    let mut events = Vec::new();
    let v = observe(&mut d, &ev(0, "10.0.0.1", 1.0), &mut events).unwrap();
    assert_eq!((v.action, v.until_ms), (Action::Challenge, 60_000));
    // Offends again after the first ended: the next step, three times as long.
    let v = observe(&mut d, &ev(70_000, "10.0.0.1", 1.0), &mut events).unwrap();
    assert_eq!((v.action, v.until_ms), (Action::Block, 70_000 + 180_000));
    assert_eq!(events.last().unwrap().change, Change::Escalate);
    assert_eq!(events.last().unwrap().decision.level, 1);
    // The top of the ladder is the last step.
    let v = observe(&mut d, &ev(300_000, "10.0.0.1", 1.0), &mut events).unwrap();
    assert_eq!((v.action, v.until_ms), (Action::Block, 300_000 + 180_000));
    // Ten minutes after the last one ended, the offences are forgotten.
    let v = observe(&mut d, &ev(480_000 + 600_000, "10.0.0.1", 1.0), &mut events).unwrap();
    assert_eq!(
        (v.action, v.until_ms),
        (Action::Challenge, 1_080_000 + 60_000)
    );
    assert_eq!(d.stats().rules[0].escalations, 2);
}

#[test]
fn an_active_decision_escalates_after_more_hits() {
    let text = r#"
[[rule]]
id = "fast"
when = "features.req_rate_1m > 10.0"
action = "rate_limit"
rate = 5
per = "1s"
key = "ip/24"
ttl = "1m"
[rule.escalation]
ladder = ["block"]
ttl_factor = 1
after_hits = 2
"#;
    let mut d = Decider::new(Arc::new(rules(text)));
    let mut events = Vec::new();
    let v = observe(&mut d, &ev(0, "10.0.0.1", 20.0), &mut events).unwrap();
    assert_eq!(
        (v.action, v.scope, v.value.as_str()),
        (Action::RateLimit, KeyScope::Range, "10.0.0.0/24")
    );
    assert_eq!(
        events[0].decision.rate,
        Some(RateLimit {
            requests: 5,
            per_ms: 1000
        })
    );
    // The same range, another address: the same decision.
    let v = observe(&mut d, &ev(1_000, "10.0.0.9", 20.0), &mut events).unwrap();
    assert_eq!((v.action, v.fresh), (Action::RateLimit, false));
    assert_eq!(events.len(), 1);
    // Two more matches after the first: the next step, from now.
    let v = observe(&mut d, &ev(2_000, "10.0.0.7", 20.0), &mut events).unwrap();
    assert_eq!(
        (v.action, v.until_ms, v.fresh),
        (Action::Block, 62_000, true)
    );
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].change, Change::Escalate);
}

#[test]
fn shadow_rules_decide_but_an_enforced_one_wins_the_verdict() {
    let text = r#"
[[rule]]
id = "shadow-block"
when = "features.req_rate_1m > 10.0"
action = "block"
key = "ip"
mode = "shadow"
[[rule]]
id = "log-it"
when = "features.req_rate_1m > 10.0"
action = "log"
key = "client"
"#;
    let mut d = Decider::new(Arc::new(rules(text)));
    let mut events = Vec::new();
    let v = observe(&mut d, &ev(0, "10.0.0.1", 20.0), &mut events).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].decision.mode, Mode::Shadow);
    assert_eq!(
        (&*v.rule, v.action, v.mode),
        ("log-it", Action::Log, Mode::Enforce)
    );
    // Shadow alone.
    let text = text.replace(
        "id = \"log-it\"\nwhen = \"",
        "id = \"log-it\"\nwhen = \"false && ",
    );
    let mut d = Decider::new(Arc::new(rules(&text)));
    let v = observe(&mut d, &ev(0, "10.0.0.1", 20.0), &mut events).unwrap();
    assert_eq!((v.action, v.mode), (Action::Block, Mode::Shadow));
}

#[test]
fn allow_listed_requests_never_get_a_decision() {
    let text = format!(
        r#"
[[allow]]
cidrs = ["10.1.0.0/16", "2001:db8::/32"]
[[allow]]
clients = ["ip:10.0.0.5"]
[[allow]]
when = "request.user_agent.startsWith('Pingdom')"
{FAST}"#
    );
    let mut d = Decider::new(Arc::new(rules(&text)));
    let mut events = Vec::new();
    for ip in ["10.1.2.3", "10.0.0.5", "2001:db8::1"] {
        assert_eq!(observe(&mut d, &ev(0, ip, 50.0), &mut events), None, "{ip}");
    }
    let mut e = ev(0, "10.0.0.6", 50.0);
    e.ua = "Pingdom.com_bot";
    assert_eq!(observe(&mut d, &e, &mut events), None);
    assert!(events.is_empty());
    assert_eq!(d.stats().allowed, 4);
    assert!(observe(&mut d, &ev(0, "10.2.0.1", 50.0), &mut events).is_some());
}

#[test]
fn capacity_ends_the_decision_ending_soonest() {
    let text = format!("[settings]\nmax_decisions = 2\n{FAST}");
    let mut d = Decider::new(Arc::new(rules(&text)));
    let mut events = Vec::new();
    observe(&mut d, &ev(0, "10.0.0.1", 20.0), &mut events);
    observe(&mut d, &ev(1, "10.0.0.2", 20.0), &mut events);
    observe(&mut d, &ev(2, "10.0.0.3", 20.0), &mut events);
    assert_eq!(d.active().count(), 2);
    assert_eq!(d.stats().evicted, 1);
    let ended = events.iter().find(|e| e.change == Change::Expire).unwrap();
    assert_eq!(
        (ended.decision.value.as_str(), ended.why),
        ("10.0.0.1", Some("capacity"))
    );
}

#[test]
fn state_saves_and_restores_with_its_offences() {
    let text = r#"
[[rule]]
id = "stuffing"
when = "request.status == 401"
action = "challenge"
key = "client"
ttl = "1m"
[rule.escalation]
ladder = ["block"]
"#;
    let r = Arc::new(rules(text));
    let mut d = Decider::new(Arc::clone(&r));
    let mut events = Vec::new();
    observe(&mut d, &ev(0, "10.0.0.1", 1.0), &mut events);
    observe(&mut d, &ev(61_000, "10.0.0.2", 1.0), &mut events);
    let saved = d.save();
    let json = serde_json::to_string(&saved).unwrap();
    let mut back = Decider::new(r);
    back.restore(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(back.save(), saved);
    // The restored decider remembers 10.0.0.1's offence and numbers on.
    let v = observe(&mut back, &ev(62_000, "10.0.0.1", 1.0), &mut events).unwrap();
    assert_eq!((v.action, v.id), (Action::Block, 3));
}

#[test]
fn a_reload_ends_the_decisions_of_removed_rules() {
    let mut d = Decider::new(Arc::new(rules(FAST)));
    let mut events = Vec::new();
    observe(&mut d, &ev(0, "10.0.0.1", 20.0), &mut events);
    let other = FAST.replace("\"fast\"", "\"other\"");
    d.set_rules(Arc::new(rules(&other)), &mut events);
    assert_eq!(d.active().count(), 0);
    assert_eq!(events.last().unwrap().why, Some("rule removed"));
}

fn condition_error(when: &str) -> (usize, usize, String) {
    let text = format!("[[rule]]\nid = \"r1\"\nwhen = '''{when}'''\naction = \"block\"\n");
    match refused(&text) {
        RulesError::Condition { id, error } => {
            assert_eq!(id, "r1");
            (error.line, error.column, error.reason)
        }
        e => panic!("not a condition error: {e}"),
    }
}

#[test]
fn bad_conditions_are_refused_with_their_position() {
    let (line, col, why) = condition_error("features.req_rate_1m > 1 && features.req_rate_2m > 1");
    assert_eq!((line, col), (1, 29), "{why}");
    assert!(why.contains("unknown feature \"req_rate_2m\""), "{why}");
    let (_, _, why) = condition_error("request.pth == '/login'");
    assert!(why.contains("unknown request field \"pth\""), "{why}");
    let (_, _, why) = condition_error("score.onnx > 0.5");
    assert!(why.contains("unknown score field \"onnx\""), "{why}");
    let (_, _, why) = condition_error("rate > 5");
    assert!(why.contains("unknown variable \"rate\""), "{why}");
    let (_, _, why) = condition_error("features > 5");
    assert!(why.contains("use features.FIELD"), "{why}");
    let (line, _, why) = condition_error("request.status ==\n  == 401");
    assert_eq!(line, 2, "{why}");
    let (_, _, why) = condition_error("features.req_rate_1m + 1.0");
    assert!(why.contains("not a bool"), "{why}");
    let (_, _, why) = condition_error("request.path > 5");
    assert!(!why.is_empty());
    let (_, _, why) = condition_error(&"(".repeat(40));
    assert!(why.contains("nested deeper"), "{why}");
    let deep = format!("{}1 == 101", "1 + ".repeat(100));
    let (_, _, why) = condition_error(&deep);
    assert!(why.contains("nested deeper"), "{why}");
    let long = format!("request.path == '{}'", "a".repeat(5000));
    let (_, _, why) = condition_error(&long);
    assert!(why.contains("bytes long"), "{why}");
    // Comprehension variables are fine.
    rules(
        "[[rule]]\nid = \"r\"\nwhen = \"['/a', '/b'].exists(p, request.path.startsWith(p))\"\naction = \"log\"\n",
    );
}

#[test]
fn bad_fields_are_refused_with_the_rule_and_value() {
    let e = refused("[[rule]]\nid = \"r\"\nwhen = \"true\"\naction = \"ban\"\n");
    assert_eq!(
        e.to_string(),
        "rule \"r\": action: \"ban\" is not an action (log, challenge, rate_limit, block)"
    );
    let e = refused("[[rule]]\nid = \"r\"\nwhen = \"true\"\naction = \"block\"\nttl = \"soon\"\n");
    assert!(
        e.to_string()
            .starts_with("rule \"r\": ttl: \"soon\" is not a duration"),
        "{e}"
    );
    let e = refused("[[rule]]\nid = \"r\"\nwhen = \"true\"\naction = \"block\"\nkey = \"ip/40\"\n");
    assert!(e.to_string().contains("key: \"ip/40\""), "{e}");
    let e = refused("[[rule]]\nid = \"r\"\nwhen = \"true\"\naction = \"rate_limit\"\n");
    assert!(e.to_string().contains("needs rate"), "{e}");
    let e = refused(
        "[[rule]]\nid = \"r\"\nwhen = \"true\"\naction = \"log\"\n[[rule]]\nid = \"r\"\nwhen = \"true\"\naction = \"log\"\n",
    );
    assert!(e.to_string().contains("another rule has this id"), "{e}");
    let e = refused("[[rule]]\nid = \"r\"\nwhen = \"true\"\naction = \"log\"\ncolour = 1\n");
    assert!(
        matches!(e, RulesError::Syntax(ref m) if m.contains("colour")),
        "{e}"
    );
    let e = refused("[[allow]]\ncidrs = [\"10.0.0.0/33\"]\n");
    assert!(e.to_string().contains("allow[0]"), "{e}");
}

#[test]
fn simple_conjuncts_run_natively() {
    let r = rules(
        r#"
[[rule]]
id = "n"
when = "features.req_rate_1m > 10 && 0.5 <= score.robust && score.flagged && request.method == 'POST' && !(score.overall > 2.0) == true"
action = "log"
[[rule]]
id = "m"
when = "features.req_rate_1m > 10 && !score.flagged && request.path != '/x'"
action = "log"
"#,
    );
    assert!(!r.rules[0].when.is_native());
    assert!(r.rules[1].when.is_native());
}

/// A condition part: a field, an operator and a literal.
fn part() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec![
        "features.req_rate_1m",
        "features.error_ratio_1m",
        "score.overall",
        "score.endpoint_auth",
        "score.robust",
        "request.status",
    ]);
    let op = prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]);
    let lit = prop_oneof![
        (-3i64..30).prop_map(|i| i.to_string()),
        (-3.0f64..30.0).prop_map(|f| format!("{f:.2}")),
    ];
    let num = (field, op, lit, any::<bool>()).prop_map(|(f, o, l, flip)| {
        if flip {
            format!("{l} {o} {f}")
        } else {
            format!("{f} {o} {l}")
        }
    });
    let text = (
        prop::sample::select(vec!["request.method", "request.path"]),
        prop::sample::select(vec!["==", "!="]),
        prop::sample::select(vec!["'POST'", "'/login'", "'GET'"]),
    )
        .prop_map(|(f, o, l)| format!("{f} {o} {l}"));
    let affix = (
        prop::sample::select(vec!["request.path", "request.user_agent", "request.method"]),
        prop::sample::select(vec!["startsWith", "endsWith", "contains"]),
        prop::sample::select(vec!["'/lo'", "'gin'", "'curl'", "''", "'POST'"]),
    )
        .prop_map(|(f, m, l)| format!("{f}.{m}({l})"));
    let pattern = (
        prop::sample::select(vec!["request.path", "request.user_agent", "request.method"]),
        prop::sample::select(vec!["'^/lo'", "'curl|wget'", "'P.S'", "'(?i)LOGIN$'", "''"]),
    )
        .prop_map(|(f, p)| format!("{f}.matches({p})"));
    let list = prop_oneof![
        Just("request.status in [401, 403]".to_string()),
        Just("request.status in [200]".to_string()),
        Just("features.req_rate_1m in [1, 2.5, 3]".to_string()),
        Just("score.overall in []".to_string()),
        Just("request.method in ['GET', 'POST']".to_string()),
        Just("request.path in ['/a']".to_string()),
    ];
    prop_oneof![
        4 => num,
        1 => text,
        1 => affix,
        1 => pattern,
        1 => list,
        1 => Just("score.flagged".to_string()),
        1 => Just("!score.flagged".to_string()),
    ]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => -5.0f64..40.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => (0i64..20).prop_map(|i| i as f64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A condition evaluated natively matches exactly when CEL says it holds (an error in
    /// CEL, such as ordering a value that is not a number, does not hold).
    #[test]
    fn native_conjuncts_agree_with_the_interpreter(
        clauses in prop::collection::vec(prop::collection::vec(part(), 1..3), 1..4),
        values in prop::collection::vec(value(), 4),
        status in prop::sample::select(vec![200u16, 401, 404]),
        flagged in any::<bool>(),
        method in prop::sample::select(vec!["GET", "POST"]),
    ) {
        // A conjunction of disjunctions of simple parts.
        let parts: Vec<String> = clauses.iter().map(|c| format!("({})", c.join(" || "))).collect();
        let native = parts.join(" && ");
        let interpreted = parts.iter().map(|p| format!("(({p}) == true)")).collect::<Vec<_>>().join(" && ");
        let text = format!(
            "[[rule]]\nid = \"a\"\nwhen = \"{native}\"\naction = \"log\"\n\
             [[rule]]\nid = \"b\"\nwhen = \"{interpreted}\"\naction = \"log\"\n"
        );
        let r = Rules::parse(&text, &schema()).unwrap();
        prop_assert!(r.rules[0].when.is_native());
        prop_assert!(!r.rules[1].when.is_native());
        let mut e = ev(0, "10.0.0.1", values[0]);
        e.features[1] = values[1];
        e.score = values[2];
        e.status = status;
        e.flagged = flagged;
        e.method = method;
        let members = [values[3], 0.0];
        let mut input = e.input();
        input.score = Some(ScoreView { overall: e.score, surprisal: 1.0, flagged, members: &members, endpoint_auth: values[1] });
        let mut d = Decider::new(Arc::new(r));
        let mut events = Vec::new();
        d.observe(&input, &Vec::new, &mut events);
        prop_assert_eq!(d.stats().rules[0].matched, d.stats().rules[1].matched, "{}", native);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any condition text is compiled or refused, and a compiled one evaluates (to a match
    /// or not) without stopping the process.
    #[test]
    fn hostile_conditions_are_refused_or_run(
        text in prop_oneof![
            "[ -~]{0,80}",
            prop::collection::vec(
                prop::sample::select(vec![
                    "request.path", "features.req_rate_1m", "score.overall", "1", "0",
                    "9223372036854775807", "-9223372036854775808", "1.5e308", "'a'", "\"b\"",
                    "+", "-", "*", "/", "%", "==", "<", "&&", "||", "!", "(", ")", "[", "]",
                    "{", "}", ",", ":", ".", "?", "size(", "int(", "double(", "string(",
                    ".matches(", ".startsWith(", "in", "has(", ".exists(x,", "x", "request.headers",
                    "'[('", "b'\\xff'", "u", "null", "true",
                ]),
                0..30,
            )
            .prop_map(|v| v.join(" ")),
        ],
    ) {
        let rule = format!(
            "[[rule]]\nid = \"h\"\nwhen = {}\naction = \"log\"\n",
            toml::Value::String(text.clone())
        );
        if let Ok(r) = Rules::parse(&rule, &schema()) {
            let mut d = Decider::new(Arc::new(r));
            let mut events = Vec::new();
            for rate in [0.0, 1e300, f64::NAN] {
                observe(&mut d, &ev(0, "10.0.0.1", rate), &mut events);
            }
            prop_assert_eq!(d.stats().requests, 3);
        }
    }
}

#[test]
fn arithmetic_overflow_and_bad_patterns_do_not_stop_the_process() {
    for when in [
        "9223372036854775807 + 1 > 0",
        "-9223372036854775808 / -1 == 0",
        "-9223372036854775808 % -1 == 0",
        "size(request.path) * 9223372036854775807 > 0",
        "request.status * 9223372036854775807 > 0",
        "request.status - 9223372036854775807 - 9223372036854775807 < 0",
        "request.path.matches('[')",
        "request.path.matches(request.user_agent)",
        "int(features.req_rate_1m) > 0",
        "int(score.overall * 1e300) > 0",
        "request.headers['x-missing'] == 'a'",
        "double(request.path) > 1.0",
    ] {
        let text = format!("[[rule]]\nid = \"o\"\nwhen = \"{when}\"\naction = \"log\"\n");
        if let Ok(r) = Rules::parse(&text, &schema()) {
            let mut d = Decider::new(Arc::new(r));
            let mut events = Vec::new();
            let mut e = ev(0, "10.0.0.1", 1e300);
            e.ua = "((";
            observe(&mut d, &e, &mut events);
            observe(&mut d, &ev(0, "10.0.0.1", f64::NAN), &mut events);
            assert_eq!(d.stats().requests, 2, "{when}");
        }
    }
}
