//! `workerpool-operator crds`: every CRD as one multi-document YAML stream.

/// Every CRD as YAML documents separated by `---`.
pub fn yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in workerpool_api::all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// Prints [`yaml`] to stdout.
pub fn print() -> anyhow::Result<()> {
    write_stdout(&yaml()?)
}

/// Writes `text` to stdout; a closed pipe (`... | head`) is not an error.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
