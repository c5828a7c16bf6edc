//! A URL that may hold a password (`database.url`, `amqp.url`): its `Debug` and
//! `Display` show it with the password replaced by `***`, so a settings dump, a log
//! line or an error message that names it cannot leak the password. [`SecretUrl::expose`]
//! is the one way to the real text, used where a connection is made.

use std::fmt;

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL as written, password and all: for opening connections only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password of its authority and any `password=` query parameter
    /// replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = self.0.as_str();
        let Some((scheme, rest)) = url.split_once("://") else {
            return redact_query(url);
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => authority.to_string(),
            },
            None => authority.to_string(),
        };
        format!("{scheme}://{authority}{}", redact_query(tail))
    }
}

/// `password=…` (and `sslpassword=…`) in a query string as `password=***`.
fn redact_query(s: &str) -> String {
    let Some((path, query)) = s.split_once('?') else {
        return s.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.to_ascii_lowercase().ends_with("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_string())
    }
}

/// A secret that is not a URL (a private key): shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_the_authority_is_hidden_and_the_rest_kept() {
        let u =
            SecretUrl::from("amqps://coordinator:s3cr%2Ft@broker.example:5671/prod?heartbeat=10");
        assert_eq!(
            u.redacted(),
            "amqps://coordinator:***@broker.example:5671/prod?heartbeat=10"
        );
        assert!(!format!("{u:?} {u}").contains("s3cr"));
        assert_eq!(
            u.expose(),
            "amqps://coordinator:s3cr%2Ft@broker.example:5671/prod?heartbeat=10"
        );
    }

    #[test]
    fn a_password_in_the_query_is_hidden_too() {
        let u = SecretUrl::from(
            "postgres://db.example/coordinator?user=app&password=hunter2&sslmode=verify-full",
        );
        assert_eq!(
            u.to_string(),
            "postgres://db.example/coordinator?user=app&password=***&sslmode=verify-full"
        );
    }

    #[test]
    fn a_url_without_a_password_is_shown_as_it_is() {
        for s in [
            "postgres://postgres@127.0.0.1:5432/coordinator",
            "http://127.0.0.1:15672",
            "amqp://127.0.0.1",
        ] {
            assert_eq!(SecretUrl::from(s).to_string(), s);
        }
    }
}
