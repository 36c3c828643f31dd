//! `${VAR}` and `${VAR:-default}` in configuration text, resolved before parsing.
//!
//! References are resolved where a value is written: inside a basic string (`"…"`) the value
//! is escaped as string content; inside a literal string (`'…'`) it may not contain `'`; in a
//! bare value (a number, a boolean) it may contain only `[A-Za-z0-9_.+-:]`. No value may hold
//! a line end. So a variable can give a value but never add a key, a section or a line.
//! Comments are left alone (a reference in a comment is not resolved), and `$${` writes a
//! literal `${`.

/// Where in the TOML text a position is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Bare,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
    Comment,
}

/// What went wrong, with the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    /// The line of the reference.
    pub line: usize,
    /// Why it could not be resolved.
    pub reason: String,
}

impl std::fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Resolves every reference of `text` with `env` (a variable's value, if set).
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(text.len());
    let mut at = At::Bare;
    let mut line = 1;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let rest = &text[i..];
        // Multi-line strings open and close with three quotes.
        let triple = match at {
            At::Bare if rest.starts_with("\"\"\"") => Some(At::MultiBasic),
            At::Bare if rest.starts_with("'''") => Some(At::MultiLiteral),
            At::MultiBasic if rest.starts_with("\"\"\"") => Some(At::Bare),
            At::MultiLiteral if rest.starts_with("'''") => Some(At::Bare),
            _ => None,
        };
        if let Some(next) = triple {
            out.push_str(&rest[..3]);
            i += 3;
            at = next;
            continue;
        }
        match at {
            At::Comment if c == b'\n' => at = At::Bare,
            At::Bare if c == b'#' => at = At::Comment,
            At::Bare if c == b'"' => at = At::Basic,
            At::Bare if c == b'\'' => at = At::Literal,
            At::Basic | At::MultiBasic if c == b'\\' && i + 1 < b.len() => {
                // An escape: copy it and the character it escapes.
                let n = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + 1 + n]);
                i += 1 + n;
                continue;
            }
            At::Basic if c == b'"' => at = At::Bare,
            At::Literal if c == b'\'' => at = At::Bare,
            _ => {}
        }
        if c == b'\n' {
            line += 1;
            if matches!(at, At::Basic | At::Literal) {
                // An unterminated string: let the TOML parser say so.
                at = At::Bare;
            }
        }
        if at != At::Comment && rest.starts_with("$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if at != At::Comment && rest.starts_with("${") {
            let err = |reason: String| InterpolationError { line, reason };
            let end = rest
                .find('}')
                .ok_or_else(|| err("`${` without its closing `}`".into()))?;
            let (name, value) = lookup(&rest[2..end], env).map_err(err)?;
            write_value(&mut out, at, name, &value).map_err(err)?;
            i += end + 1;
            continue;
        }
        let n = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + n]);
        i += n;
    }
    Ok(out)
}

/// The variable of a reference (`NAME` or `NAME:-default`) and its value.
fn lookup<'a>(
    inner: &'a str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(&'a str, String), String> {
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    let valid = !name.is_empty()
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(format!(
            "`${{{inner}}}`: not a variable name (letters, digits, _)"
        ));
    }
    match (env(name).filter(|v| !v.is_empty()), default) {
        (Some(v), _) => Ok((name, v)),
        (None, Some(d)) => Ok((name, d.to_string())),
        (None, None) => Err(format!(
            "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
        )),
    }
}

/// Writes `value` where the reference stood: escaped in a "…" string, checked in a '…'
/// string, a bare number or boolean elsewhere; never a line end.
fn write_value(out: &mut String, at: At, name: &str, value: &str) -> Result<(), String> {
    let bad = |why: &str| format!("${{{name}}}: the value {value:?} {why}");
    if value.contains(['\n', '\r']) {
        return Err(bad("holds a line end"));
    }
    match at {
        At::Basic | At::MultiBasic => {
            for ch in value.chars() {
                match ch {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                    c => out.push(c),
                }
            }
        }
        At::Literal | At::MultiLiteral => {
            if value.contains('\'') || value.chars().any(char::is_control) {
                return Err(bad(
                    "cannot go in a '…' string (it holds ' or a control character)",
                ));
            }
            out.push_str(value);
        }
        At::Bare | At::Comment => {
            let bare = |c: u8| c.is_ascii_alphanumeric() || b"_.+-:".contains(&c);
            if value.is_empty() || !value.bytes().all(bare) {
                return Err(bad(
                    "is not a bare value (a number or boolean); put the reference in quotes for a string",
                ));
            }
            out.push_str(value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "N" => Some("250".into()),
            "Q" => Some("a \"quoted\" \\ value".into()),
            "NL" => Some("x\ny = 1".into()),
            "EMPTY" => Some(String::new()),
            "APOS" => Some("it's".into()),
            _ => None,
        }
    }

    fn run(t: &str) -> Result<String, InterpolationError> {
        interpolate(t, &env)
    }

    #[test]
    fn references_resolve_where_they_stand() {
        assert_eq!(run("a = ${N}\n").unwrap(), "a = 250\n");
        assert_eq!(run("a = ${MISSING:-7}").unwrap(), "a = 7");
        assert_eq!(run("a = ${EMPTY:-7}").unwrap(), "a = 7");
        assert_eq!(run("s = \"x-${N}\"").unwrap(), "s = \"x-250\"");
        assert_eq!(
            run("s = \"${Q}\"").unwrap(),
            "s = \"a \\\"quoted\\\" \\\\ value\""
        );
        assert_eq!(run("s = '${N}'").unwrap(), "s = '250'");
        assert_eq!(run("s = \"\"\"${N}\"\"\"").unwrap(), "s = \"\"\"250\"\"\"");
        assert_eq!(run("s = \"$${N}\"").unwrap(), "s = \"${N}\"");
        assert_eq!(run("s = \"\\\"${N}\"").unwrap(), "s = \"\\\"250\"");
        // Comments are not resolved.
        assert_eq!(run("a = 1 # ${MISSING}\n").unwrap(), "a = 1 # ${MISSING}\n");
        assert_eq!(run("s = \"#${N}\"").unwrap(), "s = \"#250\"");
        // The resolved text parses as TOML with the value.
        let v: toml::Table = toml::from_str(&run("s = \"${Q}\"\nn = ${N}").unwrap()).unwrap();
        assert_eq!(v["s"].as_str(), Some("a \"quoted\" \\ value"));
        assert_eq!(v["n"].as_integer(), Some(250));
    }

    #[test]
    fn a_value_never_adds_keys_or_lines() {
        let e = run("\n\ns = \"${NL}\"").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("line end"), "{e}");
        let e = run("a = ${Q}").unwrap_err();
        assert!(e.reason.contains("not a bare value"), "{e}");
        let e = run("s = '${APOS}'").unwrap_err();
        assert!(e.reason.contains("'…' string"), "{e}");
        let e = run("a = ${MISSING}").unwrap_err();
        assert!(e.reason.contains("MISSING is not set"), "{e}");
        let e = run("a = ${1X}").unwrap_err();
        assert!(e.reason.contains("not a variable name"), "{e}");
        let e = run("a = \"${N\"").unwrap_err();
        assert!(e.reason.contains("closing"), "{e}");
    }
}
