#!/usr/bin/env python3
"""Checks the Grafana dashboards in deploy/grafana/dashboards/.

Usage: check-dashboards.py [DASHBOARD.json ...]

For each dashboard: valid JSON with uid, title and schemaVersion; unique panel
ids; panels inside the 24-column grid and not overlapping; every `$variable`
defined; the required views present (SLO burn rate, error budget remaining,
requests per second, latency percentiles, 5xx errors, guard's release
annotations); every metric a query uses is one ultra-boost exports (TEAM.md's
contract) or a Sloth SLO rule; and every query is valid PromQL, checked by
`promtool check rules` on a throw-away rule file with the Grafana variables
filled in. Exits non-zero with one line per problem.
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
KNOWN_METRICS = {
    # ultra-boost's metrics (contract in TEAM.md)
    "ultra_boost_http_requests_total", "ultra_boost_http_requests_in_flight",
    "ultra_boost_upstream_requests_total", "ultra_boost_upstream_errors_total",
    "ultra_boost_app_errors_total", "ultra_boost_background_runs_total",
    "ultra_boost_background_last_success_timestamp_seconds", "ultra_boost_build_info",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
    "process_start_time_seconds", "process_threads", "process_virtual_memory_bytes", "process_max_fds",
    # Sloth's SLO recording rules (generated into deploy/prometheus/rules/)
    "slo:sli_error:ratio_rate5m", "slo:objective:ratio", "slo:error_budget:ratio",
    "slo:time_period:days", "slo:current_burn_rate:ratio", "slo:period_burn_rate:ratio",
    "slo:period_error_budget_remaining:ratio", "sloth_slo_info",
}
HISTOGRAMS = {"ultra_boost_http_request_duration_seconds", "ultra_boost_upstream_request_duration_seconds",
              "ultra_boost_background_run_duration_seconds"}
for h in HISTOGRAMS:
    KNOWN_METRICS |= {h + "_bucket", h + "_sum", h + "_count"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all", "__interval_ms", "__range_s"}
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "time", "max", "min", "count", "avg", "le",
                "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                "increase", "irate", "label_values", "bool", "offset", "topk", "bottomk", "abs", "clamp_min"}
REQUIRED = {
    "SLO burn rate": lambda e: "slo:current_burn_rate:ratio" in e,
    "error budget remaining": lambda e: "slo:period_error_budget_remaining:ratio" in e,
    "requests per second": lambda e: re.search(r"rate\(ultra_boost_http_requests_total", e),
    "latency percentiles": lambda e: "histogram_quantile" in e and "ultra_boost_http_request_duration_seconds_bucket" in e,
    "5xx errors": lambda e: "ultra_boost_http_requests_total" in e and 'code=~"5..' in e,
}


def substitute(expr):
    """Fills Grafana variables with sample values so promtool can parse the query."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", "sample", expr)


def check(path, errors):
    where = path.relative_to(HERE.parent.parent) if path.is_relative_to(HERE.parent.parent) else path
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        errors.append(f"{where}: not valid JSON: {e}")
        return []
    for field in ("uid", "title", "schemaVersion", "panels"):
        if not dash.get(field):
            errors.append(f"{where}: missing field '{field}'")
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    panels = [p for p in dash.get("panels", [])]
    ids, cells, exprs = set(), {}, []
    for p in panels:
        pid, title = p.get("id"), p.get("title", "?")
        pw = f"{where}: panel {pid} '{title}'"
        if pid in ids:
            errors.append(f"{pw}: duplicate panel id")
        ids.add(pid)
        g = p.get("gridPos", {})
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or x < 0 or w <= 0 or h <= 0 or x + w > 24:
            errors.append(f"{pw}: gridPos {g} outside the 24-column grid")
            continue
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    errors.append(f"{pw}: overlaps panel {cells[(cx, cy)]} at x={cx}, y={cy}")
                    break
                cells[(cx, cy)] = pid
            else:
                continue
            break
        if p.get("type") != "row" and not p.get("description"):
            errors.append(f"{pw}: no description (say what the panel shows)")
        for t in p.get("targets", []):
            e = t.get("expr", "")
            if not e:
                errors.append(f"{pw}: target {t.get('refId')} has no expr")
                continue
            exprs.append((pw, e))
    texts = [json.dumps(dash)]
    for var in set(re.findall(r"\$\{?(\w+)\}?", "".join(texts))):
        if var not in variables and var not in GRAFANA_BUILTINS:
            errors.append(f"{where}: uses ${var}, which is not a dashboard variable")
    for what, test in REQUIRED.items():
        if not any(test(e) for _, e in exprs):
            errors.append(f"{where}: no panel shows {what}")
    ann = dash.get("annotations", {}).get("list", [])
    if not any("guard" in (a.get("target", {}) or {}).get("tags", []) for a in ann):
        errors.append(f"{where}: no annotation query for guard's release annotations (tag 'guard')")
    for pw, e in exprs:
        stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)  # label values are not metric names
        stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # nor are label names
        stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)
        stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", stripped)
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
            if name in PROMQL_WORDS or name.startswith("__") or re.fullmatch(r"\d+", name):
                continue
            if name not in KNOWN_METRICS:
                errors.append(f"{pw}: unknown metric '{name}' (not in the metric contract nor a Sloth rule)")
    return exprs


def main(argv):
    files = [pathlib.Path(a).resolve() for a in argv[1:]] or sorted((HERE / "dashboards").glob("*.json"))
    if not files:
        print(f"check-dashboards: no dashboards in {HERE / 'dashboards'}", file=sys.stderr)
        return 1
    if not shutil.which("promtool"):
        print("check-dashboards: promtool not found (Debian package prometheus)", file=sys.stderr)
        return 1
    errors, exprs = [], []
    for f in files:
        exprs += check(f, errors)
    with tempfile.TemporaryDirectory() as tmp:
        rules = pathlib.Path(tmp) / "dashboard-queries.yml"
        lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
        for i, (_, e) in enumerate(exprs):
            lines.append(f"      - record: dashboard:query_{i}")
            lines.append(f"        expr: {json.dumps(substitute(e))}")
        rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
        proc = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            for line in (proc.stdout + proc.stderr).splitlines():
                if not line.strip() or line.startswith(("Checking", "  FAILED", "FAILED")):
                    continue
                m = re.search(r"dashboard:query_(\d+)", line)
                ctx = exprs[int(m.group(1))][0] if m else ""
                errors.append(f"promtool: {ctx} {line.strip()}")
    for f in files:
        print(f"  dashboard {f.name}: {len(exprs)} queries, PromQL checked by promtool")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
