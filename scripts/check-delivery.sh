#!/usr/bin/env bash
# Checks the delivery assets with the real tools, as CI runs them:
#
#   Dockerfile        hadolint; BuildKit targets, cache mounts, non-root finals
#   guard config      the real guard binary serves with the guard.yaml its manifests mount,
#                     and runs the guard Deployment's `controller` command with its
#                     ConfigMap (guard.yaml, review template): probes, webhook HMAC
#   Kubernetes        kubectl kustomize on base, overlays and guard; rendered with a
#                     build (render.sh), validated: built-in kinds by
#                     kubernetes-validate --strict, CRDs (HTTPRoute, ServiceMonitor)
#                     by JSON Schema; production/review/guard policy; the
#                     validators' own negative self-tests
#   checkov           Dockerfile, rendered manifests, Terraform (+ project policies),
#                     secrets; every skip must carry a reason
#   Terraform         python-hcl2 parses every .tf; pinned provider, no secrets
#   Prometheus        promtool check config; promtool check rules on the SLO rules
#   Alertmanager      amtool check-config; routing of page/ticket alerts
#   Grafana           dashboard JSON, required panels, PromQL via promtool
#   Makefile, Drone   targets and help; pipelines, triggers, no cluster credentials
#   Shell, YAML       shellcheck on every shell script, yamllint on every YAML file
#
# A tool that is missing fails the run: nothing is skipped. All checks run, then
# the failures are listed; the exit status is non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# python-hcl2, installed alone by scripts/install-test-deps.sh (see there why).
hcl2_dir="$root/.venv/python-hcl2"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
started=$(date +%s)

# check NAME COMMAND...: runs one check, prints its output indented and its result.
check() {
  local name=$1; shift
  local t0 rc
  t0=$(date +%s)
  echo "-- $name"
  # A subshell with errexit: any failing command inside the check fails it.
  set +e
  ( set -e; "$@" ) > "$work/out" 2>&1
  rc=$?
  set -e
  sed 's/^/   /' "$work/out"
  if [ "$rc" -eq 0 ]; then
    echo "   ok ($(( $(date +%s) - t0 )) s)"
  else
    echo "   FAILED (exit $rc)"
    failed+=("$name")
  fi
}

# Files in the repository: tracked ones plus new, not-ignored ones.
repo_files() {
  git ls-files --cached --others --exclude-standard -- "$@" | sort -u | while read -r f; do
    [ -f "$f" ] && printf '%s\n' "$f"
  done
}

# ---------------------------------------------------------------------------
tools() {
  local missing=()
  for t in hadolint kubectl kubernetes-validate checkov yamllint shellcheck promtool amtool python3 make git; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  for m in yaml jsonschema; do
    python3 -c "import $m" >/dev/null 2>&1 || missing+=("python module $m")
  done
  hcl2 -c 'import hcl2' >/dev/null 2>&1 || missing+=("python-hcl2 in $hcl2_dir")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]} (scripts/install-test-deps.sh installs them)"
    return 1
  fi
  # (checkov's version is printed by its own check: starting it costs seconds.)
  echo "hadolint $(hadolint --version | awk '{print $NF}'), kubectl $(kubectl version --client 2>/dev/null | head -1)"
  promtool --version 2>&1 | head -1
  amtool --version 2>&1 | head -1
  hcl2 -c 'import hcl2, importlib.metadata as m; print("python-hcl2", m.version("python-hcl2"), "from", hcl2.__file__)'
}

# python3 with python-hcl2 (and only it) as the hcl2 module.
hcl2() {
  PYTHONPATH="$hcl2_dir" python3 "$@"
}

# ---------------------------------------------------------------------------
dockerfile() {
  hadolint --config .hadolint.yaml Dockerfile
  echo "hadolint: no findings"
  python3 - <<'EOF'
import re, sys
text = open("Dockerfile", encoding="utf-8").read()
lines = text.splitlines()
errors = []
if lines[0].strip() != "# syntax=docker/dockerfile:1":
    errors.append("first line must be '# syntax=docker/dockerfile:1' (BuildKit frontend)")
stages = {}
current = None
for line in lines:
    m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
    if m:
        current = m.group(2) or m.group(1)
        stages[current] = {"base": m.group(1), "body": []}
    elif current:
        stages[current]["body"].append(line)
for target in ("test", "ultra-boost", "guard", "debug"):
    if target not in stages:
        errors.append(f"no '{target}' target")
for cache in ("/usr/local/cargo/registry", "/src/target"):
    if not re.search(r"--mount=type=cache,[^\s]*target=" + re.escape(cache), text):
        errors.append(f"no BuildKit cache mount for {cache}")
for final in ("ultra-boost", "guard"):
    st = stages.get(final)
    if not st:
        continue
    if not st["base"].startswith("gcr.io/distroless/"):
        errors.append(f"target {final}: base {st['base']} is not distroless")
    users = [l for l in st["body"] if l.startswith("USER ")]
    if not users or users[-1].split()[1].split(":")[0] in ("0", "root"):
        errors.append(f"target {final}: must end as a non-root USER")
dbg = stages.get("debug", {"body": []})
if not any("gdbserver" in l for l in dbg["body"]):
    errors.append("target debug: no gdbserver")
if not re.search(r"CARGO_PROFILE_RELEASE_DEBUG=full", text):
    errors.append("debug build has no full debug info")
for arg in ("BUILD_NUMBER", "GIT_COMMIT"):
    if not re.search(rf"^ARG {arg}", text, re.M):
        errors.append(f"no build arg {arg}")
# The dependency stage copies only the manifests and crates/: every workspace
# member and path dependency must live there, and .dockerignore must keep them.
import tomllib
ws = tomllib.load(open("Cargo.toml", "rb"))["workspace"]
paths = [m for m in ws.get("members", [])]
paths += [d["path"] for d in ws.get("dependencies", {}).values() if isinstance(d, dict) and "path" in d]
for pth in paths:
    if not pth.startswith("crates/"):
        errors.append(f"workspace path {pth} is outside crates/, which the sources stage copies")
ignored = [l.strip() for l in open(".dockerignore", encoding="utf-8") if l.strip() and not l.startswith("#")]
for needed in ("Cargo.toml", "Cargo.lock", "crates"):
    if needed in ignored:
        errors.append(f".dockerignore excludes {needed}")
rust = ws.get("package", {}).get("rust-version")
m = re.search(r"^ARG RUST_VERSION=(\S+)", text, re.M)
if not m or m.group(1) != rust:
    errors.append(f"ARG RUST_VERSION ({m.group(1) if m else 'missing'}) differs from workspace rust-version {rust}")
for e in errors:
    print("ERROR", e)
print(f"rust {rust} (= workspace rust-version)")
print(f"stages: {', '.join(stages)}; workspace paths {', '.join(paths)} inside the copied sources")
sys.exit(1 if errors else 0)
EOF
}

# ---------------------------------------------------------------------------
k8s_version() {
  hcl2 - <<'EOF'
import hcl2
for v in hcl2.load(open("deploy/terraform/variables.tf", encoding="utf-8"))["variable"]:
    for name, body in v.items():
        if name.strip('"') == "kubernetes_version_prefix":
            print(str(body["default"]).strip('"') + "0")
EOF
}

render() {
  local k
  for k in deploy/kustomize/base deploy/kustomize/overlays/production deploy/kustomize/overlays/review deploy/kustomize/guard; do
    kubectl kustomize "$k" > "$work/raw-$(basename "$k").yaml"
    echo "kubectl kustomize $k: $(grep -c '^kind:' "$work/raw-$(basename "$k").yaml") objects"
  done
  mkdir -p "$work/manifests"
  deploy/kustomize/render.sh production --build 86 > "$work/manifests/production.yaml"
  deploy/kustomize/render.sh review --pr 42 > "$work/manifests/review.yaml"
  deploy/kustomize/render.sh guard --build 86 > "$work/manifests/guard.yaml"
  echo "render.sh production --build 86, review --pr 42, guard --build 86: ok"
  # Placeholders must never reach a cluster: render.sh refuses to run without a build.
  if deploy/kustomize/render.sh production > /dev/null 2>&1; then
    echo "ERROR render.sh production without --build succeeded"; return 1
  fi
  if deploy/kustomize/render.sh production --build latest > /dev/null 2>&1; then
    echo "ERROR render.sh accepted --build latest"; return 1
  fi
  echo "render.sh refuses a missing build and 'latest': ok"
  # guard controller reads the review overlay from a committed rendering
  # (ConfigMap guard-config); it must be the overlay as it is now.
  local tpl=deploy/kustomize/guard/review-template.yaml
  if ! diff -u "$tpl" "$work/raw-review.yaml" > "$work/review-template.diff"; then
    head -40 "$work/review-template.diff"
    echo "ERROR $tpl is stale: regenerate it with"
    echo "  kubectl kustomize deploy/kustomize/overlays/review > $tpl"
    return 1
  fi
  echo "$tpl = kubectl kustomize deploy/kustomize/overlays/review: ok"
}

validate_manifests() {
  local v
  v=$(k8s_version)
  [ -n "$v" ] || { echo "cannot read kubernetes_version_prefix from deploy/terraform/variables.tf"; return 1; }
  echo "Kubernetes $v (the cluster's minor, from deploy/terraform/variables.tf)"
  deploy/kustomize/schemas/validate.py "$v" "$work"/manifests/*.yaml
}

policy() {
  deploy/kustomize/policy.py "$work/manifests/production.yaml" "$work/manifests/review.yaml" "$work/manifests/guard.yaml" 42
}

# The validators must reject broken input, or their passing means nothing.
validator_self_tests() {
  local v bad
  v=$(k8s_version)
  bad="$work/bad"
  mkdir -p "$bad"
  python3 - "$work/manifests/production.yaml" "$bad" <<'EOF'
import copy, sys, yaml
src, out = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
def mutate(name, fn):
    ds = copy.deepcopy(docs)
    for d in ds:
        fn(d)
    with open(f"{out}/{name}.yaml", "w") as f:
        yaml.safe_dump_all(ds, f)
def kind(k, fn):
    return lambda d: fn(d) if d["kind"] == k else None
def pod(d):
    return d["spec"]["template"]["spec"]
mutate("deployment-unknown-field", kind("Deployment", lambda d: d["spec"].update(replica=3)))
mutate("httproute-weight", kind("HTTPRoute", lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(weight=-1)))
mutate("httproute-no-port", kind("HTTPRoute", lambda d: d["spec"]["rules"][0]["backendRefs"][0].pop("port")))
mutate("servicemonitor-unknown-field", kind("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(intervall="15s")))
mutate("image-latest", kind("Deployment", lambda d: pod(d)["containers"][0].update(image="registry.example/ultra-boost:latest")))
mutate("unknown-crd", kind("ServiceMonitor", lambda d: d.update(apiVersion="monitoring.coreos.com/v2")))
mutate("policy-grace", kind("Deployment", lambda d: pod(d).update(terminationGracePeriodSeconds=15)))
mutate("policy-max-unavailable", kind("Deployment", lambda d: d["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1)))
mutate("policy-no-anti-affinity", kind("Deployment", lambda d: pod(d).pop("affinity")))
mutate("policy-root", kind("Deployment", lambda d: pod(d)["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True)))
mutate("policy-no-limits", kind("Deployment", lambda d: pod(d)["containers"][0]["resources"].pop("limits")))
mutate("policy-pdb-selector", kind("PodDisruptionBudget", lambda d: d["spec"]["selector"]["matchLabels"].update(app="other")))
EOF
  # guard's manifests: RBAC exactly as the code needs it, the controller wired up.
  python3 - "$work/manifests/guard.yaml" "$bad" <<'EOF'
import copy, sys, yaml
src, out = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
def mutate(name, fn):
    ds = copy.deepcopy(docs)
    for d in ds:
        fn(d)
    with open(f"{out}/{name}.yaml", "w") as f:
        yaml.safe_dump_all(ds, f)
def kind(k, fn):
    return lambda d: fn(d) if d["kind"] == k else None
def guard(d):
    return d["spec"]["template"]["spec"]["containers"][0]
def rules(d, group, resource):
    return [r for r in d["rules"] if group in r["apiGroups"] and resource in r["resources"]]
def env(d, name):
    return next(e for e in guard(d)["env"] if e["name"] == name)
mutate("guard-extra-verb", kind("ClusterRole", lambda d: rules(d, "apps", "replicasets")[0]["verbs"].append("watch")))
mutate("guard-missing-verb", kind("ClusterRole", lambda d: rules(d, "apps", "deployments")[0]["verbs"].remove("update")))
mutate("guard-review-kind", kind("ClusterRole", lambda d: rules(d, "policy", "poddisruptionbudgets")[0]["verbs"].remove("create")))
mutate("guard-events", kind("ClusterRole", lambda d: d["rules"].append({"apiGroups": [""], "resources": ["events"], "verbs": ["create"]})))
mutate("guard-lease-list", kind("Role", lambda d: d["rules"][0]["verbs"].append("list")))
mutate("guard-serve", kind("Deployment", lambda d: guard(d).update(args=["serve", "--config", "/etc/guard/guard.yaml"])))
mutate("guard-no-template", kind("Deployment", lambda d: guard(d).update(args=["controller", "--config", "/etc/guard/guard.yaml",
                                                                              "--review-template", "/etc/guard/missing.yaml"])))
mutate("guard-literal-secret", kind("Deployment", lambda d: env(d, "GUARD_GITHUB_WEBHOOK_SECRET").update(value="s3cret")))
mutate("guard-probe", kind("Deployment", lambda d: guard(d)["livenessProbe"]["httpGet"].update(path="/healthz")))
EOF
  local f n=0 bad_ok=()
  for f in deployment-unknown-field httproute-weight httproute-no-port servicemonitor-unknown-field image-latest unknown-crd; do
    n=$((n + 1))
    if deploy/kustomize/schemas/validate.py "$v" "$bad/$f.yaml" > /dev/null 2>&1; then bad_ok+=("$f"); fi
  done
  for f in policy-grace policy-max-unavailable policy-no-anti-affinity policy-root policy-no-limits policy-pdb-selector; do
    n=$((n + 1))
    if deploy/kustomize/policy.py "$bad/$f.yaml" "$work/manifests/review.yaml" "$work/manifests/guard.yaml" 42 > /dev/null 2>&1; then bad_ok+=("$f"); fi
  done
  for f in guard-extra-verb guard-missing-verb guard-review-kind guard-events guard-lease-list guard-serve guard-no-template guard-literal-secret guard-probe; do
    n=$((n + 1))
    if deploy/kustomize/policy.py "$work/manifests/production.yaml" "$work/manifests/review.yaml" "$bad/$f.yaml" 42 > /dev/null 2>&1; then bad_ok+=("$f"); fi
  done
  if [ ${#bad_ok[@]} -gt 0 ]; then
    echo "ERROR broken manifests accepted: ${bad_ok[*]}"
    return 1
  fi
  echo "$n broken variants of the production and guard manifests, each rejected"
}

# guard must accept the configuration its manifests mount: the real binary
# loads it (`guard serve` validates the whole file before it starts anything and
# exits 1 naming file, line and field on any problem).
guard_config() {
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: cannot build guard to check its config"; return 1; }
  # The same command scripts/test runs before this script (a no-op there; the
  # same feature set, so nothing is rebuilt).
  cargo build --quiet --workspace --locked --bins
  local d="$work/guard" bin="$root/target/debug/guard" pid i rc
  mkdir -p "$d"
  printf 'check-delivery-token\n' > "$d/token"
  sed -e "s#/var/lib/guard/guard.sqlite#$d/guard.sqlite#" \
      -e "s#/var/run/secrets/guard/api/token#$d/token#" \
      deploy/kustomize/guard/guard.yaml > "$d/guard.yaml"
  # The negative control first: a config with an unknown field must be refused.
  printf 'services:\n  - name: x\n    bogus: 1\n' > "$d/bad.yaml"
  if (cd "$d" && timeout 20 "$bin" serve --config "$d/bad.yaml" --listen 127.0.0.1:0) > "$d/bad.log" 2>&1; then
    echo "ERROR guard accepted a config with an unknown field; this check would prove nothing"; return 1
  fi
  (cd "$d" && exec "$bin" serve --config "$d/guard.yaml" --listen 127.0.0.1:0 --address-file "$d/addr") > "$d/log" 2>&1 &
  pid=$!
  # Poll (deadline 20 s): a config error ends the process within milliseconds.
  for i in $(seq 1 200); do
    [ -s "$d/addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! kill -0 "$pid" 2>/dev/null; then
    set +e; wait "$pid"; rc=$?; set -e
    echo "ERROR guard serve exited ($rc) with deploy/kustomize/guard/guard.yaml:"
    cat "$d/log"
    return 1
  fi
  if [ -s "$d/addr" ]; then
    echo "guard serve --config guard.yaml: listening on $(cat "$d/addr")"
    # The Deployment's probe paths answer, and the API wants the token file's token.
    if ! python3 - "$(cat "$d/addr")" "$d/token" <<'EOF'
import sys, urllib.error, urllib.request
addr, token = sys.argv[1].strip(), open(sys.argv[2]).read().strip()
def code(path, tok=None):
    req = urllib.request.Request(f"http://{addr}{path}")
    if tok:
        req.add_header("Authorization", f"Bearer {tok}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
want = [("/-/healthy", None, 200), ("/-/ready", None, 200),
        ("/api/v1/status", None, 401), ("/api/v1/status", "wrong", 401), ("/api/v1/status", token, 200)]
bad = 0
for path, tok, expected in want:
    got = code(path, tok)
    who = "no token" if tok is None else ("wrong token" if tok == "wrong" else "token file's token")
    print(f"  GET {path} ({who}): {got}{'' if got == expected else f', want {expected}'}")
    bad += got != expected
sys.exit(1 if bad else 0)
EOF
    then
      kill "$pid"; wait "$pid" 2>/dev/null || true
      return 1
    fi
  else
    echo "ERROR guard serve --config guard.yaml: still not listening after ${i} polls (20 s):"
    cat "$d/log"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    return 1
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "negative control: $(head -1 "$d/bad.log")"
}

# guard runs `controller` in the cluster: run the real binary with the rendered
# Deployment's own args and env names, the files of its ConfigMap in place of
# the mount, and probe what the Deployment and HTTPRoute point at. There is no
# API server here: the kubeconfig points at a closed loopback port, so guard
# loads and validates everything, listens, and never becomes leader.
guard_controller() {
  local d="$work/controller" bin="$root/target/debug/guard" pid i rc
  [ -x "$bin" ] || { echo "ERROR $bin missing (the guard config check builds it)"; return 1; }
  mkdir -p "$d"
  # The controller serves guard's API too: it wants api.token_file's token.
  printf 'check-delivery-token\n' > "$d/token"
  printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: none\n  context:\n    cluster: none\n    user: none\ncurrent-context: none\nusers:\n- name: none\n  user:\n    token: none\n' > "$d/kubeconfig"
  # args.txt: one argument a line, mounts rewritten to $d; env.txt: the names.
  python3 - "$work/manifests/guard.yaml" "$d" <<'EOF'
import os, sys, yaml
src, d = sys.argv[1], sys.argv[2]
docs = [x for x in yaml.safe_load_all(open(src)) if x]
dep = next(x for x in docs if x["kind"] == "Deployment" and x["metadata"]["name"] == "guard")
pod = dep["spec"]["template"]["spec"]
c = next(x for x in pod["containers"] if x["name"] == "guard")
mounts = {m["name"]: m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])}
rewrite = {}
for v in pod.get("volumes", []):
    if "configMap" in v and v["name"] in mounts:
        cm = next(x for x in docs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == v["configMap"]["name"])
        local = os.path.join(d, "mnt", v["name"])
        os.makedirs(local, exist_ok=True)
        for key, text in cm.get("data", {}).items():
            if key == "guard.yaml":  # paths that exist only in the pod
                text = text.replace("/var/lib/guard/", d + "/").replace("/var/run/secrets/guard/api/", d + "/")
            open(os.path.join(local, key), "w").write(text)
        rewrite[mounts[v["name"]]] = local
args = []
for a in c.get("args", []):
    for mount, local in rewrite.items():
        if a.startswith(mount + "/"):
            a = local + a[len(mount):]
    args.append(a)
open(os.path.join(d, "args.txt"), "w").write("\n".join(args) + "\n")
route = next((x for x in docs if x["kind"] == "HTTPRoute"), None)
prefixes = [m["path"]["value"] for r in (route or {}).get("spec", {}).get("rules", []) for m in r.get("matches", [])]
probes = [c[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")]
open(os.path.join(d, "probes.txt"), "w").write("\n".join(probes) + "\n")
open(os.path.join(d, "prefixes.txt"), "w").write("\n".join(prefixes) + "\n")
print("Deployment args: " + " ".join(c.get("args", [])))
EOF
  local args=()
  mapfile -t args < "$d/args.txt"
  # Negative controls: a review template that is not the overlay, and no webhook
  # secret, must each stop the controller before it starts anything.
  sed 's#app.kubernetes.io/managed-by: guard#app.kubernetes.io/managed-by: someone#' \
    deploy/kustomize/guard/review-template.yaml > "$d/bad-template.yaml"
  local bad_args=("${args[@]}")
  for i in "${!bad_args[@]}"; do
    [ "${bad_args[$i]}" = --review-template ] && bad_args[i+1]="$d/bad-template.yaml"
  done
  if KUBECONFIG="$d/kubeconfig" GUARD_GITHUB_WEBHOOK_SECRET=x timeout 20 "$bin" "${bad_args[@]}" --listen 127.0.0.1:0 > "$d/bad-template.log" 2>&1; then
    echo "ERROR guard controller accepted a review template without managed-by: guard"; return 1
  fi
  if env -u GUARD_GITHUB_WEBHOOK_SECRET KUBECONFIG="$d/kubeconfig" timeout 20 "$bin" "${args[@]}" --listen 127.0.0.1:0 > "$d/no-secret.log" 2>&1; then
    echo "ERROR guard controller started review apps without a webhook secret"; return 1
  fi
  # Each refused for the reason under test, not for something else.
  grep -q 'managed-by' "$d/bad-template.log" || { echo "ERROR bad template refused for another reason:"; cat "$d/bad-template.log"; return 1; }
  grep -q 'GUARD_GITHUB_WEBHOOK_SECRET' "$d/no-secret.log" || { echo "ERROR missing secret refused for another reason:"; cat "$d/no-secret.log"; return 1; }
  echo "negative control (template): $(grep -m1 'managed-by' "$d/bad-template.log" | cut -c1-200)"
  echo "negative control (no secret): $(grep -m1 'GUARD_GITHUB_WEBHOOK_SECRET' "$d/no-secret.log" | cut -c1-200)"
  (cd "$d" && KUBECONFIG="$d/kubeconfig" GUARD_GITHUB_WEBHOOK_SECRET=check-delivery-secret \
    POD_NAME=guard-check-0 POD_NAMESPACE=guard-system \
    exec "$bin" "${args[@]}" --listen 127.0.0.1:0 --address-file "$d/addr") > "$d/log" 2>&1 &
  pid=$!
  # Poll (deadline 10 s): a config or template error ends the process at once.
  for i in $(seq 1 100); do
    [ -s "$d/addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -s "$d/addr" ]; then
    kill "$pid" 2>/dev/null || true
    set +e; wait "$pid"; rc=$?; set -e
    echo "ERROR guard ${args[*]} did not listen (exit $rc):"
    cat "$d/log"
    return 1
  fi
  echo "guard controller with the ConfigMap's guard.yaml and review template: listening on $(cat "$d/addr")"
  set +e
  python3 - "$(cat "$d/addr")" "$d/probes.txt" "$d/prefixes.txt" "$d/token" <<'EOF'
import hashlib, hmac, json, sys, urllib.error, urllib.request
addr = sys.argv[1].strip()
token = open(sys.argv[4]).read().strip()
probes = open(sys.argv[2]).read().split()
prefixes = open(sys.argv[3]).read().split()
hook = "/api/v1/github/webhook"
def call(path, body=None, headers=None):
    req = urllib.request.Request(f"http://{addr}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
def sign(secret, body):
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
bad = 0
def expect(what, got, want):
    global bad
    print(f"  {what}: {got}{'' if got == want else f', want {want}'}")
    bad += got != want
for p in probes:
    expect(f"GET {p} (Deployment probe)", call(p)[0], 200)
code, body = call("/-/leader")
leading = json.loads(body).get("leading") if code == 200 else None
expect("GET /-/leader without an API server: leading", leading, False)
ping = b'{"zen":"check-delivery"}'
ev = {"X-GitHub-Event": "ping", "Content-Type": "application/json"}
expect(f"POST {hook} unsigned", call(hook, ping, ev)[0], 401)
expect(f"POST {hook} signed with another secret", call(hook, ping, {**ev, "X-Hub-Signature-256": sign(b"other", ping)})[0], 401)
expect(f"POST {hook} signed with GUARD_GITHUB_WEBHOOK_SECRET", call(hook, ping, {**ev, "X-Hub-Signature-256": sign(b"check-delivery-secret", ping)})[0], 200)
routed = any(hook.startswith(p) for p in prefixes)
expect(f"HTTPRoute guard routes {hook} (prefixes {prefixes})", routed, True)
# The deploy API: token required; a replica that does not lead refuses it (503, the CLI retries).
dep = json.dumps({"service": "ultra-boost", "environment": "production", "build": "1"}).encode()
js = {"Content-Type": "application/json"}
expect("POST /api/v1/deployments without a token", call("/api/v1/deployments", dep, js)[0], 401)
expect("POST /api/v1/deployments with the token file's token, not leading", call("/api/v1/deployments", dep, {**js, "Authorization": f"Bearer {token}"})[0], 503)
expect("GET /metrics", call("/metrics")[0], 200)
sys.exit(1 if bad else 0)
EOF
  rc=$?
  set -e
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  return "$rc"
}

# ---------------------------------------------------------------------------
run_checkov() {
  local scan="$work/checkov"
  mkdir -p "$scan/manifests" "$scan/terraform"
  cp Dockerfile "$scan/"
  cp "$work"/manifests/*.yaml "$scan/manifests/"
  cp deploy/terraform/*.tf "$scan/terraform/"
  set +e
  checkov --config-file .checkov.yaml -d "$scan" -o json > "$work/checkov.json" 2> "$work/checkov.err"
  local rc=$?
  set -e
  # checkov must have seen every Terraform resource (it does not count data sources).
  local tf_blocks
  tf_blocks=$(cat deploy/terraform/*.tf | grep -cE '^resource "')
  python3 - "$work/checkov.json" "$rc" "$tf_blocks" <<'EOF'
import json, sys
path, rc, tf_blocks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    reports = json.load(open(path))
except json.JSONDecodeError as e:
    print(f"ERROR checkov produced no JSON report ({e}); exit {rc}")
    sys.exit(1)
reports = reports if isinstance(reports, list) else [reports]
errors = []
seen = {}
for r in reports:
    s = r["summary"]
    seen[r["check_type"]] = s
    print(f"checkov {s['checkov_version']} {r['check_type']:<11} passed {s['passed']:>4}  failed {s['failed']}  skipped {s['skipped']}  "
          f"resources {s['resource_count']}  parsing errors {s['parsing_errors']}")
    if s["parsing_errors"]:
        errors.append(f"{r['check_type']}: {s['parsing_errors']} file(s) checkov could not parse")
    for c in r["results"]["failed_checks"]:
        errors.append(f"{c['check_id']} {c['check_name']}: {c['resource']} in {c['file_path']}")
    for c in r["results"]["skipped_checks"]:
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        if len(reason.strip()) < 20:
            errors.append(f"{c['check_id']} skipped for {c['resource']} without a real reason: '{reason}'")
        else:
            print(f"  skip {c['check_id']} ({c['resource']}): {reason}")
for fw, minimum in (("dockerfile", 1), ("kubernetes", 20), ("terraform", tf_blocks)):
    if fw not in seen or seen[fw]["resource_count"] < minimum:
        errors.append(f"checkov scanned too little for {fw}: {seen.get(fw, {}).get('resource_count', 0)} resources")
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors or rc not in (0,) else 0)
EOF
}

# ---------------------------------------------------------------------------
terraform() {
  local tf=()
  mapfile -t tf < <(repo_files 'deploy/terraform/*.tf' '*.tf')
  [ ${#tf[@]} -gt 0 ] || { echo "no .tf files"; return 1; }
  hcl2 - "${tf[@]}" <<'EOF'
import re, sys, hcl2
errors = []
blocks = {}
for f in sys.argv[1:]:
    try:
        with open(f, encoding="utf-8") as fh:
            doc = hcl2.load(fh)
    except Exception as e:  # python-hcl2 raises lark errors of several types
        errors.append(f"{f}: does not parse: {e}")
        continue
    print(f"parsed {f}: {', '.join(sorted(doc))}")
    for k, v in doc.items():
        blocks.setdefault(k, []).extend(v)
    text = open(f, encoding="utf-8").read()
    for m in re.finditer(r'^\s*(token|password|secret|api_key|access_key)\s*=\s*"', text, re.M | re.I):
        errors.append(f"{f}: literal credential '{m.group(1)}' (use the environment, e.g. DIGITALOCEAN_TOKEN)")
def unq(v):
    return v[1:-1] if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"' else v
pins = [(unq(k), v) for t in blocks.get("terraform", []) for rp in t.get("required_providers", []) for k, v in rp.items()]
do = [v for k, v in pins if k == "digitalocean"]
if not do:
    errors.append("no required_providers entry for digitalocean")
for v in do:
    src, ver = unq(v.get("source")), unq(v.get("version", ""))
    if src != "digitalocean/digitalocean" or not re.fullmatch(r"\d+\.\d+\.\d+", str(ver)):
        errors.append(f"digitalocean provider must be digitalocean/digitalocean pinned to an exact version, is {src} {ver}")
    else:
        print(f"provider digitalocean/digitalocean pinned to {ver}")
for p in blocks.get("provider", []):
    for name, cfg in p.items():
        if "token" in cfg:
            errors.append(f"provider {unq(name)} sets token in a file")
outputs = [unq(k) for o in blocks.get("output", []) for k in o if not k.startswith("__")]
variables = [unq(k) for v in blocks.get("variable", []) for k in v if not k.startswith("__")]
print(f"{len(variables)} variables, {len(outputs)} outputs")
if not outputs or not variables:
    errors.append("Terraform needs variables and outputs")
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
EOF
  local stray
  stray=$(repo_files '*.tfvars' '*.tfstate' '*.tfstate.*' '.terraform/*' | head -5)
  if [ -n "$stray" ]; then
    echo "ERROR state or variable files in the repository (may hold secrets): $stray"
    return 1
  fi
}

# ---------------------------------------------------------------------------
prometheus() {
  (cd deploy/prometheus && promtool check config prometheus.yml)
  local rules=deploy/prometheus/rules/ultra-boost.rules.yml
  if [ ! -f "$rules" ]; then
    echo "ERROR $rules is missing: generate it with 'make rules' (guard slo generate from slos/ultra-boost.yml)"
    return 1
  fi
  promtool check rules deploy/prometheus/rules/*.yml
  # The dashboard and Alertmanager depend on names in the generated rules.
  python3 - "$rules" deploy/grafana/dashboards/*.json <<'EOF'
import json, re, sys, yaml
rules_file, dashboards = sys.argv[1], sys.argv[2:]
doc = yaml.safe_load(open(rules_file, encoding="utf-8"))
groups = doc.get("groups") or (doc.get("spec") or {}).get("groups") or []
records = {r["record"] for g in groups for r in g.get("rules", []) if "record" in r}
alerts = [r for g in groups for r in g.get("rules", []) if "alert" in r]
severities = {(a.get("labels") or {}).get("sloth_severity") for a in alerts}
errors = []
for d in dashboards:
    used = set(re.findall(r"\bslo:[a-z_]+:[a-z_0-9]+", open(d, encoding="utf-8").read()))
    for name in sorted(used - records):
        errors.append(f"{d} uses {name}, which {rules_file} does not record")
for sev, receiver in (("page", "PagerDuty"), ("ticket", "Slack")):
    if sev not in severities:
        errors.append(f"no alert in {rules_file} has sloth_severity={sev} (routed to {receiver} by Alertmanager)")
# Every job the SLO queries select is scraped under that name, by prometheus.yml
# and by the ServiceMonitor's relabelling.
exprs = " ".join(str(r.get("expr", "")) for g in groups for r in g.get("rules", []))
jobs = set(re.findall(r'job="([^"]+)"', exprs))
prom = yaml.safe_load(open("deploy/prometheus/prometheus.yml", encoding="utf-8"))
scraped = {c["job_name"] for c in prom.get("scrape_configs", [])}
sm = yaml.safe_load(open("deploy/kustomize/base/servicemonitor.yaml", encoding="utf-8"))
sm_jobs = {r.get("replacement") for ep in sm["spec"]["endpoints"] for r in ep.get("relabelings", []) if r.get("targetLabel") == "job"}
for j in sorted(jobs):
    if j not in scraped:
        errors.append(f'the SLO rules select job="{j}", which prometheus.yml does not scrape')
    if j not in sm_jobs:
        errors.append(f'the SLO rules select job="{j}", which the ServiceMonitor does not set')
print(f"jobs the SLO rules select: {', '.join(sorted(jobs))}; scraped by prometheus.yml and the ServiceMonitor")
print(f"{rules_file}: {len(records)} recording rules, {len(alerts)} alerts "
      f"(sloth_severity: {', '.join(sorted(s for s in severities if s))})")
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
EOF
}

alertmanager() {
  amtool check-config deploy/alertmanager/alertmanager.yml
  local cfg=deploy/alertmanager/alertmanager.yml got
  # Routing as intended: page -> PagerDuty, ticket -> Slack, both also -> guard.
  got=$(amtool config routes test --config.file="$cfg" sloth_severity=page sloth_id=ultra-boost-requests-availability alertname=x 2>/dev/null)
  echo "page alert   -> $got"
  [ "$got" = "guard,page-pagerduty" ] || { echo "ERROR page alerts must reach guard and PagerDuty"; return 1; }
  got=$(amtool config routes test --config.file="$cfg" sloth_severity=ticket sloth_id=ultra-boost-requests-availability alertname=x 2>/dev/null)
  echo "ticket alert -> $got"
  [ "$got" = "guard,ticket-slack" ] || { echo "ERROR ticket alerts must reach guard and Slack"; return 1; }
  if grep -nE '(routing_key|service_key|api_url|credentials):' "$cfg"; then
    echo "ERROR secrets inline in $cfg: use the *_file settings"
    return 1
  fi
}

grafana() {
  deploy/grafana/check-dashboards.py
}

# ---------------------------------------------------------------------------
makefile() {
  local help t missing=()
  help=$(make --no-print-directory help)
  for t in help ultra-boost guard unit-tests push push-% push-pr deploy-prd demo test bench manifests rules; do
    grep -qE "^  $t " <<<"$help" || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] || { echo "ERROR make help lacks: ${missing[*]}"; return 1; }
  echo "make help lists every target"
  for t in ultra-boost guard unit-tests push push-ultra-boost push-guard push-pr deploy-prd demo test bench manifests rules; do
    make --no-print-directory -n "$t" BUILD=86 PR=42 GUARD_API_TOKEN=x > /dev/null || { echo "ERROR make -n $t fails"; return 1; }
  done
  echo "make -n: every target expands"
  local ran b
  ran=$(make --no-print-directory bench BENCH_RUN=echo) || { echo "ERROR make bench fails"; return 1; }
  for b in bench/*/run.sh; do
    grep -qxF "$b" <<<"$ran" || { echo "ERROR make bench does not run $b"; return 1; }
  done
  echo "make bench runs every bench/*/run.sh"
  if make --no-print-directory -n deploy-prd BUILD= > /dev/null 2>&1; then
    echo "ERROR make deploy-prd without BUILD must fail"; return 1
  fi
  make --no-print-directory -n deploy-prd BUILD=86 GUARD_API_TOKEN=x | grep -q -- 'deploy ultra-boost --env production --build 86 --wait' \
    || { echo "ERROR deploy-prd must run guard deploy ultra-boost --env production --build N --wait"; return 1; }
  echo "deploy-prd BUILD=86 -> guard deploy ultra-boost --env production --build 86 --wait"
}

drone() {
  python3 - <<'EOF'
import re, sys, yaml
text = open(".drone.yml", encoding="utf-8").read()
docs = [d for d in yaml.safe_load_all(text) if d]
errors = []
pipes = {d.get("name"): d for d in docs if d.get("kind") == "pipeline"}
for name in ("pr", "main", "promote"):
    if name not in pipes:
        errors.append(f"no pipeline '{name}'")
def trig(p, key):
    return set(pipes.get(p, {}).get("trigger", {}).get(key, []))
if "pull_request" not in trig("pr", "event"):
    errors.append("pipeline pr must trigger on pull_request")
if "main" not in trig("main", "branch") or "push" not in trig("main", "event"):
    errors.append("pipeline main must trigger on push to main")
if "promote" not in trig("promote", "event"):
    errors.append("pipeline promote must trigger on promote")
def steps_text(p):
    return yaml.safe_dump(pipes.get(p, {}).get("steps", []))
if "push-pr" not in steps_text("pr"):
    errors.append("pipeline pr does not push :pr-<N> (make push-pr)")
for p in ("main", "promote"):
    s = steps_text(p)
    if not re.search(r"deploy.*ultra-boost.*--env.*--build.*--wait", s.replace("\n", " ")):
        errors.append(f"pipeline {p} does not hand the build to guard (guard deploy ... --wait)")
for p, d in pipes.items():
    for step in d.get("steps", []):
        for k, v in (step.get("environment") or {}).items():
            if isinstance(v, str) and re.search(r"token|password|secret", k, re.I):
                errors.append(f"pipeline {p} step {step['name']}: {k} is inline, use from_secret")
if re.search(r"kubeconfig|KUBE_TOKEN|KUBERNETES_|kubectl apply|client-certificate", text, re.I):
    errors.append("CI must not hold cluster credentials or apply manifests: guard deploys")
mk = open("Makefile", encoding="utf-8").read()
if "cache-to type=registry" not in mk or "cache-from type=registry" not in mk:
    errors.append("Makefile: BuildKit registry cache is not wired")
if "BUILDER=" not in text or "buildx create --name" not in text:
    errors.append("pipelines must build with a long-lived buildx builder (cache mounts)")
if ".ci/run" not in steps_text("pr") or ".ci/run" not in steps_text("main"):
    errors.append("pipelines pr and main must run the test suite (.ci/run)")
for e in errors:
    print("ERROR", e)
print(f"pipelines: {', '.join(pipes)}; steps: " + "; ".join(f"{p}: {', '.join(s['name'] for s in d.get('steps', []))}" for p, d in pipes.items()))
sys.exit(1 if errors else 0)
EOF
}

# ---------------------------------------------------------------------------
shell_scripts() {
  local files=()
  mapfile -t files < <(repo_files '*.sh' scripts/test .ci/run)
  [ ${#files[@]} -gt 0 ] || { echo "no shell scripts found"; return 1; }
  echo "${#files[@]} scripts: ${files[*]}"
  shellcheck --external-sources "${files[@]}"
}

yaml_files() {
  local files=()
  mapfile -t files < <(repo_files '*.yml' '*.yaml' .yamllint .hadolint.yaml .checkov.yaml)
  [ ${#files[@]} -gt 0 ] || { echo "no YAML files found"; return 1; }
  echo "${#files[@]} YAML files (exclusions and reasons in .yamllint)"
  yamllint --strict --config-file .yamllint "${files[@]}"
}

# ---------------------------------------------------------------------------
echo "== delivery assets ($root)"
check "tools present" tools
if [ ${#failed[@]} -gt 0 ]; then
  echo "== delivery checks cannot run: ${failed[*]}"
  exit 1
fi
check "Dockerfile: hadolint, BuildKit targets and caches" dockerfile
check "Kubernetes: kustomize base, overlays, guard; render.sh" render
if [ -s "$work/manifests/production.yaml" ]; then
  check "Kubernetes: kubernetes-validate --strict + CRD schemas" validate_manifests
  check "Kubernetes: production, review and guard policy" policy
  check "Kubernetes: validators reject broken manifests" validator_self_tests
  check "checkov: Dockerfile, manifests, Terraform, secrets" run_checkov
else
  failed+=("manifests not rendered: validation, policy and checkov could not run")
fi
check "guard: the real binary serves with deploy/kustomize/guard/guard.yaml" guard_config
if [ -s "$work/manifests/guard.yaml" ]; then
  check "guard: the real binary runs the Deployment's controller command with its ConfigMap" guard_controller
fi
check "Terraform: python-hcl2, pinned provider, no secrets" terraform
check "Prometheus: promtool check config and rules" prometheus
check "Alertmanager: amtool check-config and routing" alertmanager
check "Grafana: dashboards" grafana
check "Makefile: targets and help" makefile
check "Drone: pipelines and credentials" drone
check "shellcheck" shell_scripts
check "yamllint" yaml_files

echo "== delivery assets: $(( $(date +%s) - started )) s"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all delivery checks passed"
