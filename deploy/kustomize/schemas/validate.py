#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests, leaving no object unchecked.

Usage: validate.py KUBERNETES_VERSION FILE...

Built-in kinds go to `kubernetes-validate --strict` (the API server's OpenAPI
schemas, unknown fields rejected). Custom resources are checked against the
JSON Schemas beside this file (see README.md). Any object whose kind has
neither is an error, never a silent skip. Also enforces our image policy: every
container image has an explicit tag that is not `latest`, `None` or the
`unrendered` placeholder.
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import jsonschema
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CRD_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute.gateway.networking.k8s.io_v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com_v1.json",
}
FORBIDDEN_TAGS = {"latest", "none", "unrendered", ""}


def images(obj):
    """Yields every container image in a workload object."""
    spec = obj.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec") or {}
    if obj.get("kind") == "Pod":
        pod = spec
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(key) or []:
            yield c.get("name", "?"), c.get("image", "")


def image_errors(where, obj):
    errs = []
    for cname, image in images(obj):
        ref = image.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else ""
        if "@sha256:" not in image and tag.lower() in FORBIDDEN_TAGS:
            errs.append(f"{where}: container {cname}: image '{image}' has tag '{tag or '(none)'}'; "
                        "pin a build (render with deploy/kustomize/render.sh)")
    return errs


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    version, files = argv[1], argv[2:]
    errors = []
    builtin = []
    checked_crd = 0
    for f in files:
        docs = [d for d in yaml.safe_load_all(open(f, encoding="utf-8")) if d is not None]
        if not docs:
            errors.append(f"{f}: no objects rendered")
        for i, obj in enumerate(docs):
            kind, api = obj.get("kind"), obj.get("apiVersion")
            name = (obj.get("metadata") or {}).get("name", "?")
            where = f"{f}: document {i + 1} ({api} {kind} {name})"
            errors.extend(image_errors(where, obj))
            schema_file = CRD_SCHEMAS.get((api, kind))
            if schema_file:
                schema = json.loads((HERE / schema_file).read_text(encoding="utf-8"))
                validator = jsonschema.Draft202012Validator(schema)
                problems = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
                for p in problems:
                    path = ".".join(str(x) for x in p.absolute_path) or "(root)"
                    errors.append(f"{where}: {path}: {p.message}")
                checked_crd += 1
                print(f"  {'FAIL' if problems else 'ok  '} {where} against schemas/{schema_file}")
            elif api and "/" in api and "." in api.split("/")[0] and not api.split("/")[0].endswith(".k8s.io"):
                errors.append(f"{where}: custom resource with no schema in {HERE}; add one, do not skip")
            else:
                builtin.append(obj)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump_all(builtin, tmp, sort_keys=False)
    proc = subprocess.run(
        ["kubernetes-validate", "--strict", "--kubernetes-version", version, tmp.name],
        capture_output=True, text=True, check=False)
    out = (proc.stdout + proc.stderr).replace(tmp.name, "built-in objects")
    pathlib.Path(tmp.name).unlink()
    for line in out.splitlines():
        print("  " + line)
        # A kind kubernetes-validate has no schema for is a failure, not a warning.
        if "Couldn't find schema" in line or line.startswith(("ERROR", "CRITICAL")):
            errors.append(line)
    if proc.returncode != 0:
        errors.append(f"kubernetes-validate exited {proc.returncode}")
    print(f"  {len(builtin)} built-in objects (kubernetes-validate --strict, v{version}), "
          f"{checked_crd} custom resources (JSON Schema)")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
