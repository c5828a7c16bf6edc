//! Trace context on the wire (docs/protocol.md, "Tracing"): the W3C Trace Context
//! `traceparent` AMQP header and the envelope's `header.tracing`, which carry the same
//! two ids. Plain data and text, no OpenTelemetry types: an agent reads and writes
//! them with whatever tracing library it uses.

use crate::envelope::Tracing;

/// The AMQP header that carries a W3C `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A span's place in a trace: the ids a child span names as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl SpanContext {
    /// A context with valid ids (W3C: neither all zeros), else `None`.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8]) -> Option<SpanContext> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(SpanContext { trace_id, span_id })
    }

    /// Reads a `traceparent` value (W3C Trace Context, level 1): `00-<32 hex>-<16 hex>-<2
    /// hex>`. A later version is read by its first four fields, as the recommendation
    /// asks; version `ff`, upper-case hex, all-zero ids or a malformed value are `None`
    /// (the message is then taken as carrying no context).
    pub fn from_traceparent(value: &str) -> Option<SpanContext> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" || flags.len() != 2 {
            return None;
        }
        // Version 00 has exactly four fields; a later one may add more after a dash.
        if version == "00" && rest.is_some() {
            return None;
        }
        if !is_lower_hex(flags) {
            return None;
        }
        SpanContext::new(hex16(trace)?, hex8(span)?)
    }

    /// Reads `header.tracing`: its `trace_id` and `span_id` (the span that sent the
    /// message), each lower- or upper-case hex of the W3C lengths.
    pub fn from_header(tracing: &Tracing) -> Option<SpanContext> {
        let trace = hex16(&tracing.trace_id.as_deref()?.to_ascii_lowercase())?;
        let span = hex8(&tracing.span_id.as_deref()?.to_ascii_lowercase())?;
        SpanContext::new(trace, span)
    }

    /// The context a delivery carries: its `traceparent` header if it is valid, else its
    /// envelope's `header.tracing`.
    pub fn of_delivery(
        traceparent: Option<&str>,
        tracing: Option<&Tracing>,
    ) -> Option<SpanContext> {
        traceparent
            .and_then(SpanContext::from_traceparent)
            .or_else(|| tracing.and_then(SpanContext::from_header))
    }

    /// The `traceparent` value naming this span as the parent, sampled.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id_hex(), self.span_id_hex())
    }

    /// `header.tracing` for a message this span sends, naming its own parent if it has one.
    pub fn header(&self, parent: Option<[u8; 8]>) -> Tracing {
        Tracing {
            trace_id: Some(self.trace_id_hex()),
            span_id: Some(self.span_id_hex()),
            parent_span_id: parent.map(hex),
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(self.span_id)
    }
}

fn hex<const N: usize>(bytes: [u8; N]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(2 * N), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    hex_bytes(s)
}

fn hex8(s: &str) -> Option<[u8; 8]> {
    hex_bytes(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn a_traceparent_is_read_and_written_back_the_same() {
        let v = format!("00-{TRACE}-{SPAN}-01");
        let c = SpanContext::from_traceparent(&v).expect("valid");
        assert_eq!(c.trace_id_hex(), TRACE);
        assert_eq!(c.span_id_hex(), SPAN);
        assert_eq!(c.traceparent(), v);
        // Not sampled by the sender: still a parent.
        assert!(SpanContext::from_traceparent(&format!("00-{TRACE}-{SPAN}-00")).is_some());
    }

    #[test]
    fn a_malformed_traceparent_carries_no_context() {
        for bad in [
            String::new(),
            "garbage".into(),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("0-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-1"),
        ] {
            assert_eq!(SpanContext::from_traceparent(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let c =
            SpanContext::from_traceparent(&format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds"));
        assert_eq!(c.map(|c| c.span_id_hex()), Some(SPAN.to_string()));
    }

    #[test]
    fn the_header_is_read_when_the_amqp_header_is_absent_or_invalid() {
        let header = Tracing {
            trace_id: Some(TRACE.to_uppercase()),
            span_id: Some(SPAN.into()),
            parent_span_id: None,
        };
        let other = format!("00-{}-{SPAN}-01", "1".repeat(32));
        let from_amqp = SpanContext::of_delivery(Some(&other), Some(&header)).expect("valid");
        assert_eq!(from_amqp.trace_id_hex(), "1".repeat(32));
        let from_header = SpanContext::of_delivery(Some("bad"), Some(&header)).expect("valid");
        assert_eq!(from_header.trace_id_hex(), TRACE);
        assert_eq!(SpanContext::of_delivery(None, None), None);
        let partial = Tracing {
            trace_id: Some(TRACE.into()),
            ..Tracing::default()
        };
        assert_eq!(SpanContext::from_header(&partial), None);
    }

    #[test]
    fn what_a_span_sends_names_it_and_its_parent() {
        let c = SpanContext::from_traceparent(&format!("00-{TRACE}-{SPAN}-01")).expect("valid");
        let h = c.header(Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(h.trace_id.as_deref(), Some(TRACE));
        assert_eq!(h.span_id.as_deref(), Some(SPAN));
        assert_eq!(h.parent_span_id.as_deref(), Some("0102030405060708"));
    }
}
