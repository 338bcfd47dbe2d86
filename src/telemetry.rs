//! Tracing set-up shared by every binary: `RUST_LOG` filters (default `info`), human or JSON
//! output on stderr, and a filter that can be changed at run time (the manhole's `loglevel`).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// How log lines are written.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

static FILTER: OnceLock<(
    reload::Handle<EnvFilter, Registry>,
    std::sync::Mutex<String>,
)> = OnceLock::new();

/// Installs the global subscriber. Call once, first thing in `main`; later calls do nothing.
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set((handle, std::sync::Mutex::new(directives)));
    }
}

/// Replaces the log filter (`RUST_LOG` syntax, e.g. `debug` or `info,switchyard_agent=trace`).
pub fn set_filter(directives: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("invalid filter: {e}"))?;
    let (handle, current) = FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    *current.lock().unwrap_or_else(|p| p.into_inner()) = directives.to_owned();
    Ok(())
}

/// The log filter in effect.
pub fn current_filter() -> String {
    FILTER.get().map_or_else(
        || "unset".to_owned(),
        |(_, current)| current.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    )
}
