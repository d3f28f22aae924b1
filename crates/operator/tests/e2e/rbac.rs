//! Least privilege, checked: the chart's RBAC rules against the API calls the operator really
//! made during the suite.
//!
//! Every operator the harness starts runs with `--record-api-calls target/e2e-logs/<log>.calls`
//! (see `workerpool_operator::api_calls`): one line per distinct call, `VERB GROUP RESOURCE
//! SCOPE`. The last test of the suite, `zz_rbac_matches_recorded_calls`, waits until the
//! scenarios of its process have ended (namespaces gone, operators stopped), renders the chart
//! with `scripts/helm template`, and fails when
//!
//! - a recorded call is not granted by the chart (a missing permission: the operator would get
//!   403 Forbidden under the chart's ServiceAccount), or
//! - a granted verb was never recorded and is not in [`UNRECORDED`] (an excess permission:
//!   remove it from `charts/workerpool-operator/templates/rbac.yaml`, or justify it there).
//!
//! It needs every scenario (storm, qworker, recovery) to have run in the same process, so it
//! skips, saying why, on a filtered run or without a cluster. To check recordings of an earlier
//! run instead: `WPO_E2E_CALLS=target/e2e-logs/<ns>.calls:... scripts/e2e zz_rbac` (files or
//! directories of `*.calls`, separated by `:`).
//!
//! A second proof, opt-in: with `WPO_E2E_CHART_RBAC=1` every scenario's operator runs as the
//! chart's own ServiceAccount, with only the chart's RBAC: the chart is rendered with its
//! default values (cluster-wide) as release `<ns>` in namespace `<ns>`, its ServiceAccount,
//! ClusterRole, ClusterRoleBinding and leader-election Role and RoleBinding are applied, and
//! the operator impersonates `system:serviceaccount:<ns>:<ns>` (kube-rs's
//! `KUBE_RS_DEBUG_IMPERSONATE_USER`), so a missing permission fails the scenario with 403s.
//! The ClusterRole and ClusterRoleBinding are owned by the scenario's Namespace, so they outlive
//! the namespace's teardown (the operator still releases finalizers then) and are garbage
//! collected after it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use workerpool_operator::api_calls::ApiCall;

/// The scenarios whose calls together must cover every granted verb.
pub const SCENARIOS: [&str; 3] = ["storm", "qworker", "recovery"];

/// Granted verbs that the suite cannot make the operator use, each with the reason. Keep this
/// list short: a verb the code never uses must leave the chart instead.
pub const UNRECORDED: &[(&str, &str, &str, &str)] = &[(
    "storm.apache.org",
    "stormclusters",
    "get",
    "a pool reads its cluster from the watch cache and GETs it only when the cache does not \
         hold it yet (stormworkerpool_reconcile's tests cover the read)",
)];

/// An operator the harness started, for the check at the end of the suite.
struct Recording {
    namespace: String,
    file: PathBuf,
    pid: u32,
}

static RECORDINGS: Mutex<Vec<Recording>> = Mutex::new(Vec::new());

/// The file of the calls of the operator whose log is `log`: `<log without .log>.calls`.
pub fn calls_file(log: &Path) -> PathBuf {
    log.with_extension("calls")
}

/// Remembers an operator process started for a scenario namespace (`wpo-e2e-<scenario>-...`);
/// other namespaces (the self-check's) are not part of the check.
pub fn register(namespace: &str, file: &Path, pid: u32) {
    if scenario_of(namespace).is_none() {
        return;
    }
    let mut all = RECORDINGS.lock().unwrap_or_else(|p| p.into_inner());
    all.push(Recording {
        namespace: namespace.to_string(),
        file: file.to_path_buf(),
        pid,
    });
}

/// `storm` for `wpo-e2e-storm-x1y2z3`.
fn scenario_of(namespace: &str) -> Option<&str> {
    let rest = namespace.strip_prefix("wpo-e2e-")?;
    rest.rsplit_once('-').map(|(scenario, _)| scenario)
}

/// (group, resource) → verbs.
pub type Rules = BTreeMap<(String, String), BTreeSet<String>>;

/// What the chart grants: the operator's ClusterRole (any scope) and the leader-election Role
/// (inside its namespace only).
#[derive(Debug, Default)]
pub struct Grants {
    /// Rules of the ClusterRole.
    pub cluster: Rules,
    /// Rules of the leader-election Role.
    pub lease: Rules,
}

impl Grants {
    fn allows(&self, verb: &str, group: &str, resource: &str, namespaced: bool) -> bool {
        let key = (group.to_string(), resource.to_string());
        let has = |rules: &Rules| rules.get(&key).is_some_and(|v| v.contains(verb));
        has(&self.cluster) || (namespaced && has(&self.lease))
    }

    fn all(&self) -> BTreeSet<(String, String, String)> {
        self.cluster
            .iter()
            .chain(&self.lease)
            .flat_map(|((g, r), verbs)| verbs.iter().map(|v| (g.clone(), r.clone(), v.clone())))
            .collect()
    }
}

/// Non-resource URLs every authenticated user may GET (the `system:discovery` and
/// `system:public-info-viewer` ClusterRoles), so no chart rule is needed for them.
fn discovery(path: &str) -> bool {
    ["/api", "/apis", "/openapi"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        || ["/version", "/healthz", "/livez", "/readyz"].contains(&path)
}

/// The outcome of a comparison.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Recorded calls the chart does not grant, as lines.
    pub missing: Vec<String>,
    /// Granted `(group, resource, verb)` never recorded and not justified.
    pub excess: Vec<String>,
    /// Justified entries that were recorded after all (the entry can go).
    pub stale: Vec<String>,
    /// Justified entries the chart does not even grant (the entry must go).
    pub unknown: Vec<String>,
}

impl Report {
    /// Whether chart and calls agree.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.excess.is_empty() && self.unknown.is_empty()
    }
}

fn show(group: &str, resource: &str, verb: &str) -> String {
    let group = if group.is_empty() { "\"\"" } else { group };
    format!("{verb} {group} {resource}")
}

/// Compares the recorded calls with the grants (pure).
pub fn compare(
    calls: &BTreeSet<ApiCall>,
    grants: &Grants,
    unrecorded: &[(&str, &str, &str, &str)],
) -> Report {
    let mut report = Report::default();
    let mut used = BTreeSet::new();
    for call in calls {
        match call {
            ApiCall::Resource {
                verb,
                group,
                resource,
                namespaced,
            } => {
                used.insert((group.clone(), resource.clone(), verb.clone()));
                if !grants.allows(verb, group, resource, *namespaced) {
                    report.missing.push(call.to_string());
                }
            }
            ApiCall::NonResource { verb, path } => {
                if !(verb == "get" && discovery(path)) {
                    report.missing.push(call.to_string());
                }
            }
        }
    }
    let justified: BTreeSet<(String, String, String)> = unrecorded
        .iter()
        .map(|(g, r, v, _)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let granted = grants.all();
    for (g, r, v) in &granted {
        let key = (g.clone(), r.clone(), v.clone());
        if !used.contains(&key) && !justified.contains(&key) {
            report.excess.push(show(g, r, v));
        }
    }
    for key @ (g, r, v) in &justified {
        if !granted.contains(key) {
            report.unknown.push(show(g, r, v));
        } else if used.contains(key) {
            report.stale.push(show(g, r, v));
        }
    }
    report
}

/// Reads the calls of `files`; a line that does not parse is an error.
pub fn read_calls(files: &[PathBuf]) -> Result<BTreeSet<ApiCall>, String> {
    let mut calls = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let call = ApiCall::parse(line)
                .ok_or_else(|| format!("{}: cannot parse {line:?}", file.display()))?;
            calls.insert(call);
        }
    }
    Ok(calls)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/helm template wp charts/workerpool-operator ARGS...`.
fn helm_template(args: &[&str]) -> Result<String, String> {
    let root = repo_root();
    let output = Command::new(root.join("scripts/helm"))
        .args(["template", "wp"])
        .arg(root.join("charts/workerpool-operator"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run scripts/helm: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "scripts/helm template failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The rules of the chart's ClusterRole and leader-election Role, from
/// `scripts/helm template wp charts/workerpool-operator --namespace ops` (default values).
pub fn chart_grants() -> Result<Grants, String> {
    grants_of(&helm_template(&["--namespace", "ops"])?)
}

static CHART_RBAC_READY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// With `WPO_E2E_CHART_RBAC=1` and a scenario namespace: installs the chart's RBAC (once per
/// namespace; see the module documentation), waits until the API server authorizes the
/// ServiceAccount, and returns the user the operator must impersonate. `None` otherwise.
pub fn chart_identity(namespace: &str) -> Result<Option<String>, String> {
    let on = std::env::var("WPO_E2E_CHART_RBAC").is_ok_and(|v| !v.is_empty() && v != "0");
    if !on || scenario_of(namespace).is_none() {
        return Ok(None);
    }
    // fullnameOverride=<ns>: the ServiceAccount and the cluster-scoped objects are named
    // after the namespace, so that scenarios running side by side do not share them.
    let user = format!("system:serviceaccount:{namespace}:{namespace}");
    let mut ready = CHART_RBAC_READY.lock().unwrap_or_else(|p| p.into_inner());
    if ready.contains(namespace) {
        return Ok(Some(user));
    }
    let full = format!("fullnameOverride={namespace}");
    let rendered = helm_template(&["--namespace", namespace, "--set", &full])?;
    // The harness calls this from a runtime's thread: the API calls run on a thread of their own.
    let (ns, who) = (namespace.to_string(), user.clone());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build a runtime: {e}"))?
            .block_on(install_chart_rbac(&rendered, &ns, &who))
    })
    .join()
    .map_err(|_| "the chart RBAC installer panicked".to_string())??;
    ready.insert(namespace.to_string());
    eprintln!("e2e[{namespace}]: the operator runs as {user}, with the chart's RBAC only");
    Ok(Some(user))
}

async fn install_chart_rbac(rendered: &str, ns: &str, user: &str) -> Result<(), String> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
    use serde::Deserialize as _;

    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot build a client: {e}"))?;
    let owner = Api::<Namespace>::all(client.clone())
        .get(ns)
        .await
        .map_err(|e| format!("cannot read namespace {ns}: {e}"))?;
    let owner = serde_json::json!([{
        "apiVersion": "v1",
        "kind": "Namespace",
        "name": ns,
        "uid": owner.metadata.uid,
    }]);
    let params = PatchParams::apply(crate::harness::FIELD_MANAGER).force();
    let mut applied = Vec::new();
    for document in serde_yaml::Deserializer::from_str(rendered) {
        let mut value = serde_json::Value::deserialize(document).map_err(|e| e.to_string())?;
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let rbac = "rbac.authorization.k8s.io";
        let (group, plural, namespaced) = match kind.as_str() {
            "ServiceAccount" => ("", "serviceaccounts", true),
            "Role" => (rbac, "roles", true),
            "RoleBinding" => (rbac, "rolebindings", true),
            "ClusterRole" => (rbac, "clusterroles", false),
            "ClusterRoleBinding" => (rbac, "clusterrolebindings", false),
            _ => continue,
        };
        if !namespaced {
            value["metadata"]["ownerReferences"] = owner.clone();
        }
        let object: DynamicObject = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", &kind), plural);
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| format!("cannot apply the chart's {kind} {name}: {e}"))?;
        applied.push(format!("{kind} {name}"));
    }
    if applied.len() != 5 {
        return Err(format!(
            "expected a ServiceAccount, a ClusterRole, a Role and their bindings, applied {applied:?}"
        ));
    }
    // RBAC is served from the API server's informer cache: wait until the bindings count.
    let reviews: Api<SubjectAccessReview> = Api::all(client);
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_string()),
                verb: Some("update".into()),
                group: Some("coordination.k8s.io".into()),
                resource: Some("leases".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let allowed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("SubjectAccessReview: {e}"))?
            .status
            .is_some_and(|s| s.allowed);
        if allowed {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{user} is still not authorized 30 s after {applied:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The grants of a rendered chart (pure).
pub fn grants_of(rendered: &str) -> Result<Grants, String> {
    use serde::Deserialize as _;
    let mut grants = Grants::default();
    let mut roles = 0;
    for document in serde_yaml::Deserializer::from_str(rendered) {
        let doc = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let target = match kind {
            "ClusterRole" => &mut grants.cluster,
            "Role" if name.ends_with("-leader-election") => &mut grants.lease,
            "Role" => return Err(format!("unexpected Role {name} with default values")),
            _ => continue,
        };
        roles += 1;
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    target
                        .entry((group.clone(), resource))
                        .or_default()
                        .extend(strings("verbs"));
                }
            }
        }
    }
    if roles != 2 {
        return Err(format!(
            "expected a ClusterRole and a leader-election Role, found {roles} role(s)"
        ));
    }
    Ok(grants)
}

/// The recordings to check: `WPO_E2E_CALLS` (files or directories), else those of this
/// process's scenarios once they have all ended. `Err` is the reason to skip.
async fn recordings() -> Result<Vec<PathBuf>, String> {
    if let Ok(list) = std::env::var("WPO_E2E_CALLS") {
        let mut files = Vec::new();
        for entry in list.split(':').filter(|e| !e.is_empty()) {
            let path = PathBuf::from(entry);
            if path.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(&path)
                    .map_err(|e| format!("cannot list {entry}: {e}"))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "calls"))
                    .collect();
                found.sort();
                files.extend(found);
            } else {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(format!("WPO_E2E_CALLS={list} names no *.calls file"));
        }
        return Ok(files);
    }
    let Some(client) = crate::harness::cluster_or_skip("rbac").await else {
        return Err("no cluster, so no recorded calls".into());
    };
    let snapshot = || {
        let all = RECORDINGS.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .map(|r| (r.namespace.clone(), r.file.clone(), r.pid))
            .collect::<Vec<_>>()
    };
    if snapshot().is_empty() {
        return Err(format!(
            "no scenario ran in this process (a filtered run?); the check needs {SCENARIOS:?} \
             (or WPO_E2E_CALLS)"
        ));
    }
    // With parallel test threads (plain `cargo test`) the scenarios may still be running:
    // wait until each has started, then until every namespace is gone and every operator
    // process has ended. (`scripts/e2e` runs one test at a time, so this returns at once.)
    let started = Instant::now();
    let missing = |recs: &[(String, PathBuf, u32)]| -> Vec<&str> {
        SCENARIOS
            .iter()
            .filter(|s| !recs.iter().any(|(ns, _, _)| scenario_of(ns) == Some(**s)))
            .copied()
            .collect()
    };
    loop {
        let recs = snapshot();
        let absent = missing(&recs);
        if absent.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "scenarios {absent:?} did not run in this process (a filtered run?)"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let keep = std::env::var("WPO_E2E_KEEP_NAMESPACE").is_ok_and(|v| !v.is_empty() && v != "0");
    let namespaces: Api<Namespace> = Api::all(client);
    let mut announced = false;
    loop {
        let recs = snapshot();
        let mut running = Vec::new();
        for (ns, _, pid) in &recs {
            if process_alive(*pid) {
                running.push(format!("operator {pid} of {ns}"));
            }
            // A scenario deletes its namespace when its body has ended (a namespace that
            // cannot finish terminating must not hold the check up).
            let active = match namespaces.get_opt(ns).await {
                Ok(Some(n)) => n.metadata.deletion_timestamp.is_none(),
                Ok(None) => false,
                Err(_) => true,
            };
            if !keep && active {
                running.push(format!("namespace {ns}"));
            }
        }
        if running.is_empty() {
            // One file per log: a restarted operator appends to the file it had.
            let files: BTreeSet<PathBuf> = recs.into_iter().map(|(_, file, _)| file).collect();
            return Ok(files.into_iter().collect());
        }
        if started.elapsed() > Duration::from_secs(30 * 60) {
            return Err(format!("scenarios still running after 30 min: {running:?}"));
        }
        if !announced {
            eprintln!("e2e[rbac]: waiting for the scenarios to end: {running:?}");
            announced = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether process `pid` runs (and is not a zombie). Without `/proc`, never.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The check (the suite's last test).
pub async fn check() {
    let files = match recordings().await {
        Ok(files) => files,
        Err(reason) => {
            eprintln!("e2e: skipped — RBAC check: {reason}");
            return;
        }
    };
    let calls = read_calls(&files).unwrap_or_else(|e| panic!("e2e[rbac]: {e}"));
    let grants = chart_grants().unwrap_or_else(|e| panic!("e2e[rbac]: {e}"));
    let report = compare(&calls, &grants, UNRECORDED);

    let mut table: BTreeMap<(String, String, bool), BTreeSet<String>> = BTreeMap::new();
    for call in &calls {
        if let ApiCall::Resource {
            verb,
            group,
            resource,
            namespaced,
        } = call
        {
            table
                .entry((group.clone(), resource.clone(), *namespaced))
                .or_default()
                .insert(verb.clone());
        }
    }
    eprintln!(
        "e2e[rbac]: {} distinct calls recorded in {} file(s):",
        calls.len(),
        files.len()
    );
    for ((group, resource, namespaced), verbs) in &table {
        let group = if group.is_empty() { "\"\"" } else { group };
        let scope = if *namespaced { "" } else { " (cluster)" };
        let verbs: Vec<&str> = verbs.iter().map(String::as_str).collect();
        eprintln!("  {group} {resource}{scope}: {}", verbs.join(", "));
    }
    for call in &calls {
        if let ApiCall::NonResource { .. } = call {
            eprintln!("  {call}");
        }
    }
    for (g, r, v, why) in UNRECORDED {
        eprintln!(
            "e2e[rbac]: granted, not expected in the recording: {}: {why}",
            show(g, r, v)
        );
    }
    for entry in &report.stale {
        eprintln!(
            "e2e[rbac]: note: {entry} is listed as unrecorded but was recorded; the entry can go"
        );
    }
    if report.ok() {
        eprintln!("e2e[rbac]: the chart grants exactly the recorded calls");
        return;
    }
    let mut message = String::from("the chart's RBAC and the operator's calls disagree");
    for (what, list) in [
        (
            "missing permissions (recorded, not granted by the chart)",
            &report.missing,
        ),
        (
            "excess permissions (granted, never recorded; remove them from templates/rbac.yaml \
             or justify them in tests/e2e/rbac.rs UNRECORDED)",
            &report.excess,
        ),
        (
            "UNRECORDED entries the chart does not grant",
            &report.unknown,
        ),
    ] {
        if !list.is_empty() {
            message.push_str(&format!("\n  {what}:"));
            for entry in list {
                message.push_str(&format!("\n    - {entry}"));
            }
        }
    }
    message.push_str(
        "\n  (a scenario that failed early leaves its recording incomplete: fix it first)",
    );
    message.push_str(&format!(
        "\n  recordings: {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    panic!("e2e[rbac]: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: wp}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: wp}
rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["list", "watch", "delete"]
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["delete"]
  - apiGroups: ["storm.apache.org"]
    resources: ["stormworkerpools/status"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: wp-leader-election, namespace: ops}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "patch"]
"#;

    fn calls(lines: &[&str]) -> BTreeSet<ApiCall> {
        lines.iter().map(|l| ApiCall::parse(l).expect(l)).collect()
    }

    #[test]
    fn rbac_check_reports_missing_excess_and_justified_verbs() {
        let grants = grants_of(RENDERED).expect("grants");
        let justified = [("policy", "poddisruptionbudgets", "delete", "why")];
        let all = calls(&[
            "list \"\" pods namespace",
            "watch \"\" pods namespace",
            "delete \"\" pods namespace",
            "patch storm.apache.org stormworkerpools/status namespace",
            "get coordination.k8s.io leases namespace",
            "create coordination.k8s.io leases namespace",
            "patch coordination.k8s.io leases namespace",
            "get nonresource /version -",
        ]);
        assert_eq!(compare(&all, &grants, &justified), Report::default());

        let fewer = calls(&[
            "list \"\" pods cluster",
            "watch \"\" pods cluster",
            // The Lease Role is namespaced: a cluster-wide lease call is not granted.
            "get coordination.k8s.io leases cluster",
            "create coordination.k8s.io leases namespace",
            "patch coordination.k8s.io leases namespace",
            "update coordination.k8s.io leases namespace",
            "get \"\" secrets namespace",
            "post nonresource /metrics -",
            "patch storm.apache.org stormworkerpools/status namespace",
            "delete policy poddisruptionbudgets namespace",
        ]);
        let report = compare(
            &fewer,
            &grants,
            &[
                ("policy", "poddisruptionbudgets", "delete", "why"),
                ("apps", "deployments", "update", "why"),
            ],
        );
        assert_eq!(
            report,
            Report {
                missing: vec![
                    "get \"\" secrets namespace".into(),
                    "get coordination.k8s.io leases cluster".into(),
                    "update coordination.k8s.io leases namespace".into(),
                    "post nonresource /metrics -".into(),
                ],
                // A verb recorded in any scope counts as used.
                excess: vec!["delete \"\" pods".into()],
                stale: vec!["delete policy poddisruptionbudgets".into()],
                unknown: vec!["update apps deployments".into()],
            }
        );
        assert!(!report.ok());
    }

    #[test]
    fn rbac_recordings_are_named_after_the_log_and_the_scenario() {
        assert_eq!(
            calls_file(Path::new(
                "target/e2e-logs/wpo-e2e-recovery-ab12cd-replica-a.log"
            )),
            Path::new("target/e2e-logs/wpo-e2e-recovery-ab12cd-replica-a.calls")
        );
        assert_eq!(scenario_of("wpo-e2e-storm-ab12cd"), Some("storm"));
        assert_eq!(scenario_of("wpo-e2e-qworker-0a1b2c"), Some("qworker"));
        assert_eq!(scenario_of("selfcheck"), None);
        assert!(process_alive(std::process::id()));
        assert!(
            UNRECORDED
                .iter()
                .all(|(_, _, _, why)| !why.trim().is_empty())
        );
    }
}
