//! What this binary is: its version, the git commit and date of its build, and the compiler
//! that made it (captured by `build.rs`). Shown by `workerpool-operator --version`, logged at
//! start-up and exported as the `workerpool_operator_build_info` gauge.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The crate's version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit of the build (12 hex digits), or `unknown` when built outside git without
/// `WPO_BUILD_COMMIT`.
pub const COMMIT: &str = env!("WPO_BUILD_COMMIT");
/// When the binary was built (`SOURCE_DATE_EPOCH` when set), `YYYY-MM-DDTHH:MM:SSZ`.
pub const BUILD_DATE: &str = env!("WPO_BUILD_DATE");
/// `rustc --version` of the compiler that built it.
pub const RUSTC: &str = env!("WPO_BUILD_RUSTC");
/// The text after the program name in `workerpool-operator --version`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("WPO_BUILD_COMMIT"),
    "\nbuilt: ",
    env!("WPO_BUILD_DATE"),
    "\nrustc: ",
    env!("WPO_BUILD_RUSTC"),
);

/// Logs the start-up line that names the build.
pub fn log_start() {
    tracing::info!(
        version = VERSION,
        commit = COMMIT,
        built = BUILD_DATE,
        rustc = RUSTC,
        "workerpool-operator starting"
    );
}

/// Labels of `workerpool_operator_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfoLabels {
    /// [`VERSION`].
    pub version: &'static str,
    /// [`COMMIT`].
    pub commit: &'static str,
    /// [`RUSTC`].
    pub rustc: &'static str,
}

/// Registers `workerpool_operator_build_info` (always 1, the build in its labels).
pub fn register(registry: &mut Registry) {
    let family = Family::<BuildInfoLabels, Gauge>::default();
    family
        .get_or_create(&BuildInfoLabels {
            version: VERSION,
            commit: COMMIT,
            rustc: RUSTC,
        })
        .set(1);
    registry.register(
        "workerpool_operator_build_info",
        "The operator's build: version, git commit and compiler (value 1)",
        family,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_gauge_names_the_build() {
        let mut registry = Registry::default();
        register(&mut registry);
        let text = crate::metrics::encode(&registry).expect("encode");
        let line = format!(
            "workerpool_operator_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\",rustc=\"{RUSTC}\"}} 1"
        );
        assert!(text.contains(&line), "{line} not in:\n{text}");
        assert!(text.contains("# TYPE workerpool_operator_build_info gauge"));
    }

    #[test]
    fn build_details_are_captured() {
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() >= 7 && COMMIT.chars().all(|c| c.is_ascii_hexdigit())),
            "{COMMIT}"
        );
        assert!(RUSTC.starts_with("rustc ") || RUSTC == "unknown", "{RUSTC}");
        // YYYY-MM-DDTHH:MM:SSZ
        assert_eq!(BUILD_DATE.len(), 20, "{BUILD_DATE}");
        assert!(BUILD_DATE.ends_with('Z') && BUILD_DATE.as_bytes()[10] == b'T');
        assert!(LONG_VERSION.starts_with(VERSION));
        assert!(LONG_VERSION.contains(COMMIT) && LONG_VERSION.contains(BUILD_DATE));
    }
}
