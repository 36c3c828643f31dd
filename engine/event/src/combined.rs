//! nginx / Apache "combined" access-log lines.
//!
//! `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`, optionally followed by more
//! fields (quoted or bare), whose positions can be configured: the first field after the
//! user agent is position 1. The referer, when not `-`, becomes the event's `referer`
//! header.

use serde::Deserialize;

use crate::error::{ParseError, snippet};
use crate::event::{RequestEvent, normalise_method, split_query};
use crate::ndjson::parse_ip;
use crate::time::{days_from_civil, days_in_month};

/// Where the optional fields of a combined log line are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinedConfig {
    /// Position (1 = first field after the user agent) of a session id, if the log has one.
    #[serde(default)]
    pub session_field: Option<usize>,
    /// Position of the request host (nginx `$host`), if the log has one.
    #[serde(default)]
    pub host_field: Option<usize>,
    /// Position of the request time in seconds (nginx `$request_time`), if the log has one.
    #[serde(default)]
    pub latency_secs_field: Option<usize>,
    /// Use the `%u` (remote user) field as the session id when it is not `-`.
    #[serde(default)]
    pub user_as_session: bool,
}

/// Highest position an extra field may have.
pub const MAX_EXTRA_FIELD: usize = 64;

impl CombinedConfig {
    /// Checks the positions (1..=64); the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("session_field", self.session_field),
            ("host_field", self.host_field),
            ("latency_secs_field", self.latency_secs_field),
        ] {
            if let Some(p) = v {
                if !(1..=MAX_EXTRA_FIELD).contains(&p) {
                    return Err(format!(
                        "{name}: positions start at 1 (the first field after the user agent) and go up to {MAX_EXTRA_FIELD}, got {p}"
                    ));
                }
            }
        }
        Ok(())
    }
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip_spaces(&mut self) {
        let b = self.s.as_bytes();
        while self.pos < b.len() && b[self.pos] == b' ' {
            self.pos += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_spaces();
        self.pos >= self.s.len()
    }

    /// A bare token up to the next space.
    fn token(&mut self, what: &str) -> Result<&'a str, ParseError> {
        self.skip_spaces();
        let b = self.s.as_bytes();
        let start = self.pos;
        while self.pos < b.len() && b[self.pos] != b' ' {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(ParseError::field(what, "missing"));
        }
        Ok(&self.s[start..self.pos])
    }

    /// A field delimited by `open` … `close`, with backslash escapes skipped over.
    fn delimited(&mut self, what: &str, open: u8, close: u8) -> Result<&'a str, ParseError> {
        self.skip_spaces();
        let b = self.s.as_bytes();
        if b.get(self.pos) != Some(&open) {
            return Err(ParseError::field(
                what,
                format!("expected `{}` at column {}", open as char, self.pos + 1),
            ));
        }
        let start = self.pos + 1;
        let mut i = start;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                c if c == close => {
                    self.pos = i + 1;
                    return Ok(&self.s[start..i]);
                }
                _ => i += 1,
            }
        }
        Err(ParseError::field(
            what,
            format!("unterminated, expected `{}`", close as char),
        ))
    }

    /// An extra field: quoted or bare.
    fn extra(&mut self) -> Result<&'a str, ParseError> {
        self.skip_spaces();
        if self.s.as_bytes().get(self.pos) == Some(&b'"') {
            self.delimited("extra field", b'"', b'"')
        } else {
            self.token("extra field")
        }
    }
}

fn dash(s: &str) -> Option<&str> {
    (s != "-" && !s.is_empty()).then_some(s)
}

/// Unescapes `\"`, `\\` and nginx's `\xHH` for quoted fields. Works on bytes, so an escape
/// next to a multi-byte character never splits it; bytes that do not form UTF-8 after
/// unescaping become U+FFFD.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' => {
                    if let (Some(h), Some(l)) = (
                        b.get(i + 2).copied().and_then(hex_digit),
                        b.get(i + 3).copied().and_then(hex_digit),
                    ) {
                        out.push(h << 4 | l);
                        i += 4;
                        continue;
                    }
                    out.push(b'\\');
                    i += 1;
                }
                c @ (b'"' | b'\\') => {
                    out.push(c);
                    i += 2;
                }
                // Apache's C escapes for control characters.
                c @ (b'n' | b't' | b'r' | b'b' | b'v' | b'f') => {
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'b' => 0x08,
                        b'v' => 0x0b,
                        _ => 0x0c,
                    });
                    i += 2;
                }
                // Any other escaped byte is kept with its backslash (it may start a
                // multi-byte character).
                _ => {
                    out.push(b'\\');
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `10/Oct/2000:13:55:36 -0700` to epoch milliseconds.
fn parse_clf_time(t: &str) -> Result<i64, ParseError> {
    let bad = || ParseError::field("time", format!("not a log timestamp: {:?}", snippet(t)));
    let b = t.as_bytes();
    if b.len() != 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[20] != b' ' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, ParseError> {
        t.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())
    };
    let day = num(0..2)?;
    let mon = t.get(3..6).ok_or_else(bad)?;
    let month = MONTHS.iter().position(|m| *m == mon).ok_or_else(bad)? as u32 + 1;
    let year = num(7..11)?;
    let (h, mi, s) = (num(12..14)?, num(15..17)?, num(18..20)?);
    let (oh, om) = (num(22..24)?, num(24..26)?);
    if day == 0 || day > days_in_month(i64::from(year), month) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let off = i64::from(oh * 3600 + om * 60);
    let off = match b[21] {
        b'+' => off,
        b'-' => -off,
        _ => return Err(bad()),
    };
    let secs = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(h * 3600 + mi * 60 + s.min(59))
        - off;
    Ok(secs * 1000)
}

/// Parses one combined-log line.
pub fn parse_combined(line: &[u8], cfg: &CombinedConfig) -> Result<RequestEvent, ParseError> {
    let s = std::str::from_utf8(line).map_err(|e| {
        ParseError::line(format!(
            "line is not valid UTF-8 (byte {})",
            e.valid_up_to() + 1
        ))
    })?;
    let s = s.trim_end_matches(['\r', '\n']);
    let mut c = Cursor { s, pos: 0 };
    let ip = c.token("client_ip")?;
    let client_ip = parse_ip(ip)?;
    let _ident = c.token("ident")?;
    let user = c.token("user")?;
    let time = c.delimited("time", b'[', b']')?;
    let ts_ms = parse_clf_time(time)?;
    let request = c.delimited("request", b'"', b'"')?;
    let request = unescape(request);
    let mut parts = request.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(ParseError::field(
            "request",
            format!("not a request line: {:?}", snippet(&request)),
        ));
    };
    let method = normalise_method(method).map_err(|e| ParseError::field("request", e))?;
    let status_s = c.token("status")?;
    let status: u16 = status_s
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| {
            ParseError::field(
                "status",
                format!("not an HTTP status: {:?}", snippet(status_s)),
            )
        })?;
    let bytes_s = c.token("bytes")?;
    let resp_bytes = match dash(bytes_s) {
        None => None,
        Some(b) => Some(b.parse::<u64>().map_err(|_| {
            ParseError::field("bytes", format!("not a byte count: {:?}", snippet(b)))
        })?),
    };
    // Referer and user agent are optional (common log format stops after the size).
    let (mut user_agent, mut referer) = (None, None);
    if !c.at_end() {
        referer = dash(c.delimited("referer", b'"', b'"')?).map(unescape);
        if !c.at_end() {
            user_agent = dash(c.delimited("user_agent", b'"', b'"')?).map(unescape);
        }
    }
    let mut extras: Vec<&str> = Vec::new();
    let wanted = [cfg.session_field, cfg.host_field, cfg.latency_secs_field]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
    while extras.len() < wanted && !c.at_end() {
        extras.push(c.extra()?);
    }
    let extra = |pos: Option<usize>, name: &str| -> Result<Option<&str>, ParseError> {
        match pos {
            None => Ok(None),
            Some(0) => Err(ParseError::field(name, "field positions start at 1")),
            Some(p) => Ok(extras.get(p - 1).copied().and_then(dash)),
        }
    };
    let mut session_id = extra(cfg.session_field, "session")?.map(|s| unescape(s).into_boxed_str());
    if session_id.is_none() && cfg.user_as_session {
        session_id = dash(user).map(Into::into);
    }
    let host = extra(cfg.host_field, "host")?.map(|h| h.to_ascii_lowercase().into_boxed_str());
    let latency_ms = match extra(cfg.latency_secs_field, "latency")? {
        None => None,
        Some(l) => Some(
            l.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    ParseError::field("latency", format!("not a duration: {:?}", snippet(l)))
                })?
                * 1000.0,
        ),
    };
    let (path, query) = split_query(target);
    // An absolute-form target (`GET http://host/path`) keeps only its path.
    let path = match path.find("://") {
        Some(i) => path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..]),
        None => path,
    };
    let mut ev = RequestEvent::new(ts_ms, client_ip, "GET", path, status);
    ev.method = method;
    ev.query = query.map(Into::into);
    ev.resp_bytes = resp_bytes;
    ev.user_agent = user_agent.map(Into::into);
    if let Some(r) = referer {
        ev.headers.push(("referer".into(), r.into()));
    }
    ev.session_id = session_id;
    ev.host = host;
    ev.latency_ms = latency_ms;
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif?a=b HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)" sess-42 api.example.com 0.012"#;

    #[test]
    fn parses_combined_with_extras() {
        let cfg = CombinedConfig {
            session_field: Some(1),
            host_field: Some(2),
            latency_secs_field: Some(3),
            user_as_session: false,
        };
        let e = parse_combined(LINE.as_bytes(), &cfg).unwrap();
        assert_eq!(
            e.ts_ms,
            crate::parse_rfc3339_ms("2000-10-10T20:55:36Z").unwrap()
        );
        assert_eq!(&*e.path, "/apache_pb.gif");
        assert_eq!(e.query.as_deref(), Some("a=b"));
        assert_eq!(e.status, 200);
        assert_eq!(e.resp_bytes, Some(2326));
        assert_eq!(
            e.user_agent.as_deref(),
            Some("Mozilla/4.08 [en] (Win98; I ;Nav)")
        );
        assert_eq!(e.session_id.as_deref(), Some("sess-42"));
        assert_eq!(e.host.as_deref(), Some("api.example.com"));
        assert!((e.latency_ms.unwrap() - 12.0).abs() < 1e-9);
        assert_eq!(
            e.header("referer"),
            Some("http://www.example.com/start.html")
        );
        let no_referer = LINE.replace("\"http://www.example.com/start.html\"", "\"-\"");
        let e = parse_combined(no_referer.as_bytes(), &cfg).unwrap();
        assert_eq!(e.header("referer"), None);
    }

    #[test]
    fn common_log_format_and_user() {
        let cfg = CombinedConfig {
            user_as_session: true,
            ..Default::default()
        };
        let e = parse_combined(
            br#"10.1.1.1 - alice [01/Jan/2026:00:00:00 +0000] "POST /login HTTP/1.1" 401 -"#,
            &cfg,
        )
        .unwrap();
        assert_eq!(e.session_id.as_deref(), Some("alice"));
        assert_eq!(e.resp_bytes, None);
        assert_eq!(&*e.method, "POST");
    }

    #[test]
    fn escaped_quotes_and_absolute_targets() {
        let e = parse_combined(
            br#"::1 - - [01/Jan/2026:00:00:00 +0000] "GET http://h/x/y HTTP/1.1" 200 5 "-" "a \"quoted\" agent""#,
            &CombinedConfig::default(),
        )
        .unwrap();
        assert_eq!(&*e.path, "/x/y");
        assert_eq!(e.user_agent.as_deref(), Some(r#"a "quoted" agent"#));
    }

    #[test]
    fn errors_name_the_field() {
        let cfg = CombinedConfig::default();
        let cases: [(&[u8], &str); 6] = [
            (
                br#"nothost - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 5"#,
                "client_ip",
            ),
            (
                br#"1.1.1.1 - - [01/Foo/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 5"#,
                "time",
            ),
            (
                br#"1.1.1.1 - - [01/Jan/2026:00:00:00 +0000] "\x16\x03\x01" 400 5"#,
                "request",
            ),
            (
                br#"1.1.1.1 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 2x0 5"#,
                "status",
            ),
            (
                br#"1.1.1.1 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1" 200 many"#,
                "bytes",
            ),
            (
                br#"1.1.1.1 - - [01/Jan/2026:00:00:00 +0000] "GET / HTTP/1.1"#,
                "request",
            ),
        ];
        for (line, field) in cases {
            let e = parse_combined(line, &cfg).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
        }
        let e = parse_combined(b"1.1.1.1 \xff\xfe", &cfg).unwrap_err();
        assert!(e.reason.contains("UTF-8"), "{e}");
        // A multi-byte character where the month's three bytes are.
        let e = parse_combined(
            "1.1.1.1 - - [01/J\u{e9}n/2026:00:00:00 +0000] \"GET / HTTP/1.1\" 200 5".as_bytes(),
            &cfg,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("time"), "{e}");
    }

    #[test]
    fn escapes_next_to_multibyte_characters() {
        let cfg = CombinedConfig::default();
        for req in [
            "GET /a\\x1\u{e9} HTTP/1.1",
            "GET /a\\\u{e9} HTTP/1.1",
            "GET /\\x\u{e9}\u{e9} HTTP/1.1",
        ] {
            let line =
                format!("1.2.3.7 - - [05/Jan/2026:09:00:06 +0000] \"{req}\" 200 5 \"-\" \"ua\"");
            let e = parse_combined(line.as_bytes(), &cfg).unwrap();
            assert!(e.path.starts_with('/'), "{req}: {}", e.path);
            assert!(e.path.contains('\u{e9}'), "{req}: {}", e.path);
        }
        let e = parse_combined(
            br#"1.2.3.7 - - [05/Jan/2026:09:00:06 +0000] "GET /a\x41\x4 HTTP/1.1" 200 5 "-" "ua""#,
            &cfg,
        )
        .unwrap();
        assert_eq!(&*e.path, "/aA\\x4");
    }
}
