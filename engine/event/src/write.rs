//! Writing events back as NDJSON (the simulator's output, test fixtures).

use std::fmt::Write;

use crate::event::RequestEvent;
use crate::time::write_rfc3339_ms;

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut String, s: &str) {
    if !needs_escape(s.as_bytes()) {
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

/// Whether any byte of `b` is a control character (< 0x20), `"` or `\\`: eight bytes at a
/// time (a byte below 0x20, or equal to 0x22 or 0x5c, in a word, by the exact "has less
/// than" and "has zero" tests of bit-twiddling), the rest one by one.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // Below 0x20 (exact for limits up to 0x80), or a quote, or a backslash.
        let less = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        if less || has_zero(x ^ (ONES * u64::from(b'"'))) || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
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

    fn naive(b: &[u8]) -> bool {
        b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\')
    }

    #[test]
    fn the_word_test_finds_every_byte_that_needs_escaping() {
        // Every byte value at every position of strings of 0..=24 bytes around it.
        for len in 0..=24usize {
            for at in 0..len {
                for c in 0..=255u8 {
                    for fill in [b'a', 0x7f, 0x80, 0xff, b' ', b'!', b'#', b'[', b']'] {
                        let mut v = vec![fill; len];
                        v[at] = c;
                        assert_eq!(needs_escape(&v), naive(&v), "{v:?}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_word_test_agrees_on_any_bytes(v in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            proptest::prop_assert_eq!(needs_escape(&v), naive(&v));
        }
    }

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
