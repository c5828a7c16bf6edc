//! Structured logging. A line about one message (`processed` at debug, `message rejected`
//! at warn) carries its `message_id` and `workflow_id`; at info the consumer logs counts
//! per second rather than a line per message.

pub mod repeats;
pub mod spans;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// lapin's own lines that repeat, louder and longer, what the service says itself:
/// every message the broker returns, at WARN with its whole body as decimal bytes (the
/// publisher reports a return, naming the routing key, when the condition starts and
/// ends); every channel the broker closes, at ERROR (the caller gets the error and
/// says what it means, e.g. a queue declared with other arguments, used as found).
/// Each applies unless the filter names its target.
const LAPIN_QUIET: &[(&str, &str)] = &[
    ("lapin::returned_messages", "error"),
    ("lapin::channel", "off"),
];

/// Installs the global subscriber; `RUST_LOG` overrides `log.filter`. Logs go to stderr
/// so command output on stdout stays clean.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let named = filter.to_string();
    let filter = LAPIN_QUIET
        .iter()
        .filter(|(target, _)| !named.contains(target))
        .filter_map(|(target, level)| format!("{target}={level}").parse().ok())
        .fold(filter, |f, quiet| f.add_directive(quiet));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never in files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// An error and its causes on one line, `outer: cause: root`, each said once: a cause
/// whose text the level above already includes (sqlx's `error returned from database:
/// X` over `X`, `Connection refused` over `Connection refused`) is left out.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut said = e.to_string();
    let mut above = said.clone();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !above.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        above = text;
        cause = inner.source();
    }
    said
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Level {
        text: &'static str,
        #[source]
        source: Option<Box<Level>>,
    }

    fn chain_of(texts: &[&'static str]) -> Level {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Level {
                    text,
                    source: source.map(Box::new),
                })
            })
            .expect("at least one level")
    }

    #[test]
    fn a_cause_the_level_above_already_says_is_said_once() {
        let e = chain_of(&[
            "could not apply migrations",
            "while executing migrations: error returned from database: database \"x\" does not exist",
            "error returned from database: database \"x\" does not exist",
            "database \"x\" does not exist",
        ]);
        assert_eq!(
            error_chain(&e),
            "could not apply migrations: while executing migrations: error returned from database: database \"x\" does not exist"
        );
        let e = chain_of(&[
            "could not connect to PostgreSQL at 127.0.0.1:1/x (database.url)",
            "error communicating with database: Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            error_chain(&e),
            "could not connect to PostgreSQL at 127.0.0.1:1/x (database.url): error communicating with database: Connection refused (os error 111)"
        );
    }

    #[test]
    fn causes_that_add_something_are_all_said() {
        let e = chain_of(&[
            "could not declare queue q",
            "channel closed",
            "broker went away",
        ]);
        assert_eq!(
            error_chain(&e),
            "could not declare queue q: channel closed: broker went away"
        );
    }
}
