use std::net::IpAddr;

/// One request header: lower-case name and value.
pub type Header = (Box<str>, Box<str>);

/// One request as the gateway logged it, validated and normalised.
///
/// `id` and `label` are kept as raw JSON text so that every output record can carry them
/// through unchanged, whatever their type.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEvent {
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// Address of the caller.
    pub client_ip: IpAddr,
    /// HTTP method, upper case.
    pub method: Box<str>,
    /// API host, lower case, when known.
    pub host: Option<Box<str>>,
    /// Path without the query string.
    pub path: Box<str>,
    /// Query string (without `?`), when there was one.
    pub query: Option<Box<str>>,
    /// Response status.
    pub status: u16,
    /// Request size in bytes.
    pub req_bytes: Option<u64>,
    /// Response size in bytes.
    pub resp_bytes: Option<u64>,
    /// Origin latency in milliseconds.
    pub latency_ms: Option<f64>,
    /// User agent.
    pub user_agent: Option<Box<str>>,
    /// Request headers with lower-case names.
    pub headers: Vec<Header>,
    /// Session id, when the gateway knows one.
    pub session_id: Option<Box<str>>,
    /// Autonomous system number, as text.
    pub asn: Option<Box<str>>,
    /// Country code.
    pub country: Option<Box<str>>,
    /// JA4 TLS fingerprint.
    pub ja4: Option<Box<str>>,
    /// The `id` field as raw JSON, carried through.
    pub id: Option<Box<str>>,
    /// The `label` field as raw JSON, carried through.
    pub label: Option<Box<str>>,
}

impl RequestEvent {
    /// A minimal event (used by tests, benchmarks and the simulator).
    pub fn new(ts_ms: i64, client_ip: IpAddr, method: &str, path: &str, status: u16) -> Self {
        let (path, query) = split_query(path);
        Self {
            ts_ms,
            client_ip,
            method: method.to_ascii_uppercase().into(),
            host: None,
            path: path.into(),
            query: query.map(Into::into),
            status,
            req_bytes: None,
            resp_bytes: None,
            latency_ms: None,
            user_agent: None,
            headers: Vec::new(),
            session_id: None,
            asn: None,
            country: None,
            ja4: None,
            id: None,
            label: None,
        }
    }

    /// The value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Total bytes moved by the request (request plus response; missing sizes count 0).
    pub fn bytes(&self) -> u64 {
        self.req_bytes
            .unwrap_or(0)
            .saturating_add(self.resp_bytes.unwrap_or(0))
    }
}

/// Splits `path?query` (a fragment, if any, is dropped).
pub(crate) fn split_query(raw: &str) -> (&str, Option<&str>) {
    let raw = raw.split('#').next().unwrap_or("");
    match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    }
}

/// Checks an HTTP method token and returns it in upper case.
pub(crate) fn normalise_method(m: &str) -> Result<Box<str>, String> {
    if m.is_empty() || m.len() > 32 || !m.bytes().all(|c| c.is_ascii_alphabetic() || c == b'-') {
        return Err(format!(
            "not an HTTP method: {:?}",
            crate::error::snippet(m)
        ));
    }
    if m.bytes().all(|c| c.is_ascii_uppercase()) {
        Ok(m.into())
    } else {
        Ok(m.to_ascii_uppercase().into())
    }
}
