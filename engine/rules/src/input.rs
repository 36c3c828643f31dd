//! What a rule reads of one event: the request, its features and its score.

use std::net::{IpAddr, Ipv4Addr};

use crate::expr::{Field, ReqField, ScoreField};

/// The request fields a rule can read (`request.*`); text fields the event lacks are empty.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Event time (epoch milliseconds).
    pub ts_ms: i64,
    /// The caller's address.
    pub ip: IpAddr,
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Host, lower case.
    pub host: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: &'a str,
    /// Endpoint template.
    pub endpoint: &'a str,
    /// Response status.
    pub status: u16,
    /// Client key with its kind (`jwt:alice`, `ip:203.0.113.7`).
    pub client: &'a str,
    /// The client key's kind (`jwt`, `header`, `cookie`, `session`, `ip`).
    pub client_kind: &'a str,
    /// User agent.
    pub user_agent: &'a str,
    /// Request headers, lower-case names.
    pub headers: &'a [(&'a str, &'a str)],
    /// Autonomous system number.
    pub asn: &'a str,
    /// Country code.
    pub country: &'a str,
    /// JA4 TLS fingerprint.
    pub ja4: &'a str,
}

/// The model's score of the event (`score.*`).
#[derive(Debug, Clone, Copy)]
pub struct ScoreView<'a> {
    /// The combined score.
    pub overall: f64,
    /// Its surprisal in bits.
    pub surprisal: f64,
    /// Whether the model flags the event.
    pub flagged: bool,
    /// Each detector's score, in the schema's detector order.
    pub members: &'a [f64],
    /// The endpoint monitor's authentication-failure alert score of the request's endpoint
    /// now (0 when it is not alerting; not a number without a monitor).
    pub endpoint_auth: f64,
}

/// One event as rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The request.
    pub request: RequestView<'a>,
    /// Its features, in the schema's feature order.
    pub features: &'a [f64],
    /// Its score, when the events are scored (without one, `score.*` is not a number and
    /// `score.flagged` is false).
    pub score: Option<ScoreView<'a>>,
}

impl<'a> Input<'a> {
    /// A neutral event (`zeros` and empty text) for checking conditions at load.
    pub(crate) fn probe(zeros: &'a [f64]) -> Self {
        Self {
            request: RequestView {
                ts_ms: 0,
                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                method: "GET",
                host: "",
                path: "/",
                query: "",
                endpoint: "GET /",
                status: 200,
                client: "ip:0.0.0.0",
                client_kind: "ip",
                user_agent: "",
                headers: &[],
                asn: "",
                country: "",
                ja4: "",
            },
            features: zeros,
            score: Some(ScoreView {
                overall: 0.0,
                surprisal: 0.0,
                flagged: false,
                members: zeros,
                endpoint_auth: 0.0,
            }),
        }
    }
}

impl Input<'_> {
    /// A numeric field's value (not a number when the event has none).
    pub(crate) fn number(&self, f: Field) -> f64 {
        match f {
            Field::Feature(i) => self.features.get(i).copied().unwrap_or(f64::NAN),
            Field::Request(ReqField::Status) => f64::from(self.request.status),
            Field::Request(_) => f64::NAN,
            Field::Score(s) => match (self.score, s) {
                (None, _) | (_, ScoreField::Flagged) => f64::NAN,
                (Some(v), ScoreField::Overall) => v.overall,
                (Some(v), ScoreField::Surprisal) => v.surprisal,
                (Some(v), ScoreField::EndpointAuth) => v.endpoint_auth,
                (Some(v), ScoreField::Member(i)) => v.members.get(i).copied().unwrap_or(f64::NAN),
            },
        }
    }

    /// `score.flagged`.
    pub(crate) fn flagged(&self) -> bool {
        self.score.is_some_and(|s| s.flagged)
    }

    /// A text field's value.
    pub(crate) fn text(&self, f: ReqField) -> std::borrow::Cow<'_, str> {
        let r = &self.request;
        std::borrow::Cow::Borrowed(match f {
            ReqField::Method => r.method,
            ReqField::Host => r.host,
            ReqField::Path => r.path,
            ReqField::Query => r.query,
            ReqField::Endpoint => r.endpoint,
            ReqField::Client => r.client,
            ReqField::ClientKind => r.client_kind,
            ReqField::UserAgent => r.user_agent,
            ReqField::Asn => r.asn,
            ReqField::Country => r.country,
            ReqField::Ja4 => r.ja4,
            ReqField::Ip => return std::borrow::Cow::Owned(r.ip.to_string()),
            ReqField::Status => return std::borrow::Cow::Owned(r.status.to_string()),
            ReqField::Headers => "",
        })
    }
}
