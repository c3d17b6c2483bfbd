#!/usr/bin/env python3
"""Checks what the rendered manifests must guarantee, beyond schema validity.

Usage: policy.py PRODUCTION.yaml REVIEW.yaml GUARD.yaml REVIEW_PR_NUMBER

Production: 3 replicas; required pod anti-affinity on the hostname and (at
least preferred) on the zone; a PodDisruptionBudget that selects the pods;
RollingUpdate with maxUnavailable 0; probes on /-/ready and /-/healthy;
terminationGracePeriodSeconds greater than drain delay + shutdown timeout;
requests and limits; an HPA on the Deployment with minReplicas >= replicas; a
restricted security context; a ServiceMonitor that reaches the pods; the guard
opt-in label; a restricted Pod Security namespace. Review: the namespace
ultra-boost-pr-<N>, everything in it. guard: 2 replicas, the Lease
guard-leader; the Deployment runs `guard controller` with guard.yaml and the
review template from its ConfigMap, the GitHub webhook secret from a Secret,
probes on /-/ready and /-/healthy of a declared port; RBAC granting exactly
the verbs guard uses (every kind of the review overlay included) and no
wildcard. One line per violation, exit 1 if any.
"""
import re
import sys

import yaml

GUARD_LABEL = "guard.ultra-boost.dev/enabled"
errors = []


def fail(msg):
    errors.append(msg)


def load(path):
    return [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]


def one(objs, kind, name=None, where=""):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(found) != 1:
        fail(f"{where}: expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return None
    return found[0]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items()) and not (selector or {}).get("matchExpressions")


def seconds(value):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(value))
    if not m:
        return None
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


def check_pod_security(where, pod):
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(f"{where}: pod securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{where}: pod seccompProfile must be RuntimeDefault")
    for c in pod.get("containers", []):
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{cw}: readOnlyRootFilesystem must be true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            fail(f"{cw}: capabilities must drop ALL")
        if sc.get("privileged"):
            fail(f"{cw}: must not be privileged")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    fail(f"{cw}: resources.{kind}.{r} missing")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                fail(f"{cw}: no {probe}")
        image = c.get("image", "")
        if re.search(r":(latest|None|unrendered)$", image) or ":" not in image.rsplit("/", 1)[-1]:
            fail(f"{cw}: image '{image}' is not pinned to a build")


def check_namespace(objs, name, where):
    ns = one(objs, "Namespace", name, where)
    if ns and ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        fail(f"{where}: namespace {name} must enforce the restricted Pod Security Standard")
    for o in objs:
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding") and o["metadata"].get("namespace") != name:
            fail(f"{where}: {o['kind']} {o['metadata']['name']} is in namespace {o['metadata'].get('namespace')}, not {name}")


def check_production(objs):
    w = "production"
    check_namespace(objs, "ultra-boost", w)
    d = one(objs, "Deployment", "ultra-boost", w)
    if not d:
        return
    spec, pod = d["spec"], d["spec"]["template"]["spec"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    if d["metadata"].get("labels", {}).get(GUARD_LABEL) != "true":
        fail(f"{w}: Deployment lacks the opt-in label {GUARD_LABEL}: \"true\"")
    if spec.get("replicas") != 3:
        fail(f"{w}: Deployment replicas is {spec.get('replicas')}, want 3")
    ru = spec.get("strategy", {})
    if ru.get("type") != "RollingUpdate" or ru.get("rollingUpdate", {}).get("maxUnavailable") not in (0, "0%"):
        fail(f"{w}: strategy must be RollingUpdate with maxUnavailable 0, is {ru}")
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    req = {t["topologyKey"] for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) if selects(t.get("labelSelector"), labels)}
    pref = {t["podAffinityTerm"]["topologyKey"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
            if selects(t["podAffinityTerm"].get("labelSelector"), labels)}
    if "kubernetes.io/hostname" not in req | pref:
        fail(f"{w}: no pod anti-affinity on kubernetes.io/hostname selecting the pods")
    if "topology.kubernetes.io/zone" not in req | pref:
        fail(f"{w}: no pod anti-affinity on topology.kubernetes.io/zone selecting the pods")
    c = next((c for c in pod["containers"] if c["name"] == "ultra-boost"), None)
    if not c:
        fail(f"{w}: no container named ultra-boost")
        return
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    drain = seconds(env.get("ULTRA_BOOST_DRAIN_DELAY", "5s"))
    shutdown = seconds(env.get("ULTRA_BOOST_SHUTDOWN_TIMEOUT", "10s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if drain is None or shutdown is None or not grace > drain + shutdown:
        fail(f"{w}: terminationGracePeriodSeconds {grace} must exceed drain delay {drain} s + shutdown timeout {shutdown} s")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/-/ready":
        fail(f"{w}: readinessProbe must be GET /-/ready")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/-/healthy":
        fail(f"{w}: livenessProbe must be GET /-/healthy")
    rp = c.get("readinessProbe", {})
    if drain is not None and rp.get("periodSeconds", 10) * rp.get("failureThreshold", 3) > drain:
        fail(f"{w}: readiness probe needs {rp.get('periodSeconds', 10)} s x {rp.get('failureThreshold', 3)} to notice a drain, longer than the {drain} s drain delay")
    check_pod_security(w, pod)
    pdb = one(objs, "PodDisruptionBudget", None, w)
    if pdb and not selects(pdb["spec"].get("selector"), labels):
        fail(f"{w}: the PodDisruptionBudget does not select the Deployment's pods")
    hpa = one(objs, "HorizontalPodAutoscaler", None, w)
    if hpa:
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) != ("Deployment", "ultra-boost"):
            fail(f"{w}: the HPA targets {ref}, not Deployment ultra-boost")
        if hpa["spec"].get("minReplicas", 1) < 3:
            fail(f"{w}: HPA minReplicas below 3")
    sm = one(objs, "ServiceMonitor", None, w)
    if sm:
        svcs = [s for s in objs if s["kind"] == "Service" and selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not svcs:
            fail(f"{w}: the ServiceMonitor selects no Service")
        for s in svcs:
            if not all(labels.get(k) == v for k, v in s["spec"].get("selector", {}).items()):
                fail(f"{w}: Service {s['metadata']['name']} (scraped by the ServiceMonitor) does not select the pods")
            ports = {p.get("name") for p in s["spec"].get("ports", [])}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in ports:
                    fail(f"{w}: ServiceMonitor port {ep.get('port')} is not a port of Service {s['metadata']['name']}")
    svc = one(objs, "Service", "ultra-boost", w)
    if svc and not all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
        fail(f"{w}: Service ultra-boost does not select the Deployment's pods")


def check_review(objs, pr):
    w = f"review (PR {pr})"
    check_namespace(objs, f"ultra-boost-pr-{pr}", w)
    d = one(objs, "Deployment", "ultra-boost", w)
    if d:
        for c in d["spec"]["template"]["spec"]["containers"]:
            if not c["image"].endswith(f":pr-{pr}"):
                fail(f"{w}: image {c['image']} is not :pr-{pr}")
        check_pod_security(w, d["spec"]["template"]["spec"])
    ns = one(objs, "Namespace", None, w)
    if ns and ns["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "guard":
        fail(f"{w}: the review namespace must be labelled app.kubernetes.io/managed-by: guard (guard deletes only those)")


# (apiGroup, resource) -> exactly the verbs guard's kubernetes code uses (the
# kube-rs calls in crates/guard/src/platform/kubernetes, lease.rs, review/).
# The ClusterRole must grant these and nothing more: a verb missing breaks
# guard, a verb extra is privilege nobody uses.
NEEDED = {
    # watcher (list, watch) and list of opted-in Deployments; get; merge patch
    # of the rollout annotation and replicas; replace (update) of the template
    # to revert and promote; the -canary Deployment server-side applied
    # (patch, create) and deleted.
    ("apps", "deployments"): {"get", "list", "watch", "patch", "update", "create", "delete"},
    # The previous ReplicaSet (last good build): listed by the selector.
    ("apps", "replicasets"): {"list"},
    # The pods of a release (pod-template-hash), scraped directly.
    ("", "pods"): {"list"},
    # Review namespaces: read, applied server-side, listed by the TTL sweeper,
    # deleted when the pull request closes.
    ("", "namespaces"): {"get", "list", "create", "delete", "patch"},
    # Review overlay Services (applied) and the <service>-canary Service guard
    # creates when it is missing (get, create).
    ("", "services"): {"get", "create", "patch"},
    # Canary weights: read the route, patch its backendRefs.
    ("gateway.networking.k8s.io", "httproutes"): {"get", "patch"},
}
# Leader election, in guard's namespace (Role): get, create, replace the Lease.
NEEDED_LEASE = {"get", "create", "update"}
# guard applies every object of the review overlay server-side: patch, and
# create when the object does not exist yet.
REVIEW_APPLY = {"create", "patch"}


def plural(kind):
    # The rule of guard's review/mod.rs (api_resource): lower case + s, y -> ies.
    k = kind.lower()
    return k[:-1] + "ies" if k.endswith("y") else k + "s"


def needed_verbs(review_objs):
    needed = {k: set(v) for k, v in NEEDED.items()}
    for o in review_objs:
        group = o["apiVersion"].rsplit("/", 1)[0] if "/" in o["apiVersion"] else ""
        needed.setdefault((group, plural(o["kind"])), set()).update(REVIEW_APPLY)
    return needed


def check_guard_pod(w, objs, pod):
    c = next((c for c in pod["containers"] if c["name"] == "guard"), None)
    if not c:
        fail(f"{w}: no container named guard")
        return
    args = c.get("args", [])
    if args[:1] != ["controller"]:
        fail(f"{w}: guard must run `controller` in the cluster, runs {args[:1]}")
    def flag(name):
        return args[args.index(name) + 1] if name in args[:-1] else None
    # Each file flag must name a file of a mounted ConfigMap.
    mounts = {m["name"]: m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])}
    files = {}
    for v in pod.get("volumes", []):
        if "configMap" in v and v["name"] in mounts:
            cm = one(objs, "ConfigMap", v["configMap"]["name"], w)
            for key in (cm or {}).get("data", {}):
                files[f"{mounts[v['name']]}/{key}"] = key
    for name in ("--config", "--review-template"):
        path = flag(name)
        if path is None:
            fail(f"{w}: guard controller runs without {name}")
        elif path not in files:
            fail(f"{w}: {name} {path} is no file of a mounted ConfigMap ({', '.join(sorted(files)) or 'none'})")
    env = {e["name"]: e for e in c.get("env", [])}
    secret = env.get("GUARD_GITHUB_WEBHOOK_SECRET")
    if flag("--github-webhook-secret-file") is None:
        if not secret:
            fail(f"{w}: no GUARD_GITHUB_WEBHOOK_SECRET: guard controller refuses --review-template without it")
        elif "value" in secret or "secretKeyRef" not in secret.get("valueFrom", {}):
            fail(f"{w}: GUARD_GITHUB_WEBHOOK_SECRET must come from a Secret (valueFrom.secretKeyRef), never a literal")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("readinessProbe", "/-/ready"), ("livenessProbe", "/-/healthy")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            fail(f"{w}: {probe} must be GET {path} (guard controller's endpoint), is {get.get('path')}")
        if get.get("port") not in ports and get.get("port") not in ports.values():
            fail(f"{w}: {probe} port {get.get('port')} is not a port the container declares ({ports})")


def check_guard(objs, review_objs):
    w = "guard"
    check_namespace(objs, "guard-system", w)
    d = one(objs, "Deployment", "guard", w)
    if d:
        if d["spec"].get("replicas") != 2:
            fail(f"{w}: guard runs {d['spec'].get('replicas')} replicas, want 2 (leader election)")
        check_pod_security(w, d["spec"]["template"]["spec"])
        check_guard_pod(w, objs, d["spec"]["template"]["spec"])
    one(objs, "Lease", "guard-leader", w)
    granted = {}
    for kind in ("ClusterRole", "Role"):
        for r in [o for o in objs if o["kind"] == kind]:
            for rule in r.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    if "*" in rule.get(field, []):
                        fail(f"{w}: {kind} {r['metadata']['name']} grants '*' in {field}")
                if "secrets" in rule.get("resources", []):
                    fail(f"{w}: {kind} {r['metadata']['name']} grants access to secrets")
                for g in rule.get("apiGroups", []):
                    for res in rule.get("resources", []):
                        granted.setdefault((kind, g, res), set()).update(rule.get("verbs", []))
    needed = needed_verbs(review_objs)
    for (g, res), verbs in sorted(needed.items()):
        missing = verbs - granted.get(("ClusterRole", g, res), set())
        if missing:
            fail(f"{w}: ClusterRole lacks {sorted(missing)} on {g or 'core'}/{res}")
    for (kind, g, res), verbs in sorted(granted.items()):
        if kind != "ClusterRole":
            continue
        extra = verbs - needed.get((g, res), set())
        if extra:
            fail(f"{w}: ClusterRole grants {sorted(extra)} on {g or 'core'}/{res}, which guard does not use (least privilege)")
    lease_verbs = granted.get(("Role", "coordination.k8s.io", "leases"), set())
    if lease_verbs != NEEDED_LEASE:
        fail(f"{w}: the leader-election Role must grant exactly {sorted(NEEDED_LEASE)} on leases, grants {sorted(lease_verbs)}")
    for (kind, g, res) in granted:
        if kind == "Role" and (g, res) != ("coordination.k8s.io", "leases"):
            fail(f"{w}: the leader-election Role grants {g or 'core'}/{res}; it is for the Lease only")
    if ("ClusterRole", "coordination.k8s.io", "leases") in granted:
        fail(f"{w}: leases must be granted in guard's namespace only (Role), not cluster-wide")
    bindings = [o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    for b in bindings:
        for s in b.get("subjects", []):
            if (s.get("kind"), s.get("name"), s.get("namespace")) != ("ServiceAccount", "guard", "guard-system"):
                fail(f"{w}: {b['kind']} {b['metadata']['name']} binds {s}, not guard's service account")


def main(argv):
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    check_production(load(argv[1]))
    review = load(argv[2])
    check_review(review, argv[4])
    check_guard(load(argv[3]), review)
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    print(f"  policy: production, review (PR {argv[4]}) and guard manifests: {len(errors)} violation(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
