//! Client keys: which client made a request.

use std::fmt::{self, Write};

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::event::RequestEvent;

/// One place a client identifier can come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A claim of the bearer JWT in the `authorization` header (signature not checked: for
    /// keying only, never for trust).
    JwtClaim(String),
    /// A request header (lower-case name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The event's `session_id` field.
    SessionId,
    /// The caller's address.
    Ip,
}

impl KeySource {
    /// Parses `jwt_claim:NAME`, `header:NAME`, `cookie:NAME`, `session_id` or `ip`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad_name =
            |n: &str| n.is_empty() || n.len() > 64 || n.bytes().any(|c| c <= b' ' || c == b'=');
        let src = match s.split_once(':') {
            None if s == "session_id" => Self::SessionId,
            None if s == "ip" => Self::Ip,
            Some(("jwt_claim", n)) if !bad_name(n) => Self::JwtClaim(n.to_string()),
            Some(("header", n)) if !bad_name(n) => Self::Header(n.to_ascii_lowercase()),
            Some(("cookie", n)) if !bad_name(n) => Self::Cookie(n.to_string()),
            _ => {
                return Err(Error::Config(format!(
                    "client_key.sources: unknown source {s:?}; expected jwt_claim:NAME, \
                     header:NAME, cookie:NAME, session_id or ip"
                )));
            }
        };
        Ok(src)
    }

    /// The kind written in front of the key.
    pub fn kind(&self) -> KeyKind {
        match self {
            Self::JwtClaim(_) => KeyKind::Jwt,
            Self::Header(_) => KeyKind::Header,
            Self::Cookie(_) => KeyKind::Cookie,
            Self::SessionId => KeyKind::Session,
            Self::Ip => KeyKind::Ip,
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JwtClaim(n) => write!(f, "jwt_claim:{n}"),
            Self::Header(n) => write!(f, "header:{n}"),
            Self::Cookie(n) => write!(f, "cookie:{n}"),
            Self::SessionId => f.write_str("session_id"),
            Self::Ip => f.write_str("ip"),
        }
    }
}

/// The kind of a client key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// From a JWT claim.
    Jwt,
    /// From a header.
    Header,
    /// From a cookie.
    Cookie,
    /// From the `session_id` field.
    Session,
    /// The address.
    Ip,
}

impl KeyKind {
    /// All kinds, in order.
    pub const ALL: [KeyKind; 5] = [
        Self::Jwt,
        Self::Header,
        Self::Cookie,
        Self::Session,
        Self::Ip,
    ];

    /// The prefix of keys of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Header => "header",
            Self::Cookie => "cookie",
            Self::Session => "session",
            Self::Ip => "ip",
        }
    }
}

/// A client key with its kind: `jwt:sub=alice`, `header:x-api-key=K`, `cookie:sid=V`,
/// `session:S`, `ip:203.0.113.7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The kind.
    pub kind: KeyKind,
    /// The full key text, kind prefix included.
    pub text: Box<str>,
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `[client_key]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyConfig {
    /// Sources in order of preference; the first one present in a request is its key.
    /// `ip` always exists, so it is appended when missing.
    #[serde(default = "default_sources")]
    pub sources: Vec<String>,
    /// Identifier values longer than this (bytes), or holding control characters, are
    /// replaced by `~` and a 64-bit FNV-1a hash of the value, so that keys stay small.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
}

fn default_sources() -> Vec<String> {
    ["jwt_claim:sub", "header:x-api-key", "session_id", "ip"]
        .map(String::from)
        .to_vec()
}

fn default_max_value_bytes() -> usize {
    128
}

impl Default for ClientKeyConfig {
    fn default() -> Self {
        Self {
            sources: default_sources(),
            max_value_bytes: default_max_value_bytes(),
        }
    }
}

/// Finds the client key of each event from a validated list of sources.
#[derive(Debug, Clone)]
pub struct ClientKeyExtractor {
    sources: Vec<KeySource>,
    max_value_bytes: usize,
    /// Claim names of the `jwt_claim` sources, in order.
    jwt_claims: Vec<String>,
    /// Decoded bearer tokens, direct-mapped by hash: a session's requests carry the same token.
    jwt_cache: Vec<Option<JwtEntry>>,
    /// Requests whose bearer token was present but could not be read as a JWT.
    pub malformed_jwt: u64,
}

impl ClientKeyExtractor {
    /// Validates a configuration.
    pub fn new(cfg: &ClientKeyConfig) -> Result<Self> {
        let mut sources = cfg
            .sources
            .iter()
            .map(|s| KeySource::parse(s))
            .collect::<Result<Vec<_>>>()?;
        if !sources.contains(&KeySource::Ip) {
            sources.push(KeySource::Ip);
        }
        if !(8..=1024).contains(&cfg.max_value_bytes) {
            return Err(Error::Config(format!(
                "client_key.max_value_bytes must be 8..=1024, got {}",
                cfg.max_value_bytes
            )));
        }
        Ok(Self {
            sources,
            max_value_bytes: cfg.max_value_bytes,
            malformed_jwt: 0,
            jwt_claims: cfg
                .sources
                .iter()
                .filter_map(|s| s.strip_prefix("jwt_claim:").map(String::from))
                .collect(),
            jwt_cache: Vec::new(),
        })
    }

    /// The sources in order.
    pub fn sources(&self) -> &[KeySource] {
        &self.sources
    }

    /// The key of one event.
    pub fn key(&mut self, ev: &RequestEvent) -> ClientKey {
        let mut buf = String::with_capacity(48);
        let kind = self.key_into(ev, &mut buf);
        ClientKey {
            kind,
            text: buf.into_boxed_str(),
        }
    }

    /// Writes the key of one event into `buf` (cleared first) and returns its kind; the
    /// allocation-free form of [`key`](Self::key).
    pub fn key_into(&mut self, ev: &RequestEvent, buf: &mut String) -> KeyKind {
        for src in &self.sources {
            buf.clear();
            let found = match src {
                KeySource::JwtClaim(claim) => match ev.header("authorization").and_then(bearer) {
                    None => false,
                    Some(tok) => {
                        let slot = decode_jwt(&mut self.jwt_cache, &self.jwt_claims, tok);
                        let entry = self.jwt_cache[slot].as_ref().expect("filled by decode_jwt");
                        let ci = self.jwt_claims.iter().position(|c| c == claim).unwrap_or(0);
                        match entry.claims.get(ci).and_then(Option::as_deref) {
                            Some(v) => {
                                let _ = write!(buf, "jwt:{claim}=");
                                push_value(buf, v, self.max_value_bytes);
                                true
                            }
                            None => {
                                self.malformed_jwt += u64::from(entry.malformed);
                                false
                            }
                        }
                    }
                },
                KeySource::Header(name) => match ev.header(name).filter(|v| !v.is_empty()) {
                    Some(v) => {
                        let _ = write!(buf, "header:{name}=");
                        push_value(buf, v, self.max_value_bytes);
                        true
                    }
                    None => false,
                },
                KeySource::Cookie(name) => {
                    match ev.header("cookie").and_then(|c| cookie(c, name)) {
                        Some(v) => {
                            let _ = write!(buf, "cookie:{name}=");
                            push_value(buf, v, self.max_value_bytes);
                            true
                        }
                        None => false,
                    }
                }
                KeySource::SessionId => match ev.session_id.as_deref() {
                    Some(v) => {
                        buf.push_str("session:");
                        push_value(buf, v, self.max_value_bytes);
                        true
                    }
                    None => false,
                },
                KeySource::Ip => {
                    buf.push_str("ip:");
                    push_ip(buf, ev.client_ip);
                    true
                }
            };
            if found {
                return src.kind();
            }
        }
        buf.clear();
        buf.push_str("ip:");
        push_ip(buf, ev.client_ip);
        KeyKind::Ip
    }
}

/// A decoded bearer token: the values of the configured claims.
#[derive(Debug, Clone)]
struct JwtEntry {
    token: Box<str>,
    malformed: bool,
    claims: Vec<Option<Box<str>>>,
}

const JWT_CACHE_SLOTS: usize = 4096;

/// The cache slot holding `tok` decoded (decoding it on a miss).
fn decode_jwt(cache: &mut Vec<Option<JwtEntry>>, claims: &[String], tok: &str) -> usize {
    if cache.is_empty() {
        *cache = vec![None; JWT_CACHE_SLOTS];
    }
    let slot = (fnv1a(tok.as_bytes()) as usize) & (JWT_CACHE_SLOTS - 1);
    if cache[slot].as_ref().is_some_and(|e| &*e.token == tok) {
        return slot;
    }
    let values = claims
        .iter()
        .map(|c| jwt_claim(tok, c).map(String::into_boxed_str))
        .collect();
    let malformed = !looks_like_jwt(tok);
    cache[slot] = Some(JwtEntry {
        token: tok.into(),
        malformed,
        claims: values,
    });
    slot
}

/// Appends an address in its usual text form (IPv4 without going through `fmt`).
fn push_ip(buf: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                let o = *o;
                if o >= 100 {
                    buf.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    buf.push(char::from(b'0' + (o / 10) % 10));
                }
                buf.push(char::from(b'0' + o % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

fn bearer(auth: &str) -> Option<&str> {
    let (scheme, tok) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| tok.trim())
        .filter(|t| !t.is_empty())
}

fn looks_like_jwt(tok: &str) -> bool {
    // A well-formed token without the claim is not "malformed".
    let mut parts = tok.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    decode_payload(payload).is_some()
}

fn decode_payload(payload: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    if payload.len() > 8192 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The value of claim `name` of an (unverified) JWT, when it is a string or a number.
fn jwt_claim(tok: &str, name: &str) -> Option<String> {
    let mut parts = tok.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    match decode_payload(payload)?.remove(name)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k.trim() == name)
            .then(|| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    })
}

/// 64-bit FNV-1a: a stable hash (the same in every version and on every machine).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn push_value(buf: &mut String, v: &str, max: usize) {
    if v.len() <= max && !v.chars().any(char::is_control) {
        buf.push_str(v);
    } else {
        let _ = write!(buf, "~{:016x}", fnv1a(v.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn ev() -> RequestEvent {
        RequestEvent::new(0, "203.0.113.7".parse().unwrap(), "GET", "/", 200)
    }

    fn jwt(payload: &str) -> String {
        format!(
            "Bearer {}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    fn with(headers: &[(&str, &str)]) -> RequestEvent {
        let mut e = ev();
        e.headers = headers
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        e
    }

    #[test]
    fn addresses_print_as_usual() {
        for ip in [
            "0.0.0.0",
            "1.20.199.255",
            "203.0.113.7",
            "2001:db8::1",
            "::1",
        ] {
            let mut b = String::new();
            push_ip(&mut b, ip.parse().unwrap());
            assert_eq!(b, ip);
        }
    }

    #[test]
    fn default_order() {
        let mut x = ClientKeyExtractor::new(&ClientKeyConfig::default()).unwrap();
        assert_eq!(x.key(&ev()).text.as_ref(), "ip:203.0.113.7");
        let mut e = ev();
        e.session_id = Some("s1".into());
        assert_eq!(x.key(&e).text.as_ref(), "session:s1");
        e.headers.push(("x-api-key".into(), "k1".into()));
        assert_eq!(x.key(&e).text.as_ref(), "header:x-api-key=k1");
        e.headers
            .push(("authorization".into(), jwt(r#"{"sub":"alice"}"#).into()));
        let k = x.key(&e);
        assert_eq!(k.text.as_ref(), "jwt:sub=alice");
        assert_eq!(k.kind, KeyKind::Jwt);
    }

    #[test]
    fn configured_sources() {
        let cfg = ClientKeyConfig {
            sources: vec!["cookie:sid".into(), "jwt_claim:tenant".into()],
            ..Default::default()
        };
        let mut x = ClientKeyExtractor::new(&cfg).unwrap();
        assert_eq!(x.sources().last(), Some(&KeySource::Ip));
        let e = with(&[
            ("cookie", "a=1; sid=\"xyz\"; b=2"),
            ("authorization", &jwt(r#"{"tenant":42}"#)),
        ]);
        assert_eq!(x.key(&e).text.as_ref(), "cookie:sid=xyz");
        let e = with(&[
            ("cookie", "a=1"),
            ("authorization", &jwt(r#"{"tenant":42}"#)),
        ]);
        assert_eq!(x.key(&e).text.as_ref(), "jwt:tenant=42");
    }

    #[test]
    fn hostile_tokens_fall_through() {
        let mut x = ClientKeyExtractor::new(&ClientKeyConfig::default()).unwrap();
        for auth in [
            "Bearer",
            "Bearer not-a-jwt",
            "Bearer a.b",
            "Bearer a.!!!.c",
            "Bearer a.e30.c.d",
            &jwt("not json"),
            &jwt(r#"{"sub":null}"#),
            &jwt(r#"{"sub":""}"#),
            &jwt(r#"{"sub":{"x":1}}"#),
            &jwt("[1,2]"),
            "Basic dXNlcjpwYXNz",
        ] {
            let e = with(&[("authorization", auth)]);
            assert_eq!(x.key(&e).text.as_ref(), "ip:203.0.113.7", "{auth}");
        }
        assert!(x.malformed_jwt >= 5, "{}", x.malformed_jwt);
    }

    #[test]
    fn decoded_tokens_are_cached_per_token() {
        let cfg = ClientKeyConfig {
            sources: vec!["jwt_claim:tenant".into(), "jwt_claim:sub".into()],
            ..Default::default()
        };
        let mut x = ClientKeyExtractor::new(&cfg).unwrap();
        let a = with(&[("authorization", &jwt(r#"{"sub":"alice"}"#))]);
        let b = with(&[("authorization", &jwt(r#"{"sub":"bob","tenant":"t1"}"#))]);
        for _ in 0..3 {
            assert_eq!(x.key(&a).text.as_ref(), "jwt:sub=alice");
            assert_eq!(x.key(&b).text.as_ref(), "jwt:tenant=t1");
        }
        // Many distinct tokens (slot collisions included) still decode correctly.
        for i in 0..10_000 {
            let e = with(&[("authorization", &jwt(&format!(r#"{{"sub":"u{i}"}}"#)))]);
            assert_eq!(x.key(&e).text.as_ref(), format!("jwt:sub=u{i}"));
        }
        assert_eq!(x.malformed_jwt, 0);
    }

    #[test]
    fn long_or_control_values_are_hashed() {
        let mut x = ClientKeyExtractor::new(&ClientKeyConfig::default()).unwrap();
        let long = "k".repeat(10_000);
        let k = x.key(&with(&[("x-api-key", &long)]));
        assert!(k.text.starts_with("header:x-api-key=~"), "{k}");
        assert_eq!(k.text.len(), "header:x-api-key=~".len() + 16);
        let k2 = x.key(&with(&[("x-api-key", "a\nb")]));
        assert!(k2.text.starts_with("header:x-api-key=~"), "{k2}");
        assert_ne!(k.text, k2.text);
    }

    #[test]
    fn bad_sources_are_refused() {
        for s in ["jwt_claim:", "header", "cookie:a=b", "magic", "header:a b"] {
            let cfg = ClientKeyConfig {
                sources: vec![s.into()],
                ..Default::default()
            };
            let err = ClientKeyExtractor::new(&cfg).unwrap_err().to_string();
            assert!(err.contains(&format!("{s:?}")), "{err}");
        }
    }
}
