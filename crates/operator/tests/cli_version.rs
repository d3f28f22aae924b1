//! The binary's `--version`, and its start-up log line on a pipe (no ANSI colour).

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_workerpool-operator");

#[test]
fn version_names_commit_build_date_and_compiler() {
    let out = Command::new(BIN)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(concat!("workerpool-operator ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for (i, key) in ["commit: ", "built: ", "rustc: "].iter().enumerate() {
        let line = lines.get(i + 1).copied().unwrap_or_default();
        assert!(
            line.starts_with(key) && line.len() > key.len(),
            "line {} is {line:?}:\n{text}",
            i + 1
        );
    }
    assert!(lines[3].starts_with("rustc: rustc "), "{text}");
    // -V stays one line.
    let short = Command::new(BIN).arg("-V").output().expect("run -V");
    assert_eq!(
        String::from_utf8_lossy(&short.stdout).trim(),
        concat!("workerpool-operator ", env!("CARGO_PKG_VERSION"))
    );
}

/// `run` with no reachable configuration: it logs its start-up line (text format, stderr a
/// pipe: no escape sequences), then fails to build a client.
#[test]
fn startup_line_is_plain_text_on_a_pipe() {
    let empty = std::env::temp_dir().join(format!("wpo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("temp dir");
    let out = Command::new(BIN)
        .args([
            "run",
            "--log-format",
            "text",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("HOME", &empty)
        .env("KUBECONFIG", empty.join("missing-kubeconfig"))
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&empty);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "run succeeded without a cluster:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("workerpool-operator starting"))
        .unwrap_or_else(|| panic!("no start-up line in:\n{log}"));
    for field in [
        concat!("version=\"", env!("CARGO_PKG_VERSION"), "\""),
        "commit=",
        "built=",
        "rustc=\"rustc ",
    ] {
        assert!(line.contains(field), "{field} not in {line:?}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape in a piped log:\n{log:?}"
    );
}
