//! Endpoint templates: `GET api.example.com/v1/users/{id}/orders`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::event::RequestEvent;

/// The kind of a path segment that was replaced by a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// Decimal number: `{id}`.
    Int,
    /// UUID: `{uuid}`.
    Uuid,
    /// Long hexadecimal string: `{hex}`.
    Hex,
    /// Long base64 / base64url / mixed alphanumeric token: `{token}`.
    Token,
    /// E-mail address: `{email}`.
    Email,
    /// Date (`2026-11-27`): `{date}`.
    Date,
    /// A segment longer than the configured limit: `{long}`.
    Long,
    /// A parameter of an OpenAPI path template (its name is in the template).
    Param,
}

impl IdKind {
    fn placeholder(self) -> &'static str {
        match self {
            Self::Int => "{id}",
            Self::Uuid => "{uuid}",
            Self::Hex => "{hex}",
            Self::Token => "{token}",
            Self::Email => "{email}",
            Self::Date => "{date}",
            Self::Long => "{long}",
            Self::Param => "{param}",
        }
    }
}

/// A value taken out of the path by templating (the raw object id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathId {
    /// What it looked like.
    pub kind: IdKind,
    /// The raw segment.
    pub value: Box<str>,
}

impl PathId {
    /// The numeric value, when the segment is a decimal number that fits 64 bits.
    pub fn as_u64(&self) -> Option<u64> {
        if self.value.is_empty()
            || self.value.len() > 19
            || !self.value.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        self.value.parse().ok()
    }
}

/// A request's endpoint: its template and the id values the template replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// `METHOD host/path/{id}`.
    pub template: String,
    /// Raw values of the replaced segments, in path order.
    pub ids: Vec<PathId>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

/// `[endpoints]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// An OpenAPI 3 document (JSON or YAML) whose paths are the templates; requests that match
    /// none of its paths fall back to the heuristics.
    #[serde(default)]
    pub openapi: Option<PathBuf>,
    /// Put the host in templates.
    #[serde(default = "yes")]
    pub include_host: bool,
    /// Segments past this many are folded into one `{rest}` placeholder.
    #[serde(default = "default_max_segments")]
    pub max_segments: usize,
    /// Segments longer than this (bytes) become `{long}`.
    #[serde(default = "default_max_segment_bytes")]
    pub max_segment_bytes: usize,
}

/// Largest `max_segments` accepted.
pub const MAX_SEGMENTS_LIMIT: usize = 64;

fn yes() -> bool {
    true
}
fn default_max_segments() -> usize {
    16
}
fn default_max_segment_bytes() -> usize {
    96
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            openapi: None,
            include_host: true,
            max_segments: default_max_segments(),
            max_segment_bytes: default_max_segment_bytes(),
        }
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Literal(String),
    /// `prefix{name}suffix`
    Param {
        prefix: String,
        suffix: String,
    },
}

#[derive(Debug, Clone)]
struct Template {
    text: String,
    segs: Vec<Seg>,
}

/// Turns request paths into endpoint templates.
#[derive(Debug, Clone)]
pub struct EndpointNormalizer {
    cfg: EndpointConfig,
    /// OpenAPI templates by segment count, most specific first.
    templates: HashMap<usize, Vec<Template>>,
}

impl EndpointNormalizer {
    /// Validates a configuration and loads its OpenAPI document, if any.
    pub fn new(cfg: &EndpointConfig) -> Result<Self> {
        if cfg.max_segments == 0
            || cfg.max_segments > MAX_SEGMENTS_LIMIT
            || !(8..=1024).contains(&cfg.max_segment_bytes)
        {
            return Err(Error::Config(format!(
                "endpoints.max_segments must be 1..={MAX_SEGMENTS_LIMIT} and endpoints.max_segment_bytes 8..=1024"
            )));
        }
        let templates = match &cfg.openapi {
            None => HashMap::new(),
            Some(p) => load_openapi(p)?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            templates,
        })
    }

    /// Builds a normaliser from OpenAPI document text (JSON or YAML).
    pub fn with_openapi_text(cfg: &EndpointConfig, name: &str, text: &str) -> Result<Self> {
        let mut n = Self::new(&EndpointConfig {
            openapi: None,
            ..cfg.clone()
        })?;
        n.templates = parse_openapi(name, text)?;
        Ok(n)
    }

    /// Number of OpenAPI path templates loaded.
    pub fn openapi_paths(&self) -> usize {
        self.templates.values().map(Vec::len).sum()
    }

    /// The endpoint of a request.
    pub fn normalize(&self, ev: &RequestEvent) -> Endpoint {
        let mut e = Endpoint {
            template: String::with_capacity(16 + ev.path.len().min(256)),
            ids: Vec::new(),
        };
        self.normalize_into(ev, &mut e);
        e
    }

    /// Writes the endpoint of a request into `out`, reusing its buffers.
    pub fn normalize_into(&self, ev: &RequestEvent, out: &mut Endpoint) {
        let template = &mut out.template;
        let ids = &mut out.ids;
        template.clear();
        ids.clear();
        template.push_str(&ev.method);
        template.push(' ');
        if self.cfg.include_host {
            if let Some(h) = &ev.host {
                template.push_str(h);
            }
        }
        // Segments on the stack: at most `max_segments` are used, one more tells that there
        // were more.
        let mut segs: [&str; MAX_SEGMENTS_LIMIT + 1] = [""; MAX_SEGMENTS_LIMIT + 1];
        let limit = self.cfg.max_segments + 1;
        let mut n = 0;
        for seg in ev.path.split('/') {
            if !seg.is_empty() {
                segs[n] = seg;
                n += 1;
                if n == limit {
                    break;
                }
            }
        }
        let more = n == limit;
        if !self.templates.is_empty() && !more {
            if let Some(t) = self.match_openapi(&segs[..n], ids) {
                template.push_str(&t.text);
                return;
            }
        }
        if n == 0 {
            template.push('/');
        }
        for (i, seg) in segs[..n].iter().enumerate() {
            template.push('/');
            if more && i + 1 == self.cfg.max_segments {
                template.push_str("{rest}");
                break;
            }
            match classify(seg, self.cfg.max_segment_bytes) {
                None => template.push_str(seg),
                Some(kind) => {
                    template.push_str(kind.placeholder());
                    ids.push(PathId {
                        kind,
                        value: (*seg).into(),
                    });
                }
            }
        }
    }

    fn match_openapi(&self, segs: &[&str], ids: &mut Vec<PathId>) -> Option<&Template> {
        let cands = self.templates.get(&segs.len())?;
        'next: for t in cands {
            ids.clear();
            for (seg, pat) in segs.iter().zip(&t.segs) {
                match pat {
                    Seg::Literal(l) => {
                        if l != seg {
                            continue 'next;
                        }
                    }
                    Seg::Param { prefix, suffix } => {
                        let Some(v) = seg
                            .strip_prefix(prefix.as_str())
                            .and_then(|r| r.strip_suffix(suffix.as_str()))
                        else {
                            continue 'next;
                        };
                        if v.is_empty() {
                            continue 'next;
                        }
                        ids.push(PathId {
                            kind: IdKind::Param,
                            value: v.into(),
                        });
                    }
                }
            }
            return Some(t);
        }
        ids.clear();
        None
    }
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// What kind of id a path segment is, or `None` for a literal segment.
fn classify(seg: &str, max_bytes: usize) -> Option<IdKind> {
    let b = seg.as_bytes();
    if b.len() > max_bytes {
        return Some(IdKind::Long);
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some(IdKind::Int);
    }
    if b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                is_hex(c)
            }
        })
    {
        return Some(IdKind::Uuid);
    }
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
    {
        return Some(IdKind::Date);
    }
    let at = memchr::memchr(b'@', b).or_else(|| {
        if memchr::memchr(b'%', b).is_some() {
            seg.find("%40")
        } else {
            None
        }
    });
    if let Some(at) = at {
        if at > 0 && seg[at..].contains('.') {
            return Some(IdKind::Email);
        }
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if b.len() >= 16 && digits > 0 && b.iter().all(|&c| is_hex(c)) {
        return Some(IdKind::Hex);
    }
    let tokenish = b.iter().all(|&c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'.' | b'~')
    });
    if tokenish {
        let upper = b.iter().any(u8::is_ascii_uppercase);
        let lower = b.iter().any(u8::is_ascii_lowercase);
        // Long random-looking tokens (base64, base64url), and prefixed ids such as `cus_9Xk2…`.
        if (b.len() >= 20 && (digits > 0 || (upper && lower)))
            || (b.len() >= 8 && digits >= 3 && (upper || lower))
        {
            return Some(IdKind::Token);
        }
    }
    None
}

#[derive(Deserialize)]
struct OpenApiDoc {
    openapi: Option<String>,
    #[serde(default)]
    servers: Vec<Server>,
    #[serde(default)]
    paths: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Server {
    url: String,
}

fn load_openapi(p: &Path) -> Result<HashMap<usize, Vec<Template>>> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::OpenApi {
        path: p.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_openapi(&p.display().to_string(), &text)
}

fn parse_openapi(name: &str, text: &str) -> Result<HashMap<usize, Vec<Template>>> {
    let err = |reason: String| Error::OpenApi {
        path: name.to_string(),
        reason,
    };
    let doc: OpenApiDoc = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| err(e.to_string()))?
    } else {
        serde_norway::from_str(text).map_err(|e| err(e.to_string()))?
    };
    match &doc.openapi {
        Some(v) if v.starts_with('3') => {}
        Some(v) => {
            return Err(err(format!(
                "unsupported OpenAPI version {v:?} (3.x expected)"
            )));
        }
        None => return Err(err("no `openapi` version field (3.x expected)".into())),
    }
    if doc.paths.is_empty() {
        return Err(err("no paths".into()));
    }
    let mut bases: Vec<String> = doc
        .servers
        .iter()
        .map(|s| {
            let rest = s
                .url
                .split_once("://")
                .map_or(s.url.as_str(), |(_, r)| r.find('/').map_or("", |i| &r[i..]));
            rest.trim_end_matches('/').to_string()
        })
        .collect();
    if bases.is_empty() {
        bases.push(String::new());
    }
    bases.sort();
    bases.dedup();
    let mut out: HashMap<usize, Vec<Template>> = HashMap::new();
    for base in &bases {
        for path in doc.paths.keys() {
            if !path.starts_with('/') {
                return Err(err(format!("path {path:?} does not start with `/`")));
            }
            let full = format!("{base}{path}");
            let mut segs = Vec::new();
            for s in full.split('/').filter(|s| !s.is_empty()) {
                segs.push(match (s.find('{'), s.find('}')) {
                    (Some(a), Some(z)) if a < z => Seg::Param {
                        prefix: s[..a].to_string(),
                        suffix: s[z + 1..].to_string(),
                    },
                    (None, None) => Seg::Literal(s.to_string()),
                    _ => {
                        return Err(err(format!(
                            "path {path:?}: unbalanced braces in segment {s:?}"
                        )));
                    }
                });
            }
            let text = if segs.is_empty() {
                "/".to_string()
            } else {
                full.trim_end_matches('/').to_string()
            };
            out.entry(segs.len())
                .or_default()
                .push(Template { text, segs });
        }
    }
    for ts in out.values_mut() {
        // Most specific first: literal segments win over parameters, left to right.
        ts.sort_by(|a, b| {
            let key = |t: &Template| {
                t.segs
                    .iter()
                    .map(|s| u8::from(matches!(s, Seg::Param { .. })))
                    .collect::<Vec<_>>()
            };
            key(a).cmp(&key(b)).then_with(|| a.text.cmp(&b.text))
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Endpoint {
        let n = EndpointNormalizer::new(&EndpointConfig::default()).unwrap();
        let mut e = RequestEvent::new(0, "10.0.0.1".parse().unwrap(), "GET", path, 200);
        e.host = Some("api.example.com".into());
        n.normalize(&e)
    }

    #[test]
    fn heuristics() {
        let cases = [
            ("/", "GET api.example.com/"),
            (
                "/v1/users/42/orders",
                "GET api.example.com/v1/users/{id}/orders",
            ),
            (
                "/v1/users/42/orders/?page=2",
                "GET api.example.com/v1/users/{id}/orders",
            ),
            ("//v1///users", "GET api.example.com/v1/users"),
            (
                "/files/3f2a9c1e-7b4d-4c2e-9a8b-0123456789ab",
                "GET api.example.com/files/{uuid}",
            ),
            (
                "/objs/507f1f77bcf86cd799439011",
                "GET api.example.com/objs/{hex}",
            ),
            (
                "/t/eyJhbGciOiJIUzI1NiJ9abcDEF",
                "GET api.example.com/t/{token}",
            ),
            (
                "/customers/cus_9s7d6f5g4",
                "GET api.example.com/customers/{token}",
            ),
            (
                "/u/alice@example.com/profile",
                "GET api.example.com/u/{email}/profile",
            ),
            ("/u/alice%40example.com", "GET api.example.com/u/{email}"),
            ("/reports/2026-11-27", "GET api.example.com/reports/{date}"),
            ("/v2/oauth2/token", "GET api.example.com/v2/oauth2/token"),
            ("/api/health-check", "GET api.example.com/api/health-check"),
        ];
        for (path, want) in cases {
            assert_eq!(norm(path).template, want, "{path}");
        }
        let e = norm("/v1/users/42/orders/0007");
        assert_eq!(e.ids.len(), 2);
        assert_eq!(e.ids[0].as_u64(), Some(42));
        assert_eq!(&*e.ids[1].value, "0007");
        assert_eq!(e.ids[1].as_u64(), Some(7));
    }

    #[test]
    fn hostile_paths_stay_bounded() {
        let long = format!("/{}", "a".repeat(10_000));
        let e = norm(&long);
        assert_eq!(e.template, "GET api.example.com/{long}");
        assert_eq!(e.ids[0].value.len(), 10_000);
        let deep: String = (0..5000).map(|i| format!("/s{}", i % 3)).collect();
        let e = norm(&deep);
        assert!(e.template.ends_with("/{rest}"), "{}", e.template);
        assert!(e.template.len() < 200);
        let e = norm("/ünïcödé/✓/%FF%FE");
        assert_eq!(e.template, "GET api.example.com/ünïcödé/✓/%FF%FE");
        let huge_num = format!("/n/{}", "9".repeat(50));
        let e = norm(&huge_num);
        assert_eq!(e.template, "GET api.example.com/n/{id}");
        assert_eq!(e.ids[0].as_u64(), None);
    }

    const SPEC: &str = r"
openapi: 3.0.3
servers:
  - url: https://api.example.com/v1
paths:
  /users/{userId}:
    get: {}
  /users/me:
    get: {}
  /users/{userId}/orders/{orderId}.json:
    get: {}
";

    #[test]
    fn openapi_templates() {
        let n =
            EndpointNormalizer::with_openapi_text(&EndpointConfig::default(), "spec.yaml", SPEC)
                .unwrap();
        assert_eq!(n.openapi_paths(), 3);
        let mk = |p: &str| {
            let mut e = RequestEvent::new(0, "10.0.0.1".parse().unwrap(), "GET", p, 200);
            e.host = Some("api.example.com".into());
            n.normalize(&e)
        };
        assert_eq!(
            mk("/v1/users/me").template,
            "GET api.example.com/v1/users/me"
        );
        let e = mk("/v1/users/alice");
        assert_eq!(e.template, "GET api.example.com/v1/users/{userId}");
        assert_eq!(&*e.ids[0].value, "alice");
        let e = mk("/v1/users/7/orders/99.json");
        assert_eq!(
            e.template,
            "GET api.example.com/v1/users/{userId}/orders/{orderId}.json"
        );
        assert_eq!(
            e.ids.iter().map(|i| &*i.value).collect::<Vec<_>>(),
            ["7", "99"]
        );
        // Not in the document: heuristics.
        assert_eq!(
            mk("/v2/items/5").template,
            "GET api.example.com/v2/items/{id}"
        );
    }

    #[test]
    fn bad_openapi_documents_are_refused() {
        let cfg = EndpointConfig::default();
        for (text, needle) in [
            (
                "openapi: 2.0\npaths: {'/a': {}}",
                "unsupported OpenAPI version",
            ),
            ("swagger: '2.0'\npaths: {'/a': {}}", "no `openapi`"),
            ("openapi: 3.1.0\npaths: {}", "no paths"),
            ("openapi: 3.1.0\npaths: {'a': {}}", "does not start"),
            ("openapi: 3.1.0\npaths: {'/a/{b': {}}", "unbalanced"),
            ("{not json", "spec"),
        ] {
            let err = EndpointNormalizer::with_openapi_text(&cfg, "spec", text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
