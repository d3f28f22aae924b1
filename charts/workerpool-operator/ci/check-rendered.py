#!/usr/bin/env python3
"""Checks `helm template` output of the workerpool-operator chart (run by scripts/test).

Usage: check-rendered.py RENDERED.yaml --release-namespace NS [--watch-namespace NS]
       [--replicas N] [--service-monitor] [--crds N] [--dashboards] [--prometheus-rule]
       [--runbook-base URL] [--image REF] [--pull-policy POLICY]

Every document must parse as YAML and name its apiVersion, kind and metadata.name; the RBAC
must grant exactly the rules below (no more, no less, no wildcards), cluster-wide or in the
watched namespace, with the Lease rule always in a Role in the release namespace; the
Deployment, Service and ServiceMonitor must carry what the chart promises; the dashboards'
ConfigMaps and the PrometheusRule must hold exactly the chart's monitoring/ files.
Needs PyYAML. Exits non-zero with every failure listed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

# (apiGroup, resource) -> verbs: exactly what the operator's code uses (templates/rbac.yaml
# says why; the end-to-end suite's zz_rbac_matches_recorded_calls checks the same rules
# against the calls the operator really makes). No `update` anywhere, no core `events`.
WATCHED = {"list", "watch"}
APPLIED = {"list", "watch", "create", "patch"}
EXPECTED_RULES: dict[tuple[str, str], set[str]] = {
    ("storm.apache.org", "stormworkerpools"): WATCHED,
    ("storm.apache.org", "stormworkerpools/status"): {"patch"},
    ("storm.apache.org", "stormtopologies"): WATCHED | {"get", "patch"},
    ("storm.apache.org", "stormtopologies/status"): {"patch"},
    ("storm.apache.org", "stormclusters"): WATCHED | {"get"},
    ("storm.apache.org", "stormclusters/status"): {"patch"},
    ("apps", "statefulsets"): APPLIED,
    ("batch", "jobs"): WATCHED | {"create", "delete"},
    ("quickube.com", "qworkers"): WATCHED,
    ("quickube.com", "qworkers/status"): {"patch"},
    ("quickube.com", "scalerconfigs"): WATCHED,
    ("quickube.com", "scalerconfigs/status"): {"patch"},
    ("apps", "deployments"): APPLIED | {"get"},
    ("autoscaling", "horizontalpodautoscalers"): APPLIED | {"get", "delete"},
    ("policy", "poddisruptionbudgets"): APPLIED | {"get", "delete"},
    ("", "configmaps"): APPLIED,
    ("", "services"): APPLIED,
    ("", "pods"): APPLIED | {"delete"},
    ("", "secrets"): {"get"},
    ("metrics.k8s.io", "pods"): {"list"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
EXPECTED_LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
RUNBOOK_BASE = "https://github.com/workerpool/workerpool-operator/blob/main/docs/monitoring.md"

errors: list[str] = []


def check(ok: bool, message: str) -> None:
    if not ok:
        errors.append(message)


def flatten(rules: list[dict[str, Any]], where: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        extra = set(rule) - {"apiGroups", "resources", "verbs"}
        check(not extra, f"{where}: unexpected rule keys {sorted(extra)}")
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    check("*" not in (group, resource, verb), f"{where}: wildcard in {rule}")
                    out.setdefault((group, resource), set()).add(verb)
    return out


def compare_rules(
    got: dict[tuple[str, str], set[str]], want: dict[tuple[str, str], set[str]], where: str
) -> None:
    for key in sorted(set(got) | set(want)):
        g, w = got.get(key, set()), want.get(key, set())
        if g != w:
            group = key[0] or '""'
            errors.append(
                f"{where}: {group} {key[1]}: granted {sorted(g)}, expected {sorted(w)}"
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--release-namespace", required=True)
    parser.add_argument("--watch-namespace", default="")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--leader-election", action="store_true")
    parser.add_argument("--service-monitor", action="store_true")
    parser.add_argument("--crds", type=int, default=0, help="CRDs expected (--include-crds)")
    parser.add_argument("--dashboards", action="store_true", help="grafanaDashboards.enabled")
    parser.add_argument("--prometheus-rule", action="store_true", help="prometheusRule.enabled")
    parser.add_argument("--runbook-base", default=RUNBOOK_BASE, help="prometheusRule.runbookBaseUrl")
    parser.add_argument("--image", help="the operator container's image reference")
    parser.add_argument("--pull-policy", default="IfNotPresent")
    args = parser.parse_args()

    with open(args.rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]

    by_kind: dict[str, list[dict[str, Any]]] = {}
    for i, doc in enumerate(docs):
        check(isinstance(doc, dict), f"document {i} is not a mapping")
        if not isinstance(doc, dict):
            continue
        for key in ("apiVersion", "kind"):
            check(bool(doc.get(key)), f"document {i} has no {key}")
        check(bool((doc.get("metadata") or {}).get("name")), f"document {i} has no metadata.name")
        by_kind.setdefault(str(doc.get("kind")), []).append(doc)

    def one(kind: str) -> dict[str, Any]:
        found = by_kind.get(kind, [])
        check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
        return found[0] if found else {}

    rel_ns, watch_ns = args.release_namespace, args.watch_namespace
    sa = one("ServiceAccount")
    sa_name = sa.get("metadata", {}).get("name")
    check(sa.get("metadata", {}).get("namespace") == rel_ns, "ServiceAccount not in the release namespace")

    # RBAC.
    roles = by_kind.get("Role", [])
    bindings = by_kind.get("RoleBinding", [])
    lease_roles = [r for r in roles if r["metadata"].get("namespace") == rel_ns
                   and any("coordination.k8s.io" in x.get("apiGroups", []) for x in r.get("rules", []))]
    check(len(lease_roles) == 1, f"expected one leader-election Role in {rel_ns}, found {len(lease_roles)}")
    for r in lease_roles:
        compare_rules(flatten(r.get("rules", []), "lease Role"), EXPECTED_LEASE_RULES, "lease Role")
    main_roles = [r for r in roles if r not in lease_roles]
    if watch_ns:
        check(not by_kind.get("ClusterRole") and not by_kind.get("ClusterRoleBinding"),
              "watchNamespace set, yet a ClusterRole/ClusterRoleBinding is rendered")
        check(len(main_roles) == 1, f"expected one operator Role, found {len(main_roles)}")
        for r in main_roles:
            check(r["metadata"].get("namespace") == watch_ns, f"operator Role not in {watch_ns}")
            compare_rules(flatten(r.get("rules", []), "Role"), EXPECTED_RULES, "Role")
        role_kind, granted = "Role", main_roles
    else:
        check(not main_roles, "watchNamespace empty, yet an operator Role is rendered")
        cr = one("ClusterRole")
        compare_rules(flatten(cr.get("rules", []), "ClusterRole"), EXPECTED_RULES, "ClusterRole")
        role_kind, granted = "ClusterRole", [cr] if cr else []
    all_bindings = bindings + by_kind.get("ClusterRoleBinding", [])
    check(len(all_bindings) == 2, f"expected 2 bindings, found {len(all_bindings)}")
    names = {(r.get("kind"), r["metadata"]["name"], r["metadata"].get("namespace")) for r in roles + granted}
    for b in all_bindings:
        ref = b.get("roleRef", {})
        ns = b["metadata"].get("namespace") if ref.get("kind") == "Role" else None
        check((ref.get("kind"), ref.get("name"), ns) in names, f"binding {b['metadata']['name']} refers to a missing {ref}")
        check(b.get("subjects") == [{"kind": "ServiceAccount", "name": sa_name, "namespace": rel_ns}],
              f"binding {b['metadata']['name']} does not bind only the operator's ServiceAccount")
    check(any(b.get("roleRef", {}).get("kind") == role_kind for b in all_bindings), f"no binding of the {role_kind}")

    # Deployment.
    dep = one("Deployment")
    spec = dep.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    check(spec.get("replicas") == args.replicas, f"replicas {spec.get('replicas')} != {args.replicas}")
    check(pod.get("serviceAccountName") == sa_name, "pod does not run as the ServiceAccount")
    check(pod.get("terminationGracePeriodSeconds") == 30, "terminationGracePeriodSeconds is not 30")
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532, "pod securityContext: not non-root 65532")
    check(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, "pod seccompProfile is not RuntimeDefault")
    containers = pod.get("containers", [])
    check(len(containers) == 1, "expected one container")
    c = containers[0] if containers else {}
    check(c.get("args") == ["run"], f"container args {c.get('args')} != ['run']")
    check("command" not in c, "the container overrides the image's entrypoint")
    if args.image:
        check(c.get("image") == args.image, f"image {c.get('image')!r}, expected {args.image!r}")
    check(c.get("imagePullPolicy") == args.pull_policy,
          f"imagePullPolicy {c.get('imagePullPolicy')!r}, expected {args.pull_policy!r}")
    # The read-only root filesystem leaves /tmp writable through an emptyDir.
    tmp_mounts = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
    tmp_volumes = {v.get("name"): v for v in pod.get("volumes", [])}
    check(len(tmp_mounts) == 1 and "emptyDir" in tmp_volumes.get(tmp_mounts[0].get("name"), {}),
          "no emptyDir mounted at /tmp")
    check(pod.get("automountServiceAccountToken") is True, "the ServiceAccount token is not mounted")
    env = {e["name"]: e for e in c.get("env", [])}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        check(env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == path,
              f"{name} is not from the downward API ({path})")
    leader = args.leader_election or args.replicas > 1
    want_env = {
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
        "LEADER_ELECTION": "true" if leader else "false",
        "LEASE_DURATION_SECONDS": "15",
        "METRICS_ADDR": "0.0.0.0:8080",
    }
    if watch_ns:
        want_env["WATCH_NAMESPACE"] = watch_ns
    else:
        check("WATCH_NAMESPACE" not in env, "WATCH_NAMESPACE is set though all namespaces are watched")
    for name, value in want_env.items():
        check(env.get(name, {}).get("value") == value, f"env {name}={env.get(name, {}).get('value')!r}, expected {value!r}")
    check(bool(env.get("LEASE_NAME", {}).get("value")), "LEASE_NAME is empty")
    for e in env.values():
        check("value" not in e or isinstance(e["value"], str), f"env {e['name']} is not a string")
    check({"name": "http", "containerPort": 8080, "protocol": "TCP"} in c.get("ports", []), "no port 8080 named http")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check(c.get(probe, {}).get("httpGet") == {"path": path, "port": "http"}, f"{probe} is not GET {path} on http")
    csc = c.get("securityContext", {})
    for key, value in (("runAsNonRoot", True), ("runAsUser", 65532), ("readOnlyRootFilesystem", True),
                       ("allowPrivilegeEscalation", False), ("capabilities", {"drop": ["ALL"]}),
                       ("seccompProfile", {"type": "RuntimeDefault"})):
        check(csc.get(key) == value, f"container securityContext.{key}={csc.get(key)!r}, expected {value!r}")
    check(c.get("resources") == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
          f"resources {c.get('resources')}")
    selector = spec.get("selector", {}).get("matchLabels", {})
    pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    check(bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items()), "selector does not match pod labels")

    # Service and ServiceMonitor.
    svc = one("Service")
    sspec = svc.get("spec", {})
    check(sspec.get("type") == "ClusterIP", "metrics Service is not ClusterIP")
    check(sspec.get("ports") == [{"name": "http-metrics", "port": 8080, "targetPort": "http", "protocol": "TCP"}],
          f"metrics Service ports {sspec.get('ports')}")
    check(sspec.get("selector") == selector, "metrics Service selector differs from the Deployment's")
    monitors = by_kind.get("ServiceMonitor", [])
    check(len(monitors) == (1 if args.service_monitor else 0), f"{len(monitors)} ServiceMonitor(s) rendered")
    for m in monitors:
        ep = m.get("spec", {}).get("endpoints", [{}])[0]
        check(ep.get("port") == "http-metrics" and ep.get("interval") == "30s", f"ServiceMonitor endpoint {ep}")
        match = m.get("spec", {}).get("selector", {}).get("matchLabels", {})
        svc_labels = svc.get("metadata", {}).get("labels", {})
        check(bool(match) and all(svc_labels.get(k) == v for k, v in match.items()),
              "ServiceMonitor does not select the metrics Service")
        check(m.get("spec", {}).get("namespaceSelector", {}).get("matchNames") == [rel_ns],
              "ServiceMonitor does not look in the release namespace")
        check(ep.get("honorLabels") is True,
              "ServiceMonitor does not honor the series' own namespace labels")

    # Grafana dashboards: one ConfigMap per file of monitoring/dashboards, holding it unchanged.
    files = {p.name: json.loads(p.read_text(encoding="utf-8"))
             for p in sorted((MONITORING / "dashboards").glob("*.json"))}
    check(len(files) == 3, f"expected 3 dashboard files, found {sorted(files)}")
    boards = [c for c in by_kind.get("ConfigMap", [])
              if c.get("metadata", {}).get("labels", {}).get("grafana_dashboard") == "1"]
    check(len(boards) == (len(files) if args.dashboards else 0),
          f"{len(boards)} dashboard ConfigMap(s) rendered")
    seen = set()
    for c in boards:
        data = c.get("data", {})
        check(len(data) == 1, f"ConfigMap {c['metadata']['name']}: {len(data)} data keys")
        for key, text in data.items():
            name = key.removeprefix("workerpool-operator-")
            seen.add(name)
            check(name in files and json.loads(text) == files[name],
                  f"ConfigMap {c['metadata']['name']}: {key} is not monitoring/dashboards/{name}")
        check(c["metadata"].get("namespace") == rel_ns, f"ConfigMap {c['metadata']['name']} not in {rel_ns}")
    if args.dashboards:
        check(seen == set(files), f"dashboards rendered {sorted(seen)}, files {sorted(files)}")

    # The PrometheusRule: monitoring/alerts.yaml, with the runbook base asked for.
    prom_rules = by_kind.get("PrometheusRule", [])
    check(len(prom_rules) == (1 if args.prometheus_rule else 0), f"{len(prom_rules)} PrometheusRule(s) rendered")
    alerts_text = (MONITORING / "alerts.yaml").read_text(encoding="utf-8")
    want = yaml.safe_load(alerts_text.replace(RUNBOOK_BASE, args.runbook_base))
    for r in prom_rules:
        check(r.get("spec") == want, "PrometheusRule spec differs from monitoring/alerts.yaml")
        check(r["metadata"].get("namespace") == rel_ns, "PrometheusRule not in the release namespace")
        for group in r.get("spec", {}).get("groups", []):
            for rule in group.get("rules", []):
                notes = rule.get("annotations", {})
                check(set(notes) == {"summary", "description", "runbook_url"},
                      f"alert {rule.get('alert')}: annotations {sorted(notes)}")
                check(notes.get("runbook_url", "") == f"{args.runbook_base}#{rule.get('alert', '').lower()}",
                      f"alert {rule.get('alert')}: runbook_url {notes.get('runbook_url')}")

    crds = by_kind.get("CustomResourceDefinition", [])
    check(len(crds) == args.crds, f"{len(crds)} CRDs rendered, expected {args.crds}")

    kinds = ", ".join(f"{k}×{len(v)}" for k, v in sorted(by_kind.items()))
    if errors:
        print(f"{args.rendered}: {len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    print(f"{args.rendered}: ok ({len(docs)} documents: {kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
