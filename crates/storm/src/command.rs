//! The `storm` command lines the operator runs in Jobs from the cluster's image.
//!
//! The REST API can neither submit a topology (that needs the user's JVM main class) nor
//! change its worker count (Storm 2.x ignores the rebalance body), so both run as `storm`
//! commands. Every command carries the cluster's Nimbus seeds as `-c` options, so that the
//! Job needs no storm.yaml of its own.

use std::collections::BTreeMap;

/// What `storm jar` needs to submit a topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission<'a> {
    /// Path of the jar inside the Job's container.
    pub jar_path: &'a str,
    /// The main class that builds and submits the topology.
    pub main_class: &'a str,
    /// The topology's name in Storm (the first argument of the main class).
    pub topology_name: &'a str,
    /// Further arguments of the main class.
    pub args: &'a [String],
    /// Topology configuration, passed as `-c key=<json>` (Storm reads the value as YAML).
    pub config: &'a BTreeMap<String, serde_json::Value>,
    /// The cluster's Nimbus seeds.
    pub nimbus_seeds: &'a [String],
}

/// `-c` options of the Nimbus seeds and `config`.
fn config_options(
    nimbus_seeds: &[String],
    config: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    let mut out = vec![
        "-c".to_string(),
        format!("nimbus.seeds={}", serde_json::json!(nimbus_seeds)),
    ];
    for (key, value) in config {
        out.push("-c".into());
        out.push(format!("{key}={value}"));
    }
    out
}

/// `storm jar <jar> <mainClass> <name> [args...]` with the seeds and config as `-c` options.
pub fn submit(s: &Submission<'_>) -> Vec<String> {
    let mut argv = vec!["storm".to_string()];
    argv.extend(config_options(s.nimbus_seeds, s.config));
    argv.extend([
        "jar".to_string(),
        s.jar_path.to_string(),
        s.main_class.to_string(),
        s.topology_name.to_string(),
    ]);
    argv.extend(s.args.iter().cloned());
    argv
}

/// `storm rebalance <name> -w <wait> -n <workers>` (by name: the CLI takes the name, not the id).
pub fn rebalance(
    topology_name: &str,
    wait_secs: u32,
    workers: u32,
    nimbus_seeds: &[String],
) -> Vec<String> {
    let mut argv = vec!["storm".to_string()];
    argv.extend(config_options(nimbus_seeds, &BTreeMap::new()));
    argv.extend([
        "rebalance".to_string(),
        topology_name.to_string(),
        "-w".into(),
        wait_secs.to_string(),
        "-n".into(),
        workers.to_string(),
    ]);
    argv
}
