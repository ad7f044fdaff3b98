//! Logging: `tracing` events to stderr (text or JSON, filtered by `RUST_LOG`), and the `log`
//! records of Pingora's crates bridged into them.
//!
//! What a client does to its own connection is not the server's error, but Pingora logs it at
//! ERROR: a TLS handshake that fails or times out (a scanner, a client that does not trust the
//! certificate), an HTTP/2 connection that never sends its preface, a request header cut off.
//! The bridge lowers exactly those records to DEBUG, so ERROR stays worth an operator's page.

use clawdeploy_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber and the `log` bridge; a second call changes nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // `finish` rather than `try_init`: that would install the plain `log` bridge.
    let installed = match format {
        LogFormat::Json => {
            tracing::subscriber::set_global_default(builder.json().flatten_event(true).finish())
        }
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
    };
    if installed.is_ok()
        && log::set_boxed_logger(Box::new(ClientNoiseAsDebug(tracing_log::LogTracer::new())))
            .is_ok()
    {
        log::set_max_level(tracing_log::AsLog::as_log(
            &tracing::level_filters::LevelFilter::current(),
        ));
    }
}

/// The `log` → `tracing` bridge, with Pingora's ERROR records about a client's own connection
/// passed on at DEBUG.
struct ClientNoiseAsDebug(tracing_log::LogTracer);

impl log::Log for ClientNoiseAsDebug {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() == log::Level::Error && is_client_noise(record) {
            let lowered = log::Record::builder()
                .level(log::Level::Debug)
                .target(record.target())
                .args(*record.args())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            self.0.log(&lowered);
        } else {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}

/// Pingora's messages (0.9.1) for a connection the client broke: `listening.rs`'s TLS handshake
/// error and timeout, `apps/mod.rs`'s HTTP/2 handshake error, `pingora-proxy`'s failed read of a
/// request header (its "downstream session type" form; errors while proxying read differently).
fn is_client_noise(record: &log::Record<'_>) -> bool {
    if !record.target().starts_with("pingora") {
        return false;
    }
    let message = record.args().to_string();
    message.starts_with("Downstream handshake ")
        || message.starts_with("H2 handshake error")
        || (message.starts_with("Fail to proxy: ") && message.contains("downstream session type"))
}
