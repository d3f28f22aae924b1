//! Captures what `workerpool-operator --version`, the start-up log line and the
//! `workerpool_operator_build_info` gauge report (src/build_info.rs): the git commit, the build
//! date and the compiler's version.
//!
//! Works without git and without a `.git` (a source tarball): the commit is then
//! `WPO_BUILD_COMMIT` if set (scripts/image sets it), else `unknown`. The date is
//! `SOURCE_DATE_EPOCH` if set (reproducible builds), else the time of this script's run; the
//! script runs again when the checked-out commit changes, not on every edit.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn git(args: &[&str]) -> Option<String> {
    let mut all = vec!["-C", env!("CARGO_MANIFEST_DIR")];
    all.extend_from_slice(args);
    output("git", &all)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (proleptic Gregorian calendar, UTC).
fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

fn main() {
    println!("cargo:rerun-if-env-changed=WPO_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");

    let commit = std::env::var("WPO_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Run again when HEAD moves: HEAD itself (a checkout) and the branch it points to (a commit).
    for path in [
        Some("HEAD".to_string()),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(file) = git(&["rev-parse", "--path-format=absolute", "--git-path", &path])
            && PathBuf::from(&file).exists()
        {
            println!("cargo:rerun-if-changed={file}");
        }
    }

    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());

    symbol_order(&rustc_version);
    println!("cargo:rustc-env=WPO_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=WPO_BUILD_DATE={}", utc(epoch));
    println!("cargo:rustc-env=WPO_BUILD_RUSTC={rustc_version}");
}

/// Places the functions a resting operator runs (`symbol-order.txt`, written by
/// `scripts/symbol-order.py` from a profile; docs/performance.md) first in the release
/// binary's code, so that they share a few pages: scattered over the whole executable, they
/// kept three times as many code pages resident. Only where the linker is LLVM's lld, the
/// default of `x86_64-unknown-linux-gnu` since Rust 1.90 (`WPO_NO_SYMBOL_ORDER=1` turns it
/// off for another linker); a symbol the build does not have is skipped.
fn symbol_order(rustc_version: &str) {
    println!("cargo:rerun-if-env-changed=WPO_NO_SYMBOL_ORDER");
    let order = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    let minor = rustc_version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    let lld_by_default = std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && minor.is_some_and(|m| m >= 90);
    if lld_by_default
        && std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var_os("WPO_NO_SYMBOL_ORDER").is_none()
        && order.exists()
    {
        for arg in [
            format!("-Wl,--symbol-ordering-file={}", order.display()),
            "-Wl,--no-warn-symbol-ordering".to_string(),
        ] {
            println!("cargo:rustc-link-arg-bin=workerpool-operator={arg}");
        }
    }
}
