//! Writing events back as NDJSON (the simulator's output, test fixtures).

use std::fmt::Write;

use crate::event::RequestEvent;
use crate::time::write_rfc3339_ms;

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut String, s: &str) {
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends one event as an NDJSON line (with the trailing newline), in the input schema.
pub fn write_ndjson(ev: &RequestEvent, out: &mut String) {
    out.push('{');
    if let Some(id) = &ev.id {
        let _ = write!(out, "\"id\":{id},");
    }
    out.push_str("\"ts\":\"");
    write_rfc3339_ms(ev.ts_ms, out);
    let _ = write!(out, "\",\"client_ip\":\"{}\",\"method\":", ev.client_ip);
    write_json_str(out, &ev.method);
    if let Some(h) = &ev.host {
        out.push_str(",\"host\":");
        write_json_str(out, h);
    }
    out.push_str(",\"path\":");
    match &ev.query {
        Some(q) => write_json_str(out, &format!("{}?{q}", ev.path)),
        None => write_json_str(out, &ev.path),
    }
    let _ = write!(out, ",\"status\":{}", ev.status);
    if let Some(b) = ev.req_bytes {
        let _ = write!(out, ",\"req_bytes\":{b}");
    }
    if let Some(b) = ev.resp_bytes {
        let _ = write!(out, ",\"resp_bytes\":{b}");
    }
    if let Some(l) = ev.latency_ms {
        let _ = write!(out, ",\"latency_ms\":{l}");
    }
    if let Some(ua) = &ev.user_agent {
        out.push_str(",\"user_agent\":");
        write_json_str(out, ua);
    }
    if !ev.headers.is_empty() {
        out.push_str(",\"headers\":{");
        for (i, (k, v)) in ev.headers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_str(out, k);
            out.push(':');
            write_json_str(out, v);
        }
        out.push('}');
    }
    for (name, v) in [
        ("session_id", &ev.session_id),
        ("asn", &ev.asn),
        ("country", &ev.country),
        ("ja4", &ev.ja4),
    ] {
        if let Some(v) = v {
            let _ = write!(out, ",\"{name}\":");
            write_json_str(out, v);
        }
    }
    if let Some(l) = &ev.label {
        let _ = write!(out, ",\"label\":{l}");
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_parser() {
        let mut e = RequestEvent::new(
            1_764_230_400_123,
            "2001:db8::1".parse().unwrap(),
            "POST",
            "/a/b?x=\"1\"",
            201,
        );
        e.host = Some("h.example".into());
        e.req_bytes = Some(10);
        e.resp_bytes = Some(20);
        e.latency_ms = Some(12.5);
        e.user_agent = Some("ua \"q\"\n".into());
        e.headers = vec![("x-api-key".into(), "k\\1".into())];
        e.session_id = Some("s".into());
        e.country = Some("DE".into());
        e.id = Some("7".into());
        e.label = Some("\"normal\"".into());
        let mut s = String::new();
        write_ndjson(&e, &mut s);
        assert!(s.ends_with('\n'));
        let back = crate::parse_ndjson(s.trim_end().as_bytes()).unwrap();
        assert_eq!(back, e);
    }
}
