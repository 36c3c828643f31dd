//! NDJSON request events.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;
use sonic_rs::LazyValue;

use crate::error::{ParseError, snippet};
use crate::event::{RequestEvent, normalise_method, split_query};
use crate::time::parse_rfc3339_ms;

/// The wire form of one event; borrowed where the input allows it. `R` holds raw JSON
/// (`id`, `label`) in the parser's own type.
#[derive(Deserialize)]
#[serde(bound(deserialize = "R: Deserialize<'de>"))]
struct Wire<'a, R> {
    ts: Ts<'a>,
    #[serde(borrow)]
    client_ip: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    status: u16,
    #[serde(default, borrow)]
    host: Option<Cow<'a, str>>,
    #[serde(default)]
    req_bytes: Option<u64>,
    #[serde(default)]
    resp_bytes: Option<u64>,
    #[serde(default)]
    latency_ms: Option<f64>,
    #[serde(default, borrow)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    headers: Option<BTreeMap<Cow<'a, str>, Option<Cow<'a, str>>>>,
    #[serde(default, borrow)]
    session_id: Option<StrOrInt<'a>>,
    #[serde(default, borrow)]
    asn: Option<StrOrInt<'a>>,
    #[serde(default, borrow)]
    country: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ja4: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<R>,
    #[serde(default)]
    label: Option<R>,
}

/// `ts`: RFC 3339 text or integer epoch milliseconds.
enum Ts<'a> {
    Ms(i64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Ts<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Ts::Ms(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(Ts::Ms)
                    .map_err(|_| E::custom("epoch milliseconds too large"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(Ts::Ms(v as i64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Ts::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Ts::Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A field that gateways write either as text or as an integer (`session_id`, `asn`).
struct StrOrInt<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for StrOrInt<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrInt<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StrOrInt(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StrOrInt(Cow::Owned(v.to_string())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrInt(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrInt(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses one NDJSON line into an event.
///
/// Unknown fields are ignored. A wrong line yields a [`ParseError`] naming the field and the
/// value: `field `status`: invalid type: string "abc", expected u16`.
///
/// Lines are parsed with sonic-rs (SIMD; faster than serde_json on gateway events, see
/// BENCHMARKS.md); a line it refuses is parsed again with serde_json and path tracking, which
/// names the field that was wrong.
pub fn parse_ndjson(line: &[u8]) -> Result<RequestEvent, ParseError> {
    check_shape(line)?;
    // JSON text is UTF-8 (RFC 8259). Checked here, for the whole line, because sonic-rs takes
    // the raw text of `id` and `label` (lazy values) as UTF-8 without checking it.
    if let Err(e) = std::str::from_utf8(line) {
        return Err(ParseError::line(format!(
            "line is not valid UTF-8 (byte {})",
            e.valid_up_to() + 1
        )));
    }
    match sonic_rs::from_slice::<Wire<'_, LazyValue<'_>>>(line) {
        Ok(w) => from_wire(w),
        Err(_) => match serde_json::from_slice::<Wire<'_, &RawValue>>(line) {
            Ok(w) => from_wire(w),
            Err(_) => Err(explain(line)),
        },
    }
}

/// Deepest nesting of arrays and objects accepted in a line (the event itself is level 1).
pub const MAX_JSON_DEPTH: usize = 32;

/// Refuses, before any parser recurses into it, a line that is not a JSON object or that
/// nests deeper than [`MAX_JSON_DEPTH`]. Cheap for ordinary events: the exact depth is
/// computed only when the line has more brackets than the limit.
fn check_shape(line: &[u8]) -> Result<(), ParseError> {
    match line.iter().find(|c| !c.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ParseError::line("not JSON: empty line")),
        Some(b'[') => return Err(ParseError::line("not a JSON object: an array")),
        // Not an object or array: the parsers stop at once and say what it is.
        Some(_) => return Ok(()),
    }
    if memchr::memchr2_iter(b'[', b'{', line)
        .nth(MAX_JSON_DEPTH)
        .is_none()
    {
        return Ok(());
    }
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &c) in line.iter().enumerate() {
        if in_str {
            match c {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ParseError::line(format!(
                        "JSON nested deeper than {MAX_JSON_DEPTH} levels (column {})",
                        i + 1
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Re-parses a failed line with path tracking to say which field was wrong.
#[cold]
fn explain(line: &[u8]) -> ParseError {
    match line.iter().find(|c| !c.is_ascii_whitespace()) {
        None => return ParseError::line("not JSON: empty line"),
        Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() => {
            return ParseError::line("not a JSON object");
        }
        Some(_) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    match serde_path_to_error::deserialize::<_, Wire<'_, &RawValue>>(&mut de) {
        Ok(_) => ParseError::line("not a JSON event"),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            let msg = match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            };
            if inner.is_syntax() || inner.is_eof() {
                ParseError::line(format!("not JSON: {msg} (column {})", inner.column()))
            } else if path == "." || path.is_empty() {
                if msg.starts_with("invalid type") {
                    ParseError::line(format!("not a JSON object: {msg}"))
                } else {
                    ParseError::line(msg)
                }
            } else {
                ParseError::field(path.trim_start_matches('.'), msg)
            }
        }
    }
}

/// Raw JSON text of a value, whichever parser produced it.
trait RawJson {
    fn raw(&self) -> &str;
}

impl RawJson for LazyValue<'_> {
    fn raw(&self) -> &str {
        self.as_raw_str()
    }
}

impl RawJson for &RawValue {
    fn raw(&self) -> &str {
        self.get()
    }
}

fn from_wire<R: RawJson>(w: Wire<'_, R>) -> Result<RequestEvent, ParseError> {
    let ts_ms = match w.ts {
        Ts::Ms(ms) => ms,
        Ts::Text(t) => parse_rfc3339_ms(&t).map_err(|e| ParseError::field("ts", e))?,
    };
    let headers: Vec<(&str, &str)> = w
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (&**k, v)))
                .collect()
        })
        .unwrap_or_default();
    let mut e = EventFields {
        ts_ms,
        client_ip: &w.client_ip,
        method: &w.method,
        host: w.host.as_deref(),
        path: &w.path,
        status: i64::from(w.status),
        req_bytes: w.req_bytes,
        resp_bytes: w.resp_bytes,
        latency_ms: w.latency_ms,
        user_agent: w.user_agent.as_deref(),
        headers: &headers,
        session_id: w.session_id.as_ref().map(|s| &*s.0),
        asn: w.asn.as_ref().map(|s| &*s.0),
        country: w.country.as_deref(),
        ja4: w.ja4.as_deref(),
    }
    .build()?;
    e.id = w.id.map(|r| r.raw().into());
    e.label = w.label.map(|r| r.raw().into());
    Ok(e)
}

/// The fields of one request, borrowed from wherever they were read (an NDJSON line, a
/// DataFrame row). [`build`](Self::build) validates and normalises them exactly as every
/// input format does: the IP address, the method (upper case), the status (100–599), a
/// non-empty path with its query split off, a finite latency ≥ 0, the host and header names
/// in lower case, empty optional strings as absent.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// Caller address.
    pub client_ip: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// API host.
    pub host: Option<&'a str>,
    /// Path, with or without the query string.
    pub path: &'a str,
    /// Response status.
    pub status: i64,
    /// Request size.
    pub req_bytes: Option<u64>,
    /// Response size.
    pub resp_bytes: Option<u64>,
    /// Origin latency (ms).
    pub latency_ms: Option<f64>,
    /// User agent.
    pub user_agent: Option<&'a str>,
    /// Headers (any case).
    pub headers: &'a [(&'a str, &'a str)],
    /// Session id.
    pub session_id: Option<&'a str>,
    /// Autonomous system.
    pub asn: Option<&'a str>,
    /// Country code.
    pub country: Option<&'a str>,
    /// JA4 fingerprint.
    pub ja4: Option<&'a str>,
}

fn lower(s: &str) -> Box<str> {
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        s.to_ascii_lowercase().into()
    } else {
        s.into()
    }
}

fn nonempty(s: Option<&str>) -> Option<Box<str>> {
    s.filter(|v| !v.is_empty()).map(Into::into)
}

impl EventFields<'_> {
    /// The validated, normalised event (without `id` and `label`).
    pub fn build(&self) -> Result<RequestEvent, ParseError> {
        if !(crate::time::MIN_TS_MS..=crate::time::MAX_TS_MS).contains(&self.ts_ms) {
            return Err(ParseError::field(
                "ts",
                format!(
                    "out of range: {} ms (event times lie between the years 1 and 9999)",
                    self.ts_ms
                ),
            ));
        }
        let client_ip = parse_ip(self.client_ip)?;
        let method = normalise_method(self.method).map_err(|e| ParseError::field("method", e))?;
        if !(100..=599).contains(&self.status) {
            return Err(ParseError::field(
                "status",
                format!("not an HTTP status: {}", self.status),
            ));
        }
        if self.path.is_empty() {
            return Err(ParseError::field("path", "empty path"));
        }
        let (path, query) = split_query(self.path);
        if let Some(l) = self.latency_ms {
            if !l.is_finite() || l < 0.0 {
                return Err(ParseError::field(
                    "latency_ms",
                    format!("not a duration: {l}"),
                ));
            }
        }
        Ok(RequestEvent {
            ts_ms: self.ts_ms,
            client_ip,
            method,
            host: self.host.filter(|h| !h.is_empty()).map(lower),
            path: path.into(),
            query: query.map(Into::into),
            status: self.status as u16,
            req_bytes: self.req_bytes,
            resp_bytes: self.resp_bytes,
            latency_ms: self.latency_ms,
            user_agent: nonempty(self.user_agent),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (lower(k), (*v).into()))
                .collect(),
            session_id: nonempty(self.session_id),
            asn: nonempty(self.asn),
            country: nonempty(self.country),
            ja4: nonempty(self.ja4),
            id: None,
            label: None,
        })
    }
}

pub(crate) fn parse_ip(s: &str) -> Result<IpAddr, ParseError> {
    // Accept a bracketed IPv6 form and an IPv4-mapped IPv6 address (reported as IPv4).
    let t = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    match t.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        Ok(ip) => Ok(ip),
        Err(_) => Err(ParseError::field(
            "client_ip",
            format!("not an IP address: {:?}", snippet(s)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"ts":"2026-11-27T08:00:00.250Z","client_ip":"203.0.113.7","method":"get","path":"/v1/users/42?x=1","status":200,"host":"API.example.com","headers":{"X-Api-Key":"k1"},"session_id":17,"id":{"n":1},"label":"normal","extra":[1,2]}"#;

    #[test]
    fn parses_a_full_event() {
        let e = parse_ndjson(OK.as_bytes()).unwrap();
        assert_eq!(
            e.ts_ms,
            crate::parse_rfc3339_ms("2026-11-27T08:00:00.250Z").unwrap()
        );
        assert_eq!(e.client_ip.to_string(), "203.0.113.7");
        assert_eq!(&*e.method, "GET");
        assert_eq!(&*e.path, "/v1/users/42");
        assert_eq!(e.query.as_deref(), Some("x=1"));
        assert_eq!(e.host.as_deref(), Some("api.example.com"));
        assert_eq!(e.header("x-api-key"), Some("k1"));
        assert_eq!(e.session_id.as_deref(), Some("17"));
        assert_eq!(e.id.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(e.label.as_deref(), Some(r#""normal""#));
    }

    #[test]
    fn epoch_ms_and_escapes() {
        let e = parse_ndjson(
            br#"{"ts":1764230400000,"client_ip":"::ffff:10.0.0.1","method":"POST","path":"/a\u002fb","status":201}"#,
        )
        .unwrap();
        assert_eq!(e.ts_ms, 1_764_230_400_000);
        assert_eq!(e.client_ip.to_string(), "10.0.0.1");
        assert_eq!(&*e.path, "/a/b");
    }

    fn err(line: &str) -> ParseError {
        parse_ndjson(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn names_the_wrong_field() {
        let e = err(r#"{"ts":1,"client_ip":"1.2.3.4","method":"GET","path":123,"status":200}"#);
        assert_eq!(e.field.as_deref(), Some("path"));
        assert!(e.reason.contains("integer `123`"), "{e}");

        let e = err(
            r#"{"id":{"a":[1]},"label":"x","ts":1,"client_ip":"1.2.3.4","method":"GET","path":"/","status":"abc"}"#,
        );
        assert_eq!(e.field.as_deref(), Some("status"));
        assert!(e.reason.contains("abc"), "{e}");

        let e = err(
            r#"{"ts":"yesterday","client_ip":"1.2.3.4","method":"GET","path":"/","status":200}"#,
        );
        assert_eq!(e.field.as_deref(), Some("ts"));
        assert!(e.reason.contains("yesterday"), "{e}");

        let e = err(r#"{"ts":1,"client_ip":"999.1.1.1","method":"GET","path":"/","status":200}"#);
        assert_eq!(e.field.as_deref(), Some("client_ip"));
        assert!(e.reason.contains("999.1.1.1"), "{e}");

        let e = err(r#"{"ts":1,"client_ip":"1.2.3.4","method":"GET","path":"/","status":999}"#);
        assert_eq!(e.field.as_deref(), Some("status"));

        let e = err(r#"{"ts":1,"client_ip":"1.2.3.4","method":"G ET","path":"/","status":200}"#);
        assert_eq!(e.field.as_deref(), Some("method"));

        let e = err(r#"{"ts":1.5,"client_ip":"1.2.3.4","method":"GET","path":"/","status":200}"#);
        assert_eq!(e.field.as_deref(), Some("ts"));

        let e = err(
            r#"{"ts":1,"client_ip":"1.2.3.4","method":"GET","path":"/","status":200,"headers":{"a":1}}"#,
        );
        assert_eq!(e.field.as_deref(), Some("headers.a"));
    }

    #[test]
    fn missing_and_malformed() {
        let e = err(r#"{"client_ip":"1.2.3.4","method":"GET","path":"/","status":200}"#);
        assert!(e.reason.contains("missing field `ts`"), "{e}");
        assert_eq!(e.category(), "missing field `ts`");
        let e = err(r#"{"ts":1,"client_ip":"#);
        assert!(e.reason.starts_with("not JSON"), "{e}");
        let e = err("[1,2,3]");
        assert!(e.reason.contains("not a JSON object"), "{e}");
        // A positional array that a struct deserializer would take field by field.
        let e = err(r#"["2026-01-01T00:00:00Z","1.2.3.4","GET","/x",200]"#);
        assert_eq!(e.reason, "not a JSON object: an array");
        let e = err("  42");
        assert_eq!(e.reason, "not a JSON object");
        let e = err("this is not json");
        assert!(e.reason.starts_with("not JSON"), "{e}");
        let e = err("");
        assert!(e.reason.starts_with("not JSON"), "{e}");
        let mut bad = br#"{"ts":1,"client_ip":"1.2.3.4","method":"GET","path":"/"#.to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        bad.extend_from_slice(br#"","status":200}"#);
        let e = parse_ndjson(&bad).unwrap_err();
        assert!(
            e.to_string().contains("UTF-8") || e.to_string().contains("unicode"),
            "{e}"
        );
        // Invalid UTF-8 inside a raw value (`id`, `label`) and outside strings.
        let mut bad = br#"{"id":"#.to_vec();
        bad.extend_from_slice(&[b'"', 0xc3, b'"']);
        bad.extend_from_slice(
            br#","ts":1,"client_ip":"1.2.3.4","method":"GET","path":"/","status":200}"#,
        );
        let e = parse_ndjson(&bad).unwrap_err();
        assert_eq!(e.reason, "line is not valid UTF-8 (byte 8)");
        let e = err(r#"{"ts":1,"client_ip":null,"method":"GET","path":"/","status":200}"#);
        assert_eq!(e.field.as_deref(), Some("client_ip"));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        let head = r#"{"ts":0,"client_ip":"1.2.3.4","method":"GET","path":"/","status":200,"x":"#;
        let deep = format!("{head}{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_ndjson(deep.as_bytes()).unwrap_err();
        assert!(e.reason.contains("nested deeper than 32 levels"), "{e}");
        assert!(
            e.reason.contains(&format!("column {}", head.len() + 32)),
            "{e}"
        );
        // Brackets inside strings do not count; 31 levels inside the event are fine.
        let ok = format!("{head}{}{}}}", "[".repeat(31), "]".repeat(31));
        parse_ndjson(ok.as_bytes()).unwrap();
        let s = format!("{head}\"{}\"}}", "[{".repeat(5000));
        parse_ndjson(s.as_bytes()).unwrap();
        let s = format!("{head}\"\\\"{}\"}}", "[".repeat(5000));
        parse_ndjson(s.as_bytes()).unwrap();
    }
}
