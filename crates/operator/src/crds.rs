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
    print!("{}", yaml()?);
    Ok(())
}
