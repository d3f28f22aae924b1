#!/usr/bin/env python3
"""Checks the chart's Grafana dashboards (run by scripts/test).

Usage: check-dashboards.py DASHBOARD.json... [--rules-out FILE]

Every dashboard must be a Grafana 10 dashboard (schemaVersion 38 or later) with a unique uid,
a `datasource` variable of type datasource (Prometheus) that every panel and target uses, unique
panel ids, panels inside the 24-column grid, and a PromQL `expr` in every target. The QWorker
and Storm dashboards filter every query by `$namespace` and have their object variables
(`qworker`; `pool`, `topology`); the operator dashboard filters by `$job`.

--rules-out writes every target's query, with the template variables replaced as the
end-to-end test replaces them (`$__rate_interval` by 1m, every other variable by `.*`), as
recording rules in a rules file (JSON, which is YAML), so that `promtool check rules` parses
each query with Prometheus' own parser. Needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Variables each dashboard must have (besides datasource), and the filter every query carries.
REQUIRED = {
    "workerpool-qworkers": ({"namespace", "qworker"}, 'namespace=~"$namespace"'),
    "workerpool-storm": ({"namespace", "pool", "topology"}, 'namespace=~"$namespace"'),
    "workerpool-operator": ({"job", "instance"}, 'job=~"$job"'),
}

errors: list[str] = []


def check(ok: bool, message: str) -> None:
    if not ok:
        errors.append(message)


def substitute(expr: str) -> str:
    """The query as the end-to-end test evaluates it."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", ".*", expr)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dashboards", nargs="+")
    parser.add_argument("--rules-out")
    args = parser.parse_args()

    rules = []
    uids = set()
    for path in args.dashboards:
        name = Path(path).name
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        uid = d.get("uid")
        check(uid not in uids, f"{name}: uid {uid} used twice")
        uids.add(uid)
        check(uid in REQUIRED, f"{name}: unknown uid {uid}")
        check(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 38,
              f"{name}: schemaVersion {d.get('schemaVersion')} is older than Grafana 10's 38")
        check(bool(d.get("title")), f"{name}: no title")
        variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        ds = variables.get("datasource", {})
        check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
              f"{name}: no Prometheus datasource variable")
        wanted, selector = REQUIRED.get(uid, (set(), ""))
        for v in sorted(wanted):
            var = variables.get(v, {})
            check(var.get("type") == "query" and var.get("datasource") == DATASOURCE,
                  f"{name}: no query variable {v} on $datasource")
        ids = set()
        count = 0
        for p in d.get("panels", []):
            pid = p.get("id")
            check(pid not in ids, f"{name}: panel id {pid} used twice")
            ids.add(pid)
            pos = p.get("gridPos", {})
            check(pos.get("x", 0) + pos.get("w", 0) <= 24, f"{name}: panel {pid} is wider than the grid")
            if p.get("type") == "row":
                continue
            title = p.get("title")
            check(p.get("datasource") == DATASOURCE, f"{name}: panel {title!r} does not use $datasource")
            targets = p.get("targets", [])
            check(bool(targets), f"{name}: panel {title!r} has no query")
            refs = [t.get("refId") for t in targets]
            check(len(set(refs)) == len(refs), f"{name}: panel {title!r} repeats a refId")
            for t in targets:
                expr = t.get("expr", "")
                check(bool(expr.strip()), f"{name}: panel {title!r} target {t.get('refId')} has no expr")
                check(t.get("datasource") == DATASOURCE, f"{name}: panel {title!r} target {t.get('refId')} does not use $datasource")
                check(selector in expr, f"{name}: panel {title!r} query does not filter by {selector}: {expr}")
                count += 1
                rules.append({"record": f"dashboard:{uid.replace('-', '_')}:{count}", "expr": substitute(expr)})
        print(f"{name}: {len(ids)} panels, {count} queries")

    if args.rules_out:
        with open(args.rules_out, "w", encoding="utf-8") as f:
            json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, indent=1)
    if errors:
        print(f"{len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
