//! The subscriber: fmt + env filter always, an OpenTelemetry layer only when an exporter is
//! configured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const DEFAULT_FILTER: &str = "info,sqlx=warn,rdkafka=warn";

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Whether spans go to an exporter in this process. False: no OTel layer was installed, and
/// the trace helpers do nothing.
#[cfg(not(telemetry_compiled_out))]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// For measurement only (`RUSTFLAGS="--cfg telemetry_compiled_out"`, see bench/PROFILE.md,
/// "tracing off"): a build without the tracing instrumentation, to compare the normal build
/// with tracing off against. `enabled()` is constant false and inlined, so every span and
/// trace-header site folds away; no exporter is ever installed. Never ship this build.
#[cfg(telemetry_compiled_out)]
#[inline(always)]
pub const fn enabled() -> bool {
    false
}

/// Where spans go, as chosen by the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exporter {
    /// `OTEL_EXPORTER_ZIPKIN_ENDPOINT`, e.g. `http://127.0.0.1:9411/api/v2/spans`.
    Zipkin(String),
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (`/v1/traces` appended), OTLP over HTTP/protobuf.
    Otlp,
}

impl Exporter {
    /// The exporter the environment names; Zipkin wins when both are set. Empty values count
    /// as unset.
    pub fn from_env() -> Option<Self> {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(endpoint) = set("OTEL_EXPORTER_ZIPKIN_ENDPOINT") {
            return Some(Exporter::Zipkin(endpoint));
        }
        if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        {
            return Some(Exporter::Otlp);
        }
        None
    }
}

/// Flushes and shuts the tracer provider down when dropped (end of `main`). Holds nothing
/// when tracing is off or the subscriber was already installed.
#[must_use = "spans still buffered are lost when the guard is dropped early"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        ENABLED.store(false, Ordering::Relaxed);
        let global = PROVIDER.lock().unwrap_or_else(|e| e.into_inner()).take();
        // On a thread of its own: the exporter's blocking HTTP client owns a runtime, which
        // must not be dropped inside the async `main` (or test) this guard usually ends.
        let shutdown = std::thread::spawn(move || {
            let result = provider.shutdown();
            drop(global);
            result
        });
        match shutdown.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("telemetry: flushing spans failed: {e}"),
            Err(_) => eprintln!("telemetry: flushing spans panicked"),
        }
    }
}

/// Installs logging (`RUST_LOG`, default `info,sqlx=warn,rdkafka=warn`, to stderr), the
/// Prometheus recorder (every metric labelled `service=<service_name>`), and, when
/// [`Exporter::from_env`] names one, an OpenTelemetry layer exporting spans as
/// `service_name`. A second call in one process (several services in one test) changes
/// nothing and returns an empty guard.
///
/// `RUST_LOG` filters logs only: the exported spans are those at INFO and above (except
/// `sqlx`, `rdkafka` and the HTTP client crates), whatever is logged.
///
/// An exporter that cannot be built (a malformed endpoint) is reported on stderr and tracing
/// stays off: telemetry never stops a service from starting.
pub fn init(service_name: &str) -> Guard {
    init_with(service_name, Exporter::from_env())
}

/// [`init`] with the exporter given instead of read from the environment (`None`: off).
pub fn init_with(service_name: &str, exporter: Option<Exporter>) -> Guard {
    prometheus::install(service_name);
    // The measurement-only build without tracing (see [`enabled`]) never exports.
    let exporter = exporter.filter(|_| !cfg!(telemetry_compiled_out));
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(true)
        .with_writer(std::io::stderr)
        .with_filter(Fresh(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
        ));
    // On a thread of its own: the exporters' blocking HTTP clients start a runtime of their
    // own, which cannot be done (nor dropped) inside the async `main` that usually calls this.
    let built = exporter.map(|exporter| {
        let service = service_name.to_owned();
        std::thread::spawn(move || provider(&exporter, &service))
            .join()
            .unwrap_or_else(|_| Err("building the exporter panicked".to_owned()))
    });
    let provider = match built {
        Some(Ok(provider)) => Some(provider),
        Some(Err(e)) => {
            eprintln!("telemetry: tracing stays off: {e}");
            None
        }
        None => None,
    };
    let Some(provider) = provider else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Guard { provider: None };
    };
    let tracer = provider.tracer(service_name.to_owned());
    let spans = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_targets([
            ("sqlx", LevelFilter::WARN),
            ("rdkafka", LevelFilter::WARN),
            ("hyper", LevelFilter::OFF),
            ("hyper_util", LevelFilter::OFF),
            ("reqwest", LevelFilter::OFF),
            ("h2", LevelFilter::OFF),
        ]);
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Fresh(spans)),
        )
        .try_init()
        .is_ok();
    if !installed {
        let _ = provider.shutdown();
        return Guard { provider: None };
    }
    ENABLED.store(true, Ordering::Relaxed);
    *PROVIDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(provider.clone());
    Guard {
        provider: Some(provider),
    }
}

/// A per-layer filter whose decision is taken again at every span and event
/// (tokio-rs/tracing#2519).
///
/// A per-layer filter hands its decision from `enabled` to `on_event` through a thread-local;
/// a callsite cached as "always" skips `enabled` and reads whatever the previous call left
/// there. The `log` bridge asks `enabled` with metadata of its own (sqlx's query logger does
/// after every query), so with a `RUST_LOG` that enables debug for some target but not for
/// `sqlx`, the event after a query was dropped: the relay's logs, warnings included,
/// disappeared. Reporting "sometimes" for every callsite the filter does not rule out makes
/// `enabled` run every time; the global level hint still stops what no layer wants.
struct Fresh<F>(F);

impl<S, F> Filter<S> for Fresh<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Filter<S>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.0.callsite_enabled(meta).is_never() {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: Context<'_, S>,
    ) {
        self.0.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: tracing::span::Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx);
    }
}

/// Exports what is buffered now (tests, before asking the trace store).
pub fn flush() {
    if let Some(provider) = PROVIDER.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let _ = provider.force_flush();
    }
}

fn provider(exporter: &Exporter, service_name: &str) -> Result<SdkTracerProvider, String> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let builder = match exporter {
        Exporter::Zipkin(endpoint) => {
            builder.with_batch_exporter(ZipkinExporter::new(endpoint, service_name)?)
        }
        Exporter::Otlp => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| format!("OTLP exporter: {e}"))?;
            builder.with_batch_exporter(exporter)
        }
    };
    Ok(builder.build())
}

use crate::prometheus;
use crate::zipkin::ZipkinExporter;

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{EnvFilter, Layer};

    use super::Fresh;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The only test in this crate's unit tests that installs a subscriber, and it installs
    /// it globally: the bug needs callsites cached as "always", which a scoped subscriber
    /// (`with_default`) never lets them be. (Without `Fresh`, "after the query" is lost.)
    #[test]
    fn an_event_after_a_log_enabled_query_is_still_logged() {
        tracing_log::LogTracer::init().unwrap();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            // Debug for one target only, sqlx not among them.
            .with_filter(Fresh(EnvFilter::new("info,nothing=debug")));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(fmt)).unwrap();
        for n in 0..3 {
            tracing::info!(n, "before the query");
            // What sqlx's query logger asks after every statement, through the log bridge.
            let query = log::Metadata::builder()
                .level(log::Level::Debug)
                .target("sqlx::query")
                .build();
            // (It answers true: per-layer filters decide at the event, not here.)
            let _ = log::logger().enabled(&query);
            tracing::info!(n, "after the query");
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("before the query").count(), 3, "{text}");
        assert_eq!(text.matches("after the query").count(), 3, "{text}");
    }
}
