//! What a decision applies to: a rule's key, and the key of a request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::expr::ReqField;
use crate::input::RequestView;

/// A decision's scope, named as CrowdSec names scopes (`Ip`, `Range`, `AS`, `Country`) or
/// gatewatch's own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum KeyScope {
    /// One address.
    Ip,
    /// An address range (`198.51.100.0/24`).
    Range,
    /// A client key that is not an address (`jwt:alice`, `header:k-1`, `session:s1`).
    Client,
    /// An endpoint template.
    Endpoint,
    /// A client on an endpoint (`jwt:alice@GET api.example.com/v1/users/{id}`).
    EndpointClient,
    /// An autonomous system.
    As,
    /// A country code.
    Country,
    /// A user agent.
    UserAgent,
    /// A JA4 TLS fingerprint.
    Ja4,
    /// A host.
    Host,
}

impl KeyScope {
    /// Its name in decision records and the decisions API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "Ip",
            Self::Range => "Range",
            Self::Client => "Client",
            Self::Endpoint => "Endpoint",
            Self::EndpointClient => "Endpoint+Client",
            Self::As => "AS",
            Self::Country => "Country",
            Self::UserAgent => "UserAgent",
            Self::Ja4 => "JA4",
            Self::Host => "Host",
        }
    }

    /// The scope named `s` (case-insensitive, as bouncers send it).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Ip,
            Self::Range,
            Self::Client,
            Self::Endpoint,
            Self::EndpointClient,
            Self::As,
            Self::Country,
            Self::UserAgent,
            Self::Ja4,
            Self::Host,
        ]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }
}

/// A rule's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpec {
    /// The request's client key (scope `Ip` for an address key, else `Client`).
    Client,
    /// The address.
    Ip,
    /// The address's range.
    Range {
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// The endpoint.
    Endpoint,
    /// The client on the endpoint.
    EndpointClient,
    /// A request field.
    Field(KeyField),
}

/// The request fields a key can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyField {
    /// `request.asn`.
    Asn,
    /// `request.country`.
    Country,
    /// `request.user_agent`.
    UserAgent,
    /// `request.ja4`.
    Ja4,
    /// `request.host`.
    Host,
}

impl KeySpec {
    /// The key written `s` in a rule (`client`, `ip`, `ip/24`, `endpoint`,
    /// `endpoint+client`, `request.asn`…).
    pub fn parse(s: &str, ipv6_prefix: Option<u8>) -> Result<Self, String> {
        let v6 = ipv6_prefix.unwrap_or(48);
        if v6 > 128 {
            return Err(format!("ipv6_prefix {v6} is more than 128"));
        }
        Ok(match s {
            "client" => Self::Client,
            "ip" => Self::Ip,
            "endpoint" => Self::Endpoint,
            "endpoint+client" => Self::EndpointClient,
            _ => {
                if let Some(n) = s.strip_prefix("ip/") {
                    match n.parse::<u8>() {
                        Ok(v4) if v4 <= 32 => return Ok(Self::Range { v4, v6 }),
                        _ => return Err(format!("{s:?}: the IPv4 prefix must be 0 to 32")),
                    }
                }
                let field = s
                    .strip_prefix("request.")
                    .and_then(ReqField::by_name)
                    .and_then(|f| {
                        Some(match f {
                            ReqField::Asn => KeyField::Asn,
                            ReqField::Country => KeyField::Country,
                            ReqField::UserAgent => KeyField::UserAgent,
                            ReqField::Ja4 => KeyField::Ja4,
                            ReqField::Host => KeyField::Host,
                            _ => return None,
                        })
                    });
                match field {
                    Some(f) => Self::Field(f),
                    None => {
                        return Err(format!(
                            "{s:?} is not a key (client, ip, ip/N, endpoint, endpoint+client, \
                             request.asn, request.country, request.user_agent, request.ja4, \
                             request.host)"
                        ));
                    }
                }
            }
        })
    }

    /// Its text as a rule writes it.
    pub fn name(self) -> String {
        match self {
            Self::Client => "client".into(),
            Self::Ip => "ip".into(),
            Self::Range { v4, v6: 48 } => format!("ip/{v4}"),
            Self::Range { v4, v6 } => format!("ip/{v4} (IPv6 /{v6})"),
            Self::Endpoint => "endpoint".into(),
            Self::EndpointClient => "endpoint+client".into(),
            Self::Field(f) => format!(
                "request.{}",
                match f {
                    KeyField::Asn => "asn",
                    KeyField::Country => "country",
                    KeyField::UserAgent => "user_agent",
                    KeyField::Ja4 => "ja4",
                    KeyField::Host => "host",
                }
            ),
        }
    }

    /// The key of `r` with its value written into `buf` (cleared first): its scope, `None`
    /// when the request has no such field. Allocates nothing once `buf` has grown.
    pub fn key_into(self, r: &RequestView<'_>, buf: &mut String) -> Option<KeyScope> {
        use std::fmt::Write as _;
        buf.clear();
        let text = |scope, v: &str, buf: &mut String| {
            buf.push_str(v);
            (!v.is_empty()).then_some(scope)
        };
        match self {
            Self::Client => match r.client.strip_prefix("ip:") {
                Some(addr) => text(KeyScope::Ip, addr, buf),
                None => text(KeyScope::Client, r.client, buf),
            },
            Self::Ip => {
                let _ = write!(buf, "{}", r.ip);
                Some(KeyScope::Ip)
            }
            Self::Range { v4, v6 } => {
                write_range(r.ip, v4, v6, buf);
                Some(KeyScope::Range)
            }
            Self::Endpoint => text(KeyScope::Endpoint, r.endpoint, buf),
            Self::EndpointClient => {
                let _ = write!(buf, "{}@{}", r.client, r.endpoint);
                Some(KeyScope::EndpointClient)
            }
            Self::Field(f) => match f {
                KeyField::Asn => text(KeyScope::As, r.asn, buf),
                KeyField::Country => text(KeyScope::Country, r.country, buf),
                KeyField::UserAgent => text(KeyScope::UserAgent, r.user_agent, buf),
                KeyField::Ja4 => text(KeyScope::Ja4, r.ja4, buf),
                KeyField::Host => text(KeyScope::Host, r.host, buf),
            },
        }
    }

    /// The key of `r`: its scope and value; `None` when the request has no such field.
    pub fn key(self, r: &RequestView<'_>) -> Option<(KeyScope, String)> {
        let mut value = String::new();
        self.key_into(r, &mut value).map(|scope| (scope, value))
    }
}

/// Writes the range of `ip` as `network/prefix` text.
fn write_range(ip: IpAddr, v4: u8, v6: u8, out: &mut String) {
    use std::fmt::Write as _;
    let _ = match ip {
        IpAddr::V4(a) => {
            let mask = if v4 == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(v4))
            };
            write!(out, "{}/{v4}", Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = if v6 == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6))
            };
            write!(out, "{}/{v6}", Ipv6Addr::from(u128::from(a) & mask))
        }
    };
}
