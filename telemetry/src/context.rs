//! W3C trace context (`traceparent`, `tracestate`) as plain strings: taken from the current
//! span, stored with an outbox row, written to and read from Kafka record headers, and made
//! the parent of a span in another process.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// A span's W3C trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    /// Empty `tracestate` is kept as `None`.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The current span's context; `None` when tracing is off or no span is sampled.
    #[cfg_attr(telemetry_compiled_out, inline(always))]
    pub fn current() -> Option<Self> {
        if !crate::enabled() {
            return None;
        }
        Self::of_span(&tracing::Span::current())
    }

    /// `span`'s context; `None` when tracing is off or the span is not sampled.
    #[cfg_attr(telemetry_compiled_out, inline(always))]
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if !crate::enabled() {
            return None;
        }
        Self::of_context(&span.context())
    }

    /// The context's span as a `traceparent`, if it has a valid one.
    pub fn of_context(cx: &Context) -> Option<Self> {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        Some(Self {
            traceparent: carrier.traceparent?,
            tracestate: carrier.tracestate.filter(|s| !s.is_empty()),
        })
    }

    /// From stored columns; `None` without a `traceparent`.
    pub fn from_parts(traceparent: Option<String>, tracestate: Option<String>) -> Option<Self> {
        Some(Self {
            traceparent: traceparent.filter(|t| !t.is_empty())?,
            tracestate: tracestate.filter(|s| !s.is_empty()),
        })
    }

    /// From a record's headers; `None` when it has no well-formed `traceparent`.
    pub fn from_headers<H: Headers>(headers: &H) -> Option<Self> {
        let extractor = HeaderExtractor(headers);
        let traceparent = extractor.get(TRACEPARENT)?.to_owned();
        let tracestate = extractor.get(TRACESTATE).map(str::to_owned);
        let parsed = Self {
            traceparent,
            tracestate,
        };
        parsed
            .to_context()
            .span()
            .span_context()
            .is_valid()
            .then_some(parsed)
    }

    /// An OpenTelemetry context whose (remote) span is this one: a span's parent.
    pub fn to_context(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }

    /// `headers` plus `traceparent` (and `tracestate`, when there is one).
    pub fn insert_into(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let headers = headers.insert(Header {
            key: TRACEPARENT,
            value: Some(self.traceparent.as_bytes()),
        });
        match &self.tracestate {
            Some(state) => headers.insert(Header {
                key: TRACESTATE,
                value: Some(state.as_bytes()),
            }),
            None => headers,
        }
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.traceparent),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[derive(Default)]
struct Carrier {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// An OpenTelemetry [`Injector`] over rdkafka's builder-style [`OwnedHeaders`]: inject with
/// any propagator, then [`HeaderInjector::into_headers`].
pub struct HeaderInjector {
    headers: Option<OwnedHeaders>,
}

impl HeaderInjector {
    pub fn new(headers: OwnedHeaders) -> Self {
        Self {
            headers: Some(headers),
        }
    }

    pub fn into_headers(mut self) -> OwnedHeaders {
        self.headers.take().unwrap_or_default()
    }
}

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        let headers = self.headers.take().unwrap_or_default();
        self.headers = Some(headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        }));
    }
}

/// An OpenTelemetry [`Extractor`] over any rdkafka [`Headers`] (a consumed record's borrowed
/// headers, or owned ones). Values that are not UTF-8 count as absent.
pub struct HeaderExtractor<'h, H: Headers>(pub &'h H);

impl<H: Headers> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn headers_round_trip() {
        let trace = TraceContext {
            traceparent: PARENT.to_owned(),
            tracestate: Some("congo=t61rcWkgMzE".to_owned()),
        };
        let headers = trace.insert_into(OwnedHeaders::new().insert(Header {
            key: "event-id",
            value: Some("x"),
        }));
        assert_eq!(headers.count(), 3);
        assert_eq!(TraceContext::from_headers(&headers), Some(trace.clone()));
        let cx = trace.to_context();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(TraceContext::of_context(&cx), Some(trace));
    }

    #[test]
    fn injector_over_owned_headers() {
        let trace = TraceContext::from_parts(Some(PARENT.to_owned()), None).unwrap();
        let mut injector = HeaderInjector::new(OwnedHeaders::new());
        TraceContextPropagator::new().inject_context(&trace.to_context(), &mut injector);
        let headers = injector.into_headers();
        assert_eq!(
            HeaderExtractor(&headers).get(TRACEPARENT),
            Some(PARENT),
            "{:?}",
            HeaderExtractor(&headers).keys()
        );
    }

    #[test]
    fn malformed_or_missing_is_none() {
        let headers = OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some("not-a-traceparent"),
        });
        assert_eq!(TraceContext::from_headers(&headers), None);
        assert_eq!(TraceContext::from_headers(&OwnedHeaders::new()), None);
        assert_eq!(TraceContext::from_parts(Some(String::new()), None), None);
    }
}
