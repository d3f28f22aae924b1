//! The `storm` command lines the operator runs in Jobs from the cluster's image.
//!
//! The REST API can neither submit a topology (that needs the user's JVM main class) nor
//! change its worker count (Storm 2.x ignores the rebalance body), so both run as `storm`
//! commands. Every command carries the cluster's Nimbus seeds as `-c` options, so that the
//! Job needs no storm.yaml of its own.
//!
//! How Storm 2.6–2.8's `bin/storm.py` reads these command lines (checked against its source):
//! - `-c key=value` is an option of each **subcommand** (`add_common_options(sub_parser)`), not
//!   of `storm` itself: `storm -c k=v jar ...` fails with `invalid choice: 'k=v'`. So the `-c`
//!   options come right after the subcommand, each as two arguments (`remove_common_options`
//!   only filters the two-argument form out of what it hands to Java).
//! - storm.py passes the `-c` values to Java as `-Dstorm.options=<url-encoded k=v,...>`;
//!   Storm's `Utils.readCommandLineOpts` parses each value as **JSON**, falling back to the
//!   plain string. So values are written as JSON (`nimbus.seeds=["a","b"]`, `k="text"`).
//! - `storm jar <jar> <mainClass> [args...]` parses the main class's arguments with argparse
//!   too: an argument that looks like a storm.py option (`-c`, `--config`, `--jars`, or an
//!   abbreviation such as `--conf`) would be taken by storm.py. A `--` after the main class
//!   ends storm.py's options; argparse drops it, so the main class never sees it.
//! - `storm rebalance <name> -w <secs> -n <workers>` hands `<name> -w <secs> -n <workers>` to
//!   `org.apache.storm.command.Rebalance` (commons-cli); `-w` must be ≥ 0 and `-n` ≥ 1.

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
    /// Topology configuration, passed as `-c key=<json>` (Storm parses the value as JSON and
    /// `StormSubmitter` merges it into the topology's configuration).
    pub config: &'a BTreeMap<String, serde_json::Value>,
    /// The cluster's Nimbus seeds.
    pub nimbus_seeds: &'a [String],
    /// How to reach the cluster's Nimbus beyond its seeds: its Thrift port and transport
    /// settings ([`is_client_setting`]), passed before the topology's own config.
    pub client_config: &'a BTreeMap<String, serde_json::Value>,
}

/// Whether a storm.yaml key tells a client how to reach Nimbus (port, Thrift transport, TLS,
/// timeouts, retries, the JAAS file), so that the Jobs must carry it: `nimbus.thrift.*`,
/// `storm.thrift.*`, `storm.nimbus.retry.*`, `java.security.auth.login.config`.
pub fn is_client_setting(key: &str) -> bool {
    ["nimbus.thrift.", "storm.thrift.", "storm.nimbus.retry."]
        .iter()
        .any(|p| key.starts_with(p))
        || key == "java.security.auth.login.config"
}

/// `-c` options of the Nimbus seeds (none when there are no seeds: then the image's
/// storm.yaml decides), of the client settings and of `config`, each value as JSON.
fn config_options(
    nimbus_seeds: &[String],
    client_config: &BTreeMap<String, serde_json::Value>,
    config: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    let mut out = Vec::with_capacity(2 * (client_config.len() + config.len() + 1));
    if !nimbus_seeds.is_empty() {
        out.push("-c".to_string());
        out.push(format!("nimbus.seeds={}", serde_json::json!(nimbus_seeds)));
    }
    for (key, value) in client_config.iter().chain(config) {
        out.push("-c".to_string());
        out.push(format!("{key}={value}"));
    }
    out
}

/// `storm jar -c nimbus.seeds=[...] [-c key=<json>...] <jar> <mainClass> -- <name> [args...]`.
///
/// The `-c` options follow the subcommand (storm.py has no global `-c`); the `--` keeps the
/// topology's own arguments away from storm.py's option parser, and storm.py drops it.
pub fn submit(s: &Submission<'_>) -> Vec<String> {
    let mut argv = vec!["storm".to_string(), "jar".to_string()];
    argv.extend(config_options(s.nimbus_seeds, s.client_config, s.config));
    argv.extend([
        s.jar_path.to_string(),
        s.main_class.to_string(),
        "--".to_string(),
        s.topology_name.to_string(),
    ]);
    argv.extend(s.args.iter().cloned());
    argv
}

/// `storm rebalance -c nimbus.seeds=[...] [-c <client setting>...] <name> -w <wait> -n <workers>` (by name: the CLI takes
/// the name, not the id).
///
/// `workers` must be at least 1 (storm.py rejects `-n 0`). Storm's `Rebalance` also sends the
/// `-c` options to Nimbus as topology configuration overrides, so the topology's
/// `nimbus.seeds` becomes the seeds given here (the cluster's own, so nothing changes).
pub fn rebalance(
    topology_name: &str,
    wait_secs: u32,
    workers: u32,
    nimbus_seeds: &[String],
    client_config: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    let mut argv = vec!["storm".to_string(), "rebalance".to_string()];
    argv.extend(config_options(
        nimbus_seeds,
        client_config,
        &BTreeMap::new(),
    ));
    argv.extend([
        topology_name.to_string(),
        "-w".to_string(),
        wait_secs.to_string(),
        "-n".to_string(),
        workers.to_string(),
    ]);
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn submit_puts_options_after_the_subcommand_and_args_after_a_double_dash() {
        let seeds = strings(&["storm-nimbus-0.storm-nimbus", "storm-nimbus-1.storm-nimbus"]);
        let args = strings(&["--input", "/data/in", "-c", "x"]);
        let mut config = BTreeMap::new();
        config.insert("topology.workers".to_string(), json!(3));
        config.insert("topology.debug".to_string(), json!(false));
        config.insert("topology.environment".to_string(), json!({"MODE": "a b,c"}));
        config.insert("topology.owner.note".to_string(), json!("plain text"));
        let argv = submit(&Submission {
            jar_path: "/app/topology.jar",
            main_class: "com.example.WordCount",
            topology_name: "wordcount",
            args: &args,
            config: &config,
            nimbus_seeds: &seeds,
            client_config: &BTreeMap::new(),
        });
        assert_eq!(
            argv,
            strings(&[
                "storm",
                "jar",
                "-c",
                r#"nimbus.seeds=["storm-nimbus-0.storm-nimbus","storm-nimbus-1.storm-nimbus"]"#,
                "-c",
                "topology.debug=false",
                "-c",
                r#"topology.environment={"MODE":"a b,c"}"#,
                "-c",
                r#"topology.owner.note="plain text""#,
                "-c",
                "topology.workers=3",
                "/app/topology.jar",
                "com.example.WordCount",
                "--",
                "wordcount",
                "--input",
                "/data/in",
                "-c",
                "x",
            ])
        );
    }

    #[test]
    fn submit_without_seeds_config_or_args() {
        let argv = submit(&Submission {
            jar_path: "/app/t.jar",
            main_class: "Main",
            topology_name: "wc",
            args: &[],
            config: &BTreeMap::new(),
            nimbus_seeds: &[],
            client_config: &BTreeMap::new(),
        });
        assert_eq!(
            argv,
            strings(&["storm", "jar", "/app/t.jar", "Main", "--", "wc"])
        );
    }

    #[test]
    fn rebalance_by_name_with_seeds_after_the_subcommand() {
        let argv = rebalance(
            "wordcount",
            30,
            2,
            &strings(&["nimbus-0", "nimbus-1"]),
            &BTreeMap::new(),
        );
        assert_eq!(
            argv,
            strings(&[
                "storm",
                "rebalance",
                "-c",
                r#"nimbus.seeds=["nimbus-0","nimbus-1"]"#,
                "wordcount",
                "-w",
                "30",
                "-n",
                "2",
            ])
        );
    }

    #[test]
    fn rebalance_without_seeds() {
        assert_eq!(
            rebalance("wc", 0, 1, &[], &BTreeMap::new()),
            strings(&["storm", "rebalance", "wc", "-w", "0", "-n", "1"])
        );
    }

    #[test]
    fn client_settings_come_after_the_seeds_in_both_commands() {
        let client = BTreeMap::from([
            ("nimbus.thrift.port".to_string(), json!(16627)),
            (
                "storm.thrift.transport".to_string(),
                json!("org.apache.storm.security.auth.plain.PlainSaslTransportPlugin"),
            ),
        ]);
        let seeds = strings(&["nimbus-a"]);
        let want = strings(&[
            "-c",
            r#"nimbus.seeds=["nimbus-a"]"#,
            "-c",
            "nimbus.thrift.port=16627",
            "-c",
            r#"storm.thrift.transport="org.apache.storm.security.auth.plain.PlainSaslTransportPlugin""#,
        ]);
        let jar = submit(&Submission {
            jar_path: "/jar/t.jar",
            main_class: "Main",
            topology_name: "wc",
            args: &[],
            config: &BTreeMap::new(),
            nimbus_seeds: &seeds,
            client_config: &client,
        });
        assert_eq!(jar[2..8], want[..]);
        let rebalance = rebalance("wc", 5, 2, &seeds, &client);
        assert_eq!(rebalance[2..8], want[..]);
        for (key, client) in [
            ("nimbus.thrift.port", true),
            ("nimbus.thrift.client.use.tls", true),
            ("storm.thrift.socket.timeout.ms", true),
            ("storm.nimbus.retry.times", true),
            ("java.security.auth.login.config", true),
            ("topology.workers", false),
            ("storm.zookeeper.port", false),
        ] {
            assert_eq!(is_client_setting(key), client, "{key}");
        }
    }
}
