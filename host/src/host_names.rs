//! Which names the host answers to: the defence against DNS rebinding.
//!
//! A page on `attacker.example` can re-point its own name at 127.0.0.1 once the browser has
//! loaded it. From then on the browser sends that page's requests to a developer's local host
//! with `Host: attacker.example` and a matching `Origin`, so the Origin check
//! ([`crate::origins`]), which lets a page talk to "its own" host, would let it in. The
//! browser cannot lie about `Host`, though: a request whose `Host` is a name the host was not
//! meant to have is refused, on every route, before anything else runs.
//!
//! Always accepted: IP literals (a rebound name never arrives as an IP, and health checks
//! that address a host by its IP keep working), `localhost` and `*.localhost` (browsers
//! resolve those to loopback themselves, RFC 6761). `[host] allowed_hosts` adds names:
//! `"app.example.com"` (that name, any port), `".example.com"` (the domain and every
//! subdomain), or `"*"` (any name: the check is off). Requests without a `Host` (HTTP/1.0
//! tools) come from no browser and pass.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::HOST;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::debug;

/// The longest name a refusal echoes back (a DNS name has at most 253 characters).
const ECHO_LIMIT: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[host] allowed_hosts: `{0}` is not a host name like \"app.example.com\" or \".example.com\" (no scheme, port or path) or \"*\"")]
pub struct HostNameError(String);

/// The host-name policy, built once from `[host] allowed_hosts`.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    any: bool,
    /// Lower-cased names, without a trailing dot.
    exact: HashSet<String>,
    /// Lower-cased domains (without their leading dot) whose subdomains are allowed too.
    domains: Vec<String>,
}

impl AllowedHosts {
    pub fn new(configured: &[String]) -> Result<Self, HostNameError> {
        let mut policy = AllowedHosts::default();
        for entry in configured {
            let trimmed = entry.trim();
            if trimmed == "*" {
                policy.any = true;
                continue;
            }
            let (domain, name) = match trimmed.strip_prefix('.') {
                Some(rest) => (true, rest),
                None => (false, trimmed),
            };
            let name = normalise(name);
            if !is_dns_name(&name) {
                return Err(HostNameError(entry.clone()));
            }
            if domain {
                policy.domains.push(name);
            } else {
                policy.exact.insert(name);
            }
        }
        Ok(policy)
    }

    /// Whether a request that names this `Host` (`name[:port]`) is meant for this host.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let Some(name) = name_of(host) else {
            return false;
        };
        if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            return v6.parse::<Ipv6Addr>().is_ok();
        }
        let name = normalise(name);
        name.parse::<Ipv4Addr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.exact.contains(&name)
            || self.domains.iter().any(|domain| {
                name == *domain
                    || name
                        .strip_suffix(domain.as_str())
                        .is_some_and(|sub| sub.ends_with('.'))
            })
    }

    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> String {
        if self.any {
            return "any name".to_owned();
        }
        let mut names: Vec<String> = self.exact.iter().cloned().collect();
        names.extend(self.domains.iter().map(|d| format!(".{d}")));
        names.sort_unstable();
        let mut text = "IP addresses, localhost, *.localhost".to_owned();
        for name in names {
            text.push_str(", ");
            text.push_str(&name);
        }
        text
    }
}

/// The name part of a `Host` value: without its port; IPv6 literals keep their brackets.
fn name_of(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        return (rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)).then_some(name);
    }
    match host.rsplit_once(':') {
        Some((name, port)) => is_port(port).then_some(name),
        None => Some(host),
    }
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Letters, digits and hyphens in non-empty labels of at most 63 characters.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ECHO_LIMIT
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Axum middleware (outermost, every route): refuses a request whose `Host` this host does
/// not answer to with 421 Misdirected Request.
pub async fn guard(
    State(policy): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host {
        if !policy.allows(host) {
            let shown: String = host.chars().take(ECHO_LIMIT).collect();
            // Debug: anyone can send these, and each would otherwise be a log line.
            debug!(host = ?shown, "request for a host name this host does not answer to refused (DNS rebinding protection)");
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "host").increment(1);
            let body = format!(
                "misdirected request: this host does not answer to the name {shown:?}; \
                 an operator can add it to [host] allowed_hosts in plugins.toml\n"
            );
            return (StatusCode::MISDIRECTED_REQUEST, body).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::new(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn by_default_ip_literals_and_localhost_only() {
        let p = policy(&[]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LOCALHOST",
            "localhost.:8080",
            "app.localhost:5173",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for refused in [
            "attacker.example:8080",
            "attacker.example",
            "localhost.attacker.example",
            "notlocalhost",
            "127.0.0.1.attacker.example",
            "::1",
            "[::1]x",
            "[not-ip]:80",
            "localhost:80x",
            "localhost:",
            "",
        ] {
            assert!(!p.allows(refused), "{refused}");
        }
        assert_eq!(p.describe(), "IP addresses, localhost, *.localhost");
    }

    #[test]
    fn configured_names_and_domains() {
        let p = policy(&["Taskgate.Example.Test", ".apps.example.test."]);
        for ok in [
            "taskgate.example.test",
            "taskgate.example.test:443",
            "apps.example.test",
            "a.b.apps.example.test:8080",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for refused in [
            "example.test",
            "xtaskgate.example.test",
            "evilapps.example.test",
            "taskgate.example.test.evil.example",
        ] {
            assert!(!p.allows(refused), "{refused}");
        }
        assert_eq!(
            p.describe(),
            "IP addresses, localhost, *.localhost, .apps.example.test, taskgate.example.test"
        );
    }

    #[test]
    fn the_wildcard_turns_the_check_off() {
        let p = policy(&["*"]);
        assert!(p.allows("whatever.example"));
        assert!(p.allows_any());
        assert_eq!(p.describe(), "any name");
    }

    #[test]
    fn malformed_entries_are_configuration_errors() {
        for bad in [
            "https://app.example.test",
            "app.example.test/path",
            "user@app.example.test",
            "app.example.test:443",
            "",
            ".",
            "a b",
            "a..b",
        ] {
            let err = AllowedHosts::new(&[bad.to_owned()]).unwrap_err();
            assert!(err.to_string().contains("allowed_hosts"), "{bad}: {err}");
        }
    }
}
