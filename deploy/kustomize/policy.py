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
guard-leader and RBAC granting what guard needs and no wildcard. One line per
violation, exit 1 if any.
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


NEEDED = {  # (apiGroup, resource) -> verbs guard uses (see TEAM.md / issue 8)
    ("apps", "deployments"): {"get", "list", "watch", "patch", "update", "create", "delete"},
    ("apps", "replicasets"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "create", "delete", "patch"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "patch", "create"},
    ("", "events"): {"create"},
}


def check_guard(objs):
    w = "guard"
    check_namespace(objs, "guard-system", w)
    d = one(objs, "Deployment", "guard", w)
    if d:
        if d["spec"].get("replicas") != 2:
            fail(f"{w}: guard runs {d['spec'].get('replicas')} replicas, want 2 (leader election)")
        check_pod_security(w, d["spec"]["template"]["spec"])
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
    for (g, res), verbs in NEEDED.items():
        missing = verbs - granted.get(("ClusterRole", g, res), set())
        if missing:
            fail(f"{w}: ClusterRole lacks {sorted(missing)} on {g or 'core'}/{res}")
    if not {"get", "create", "update"} <= granted.get(("Role", "coordination.k8s.io", "leases"), set()):
        fail(f"{w}: the leader-election Role must grant get, create, update on leases")
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
    check_review(load(argv[2]), argv[4])
    check_guard(load(argv[3]))
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    print(f"  policy: production, review (PR {argv[4]}) and guard manifests: {len(errors)} violation(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
