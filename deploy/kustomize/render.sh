#!/usr/bin/env bash
# Renders an overlay with the build it must run, so nothing is ever applied with
# a placeholder tag, `latest` or `None`, and CI never has to deploy twice.
#
#   render.sh production --build 86            # image :86, namespace ultra-boost
#   render.sh review --pr 42                   # image :pr-42, namespace ultra-boost-pr-42
#   render.sh guard --build 86                 # guard itself, namespace guard-system
#   render.sh production --build 86 --image registry.example/ultra-boost
#
# It writes a throw-away kustomization that uses the overlay as its base and
# sets the image tag (and, for review apps, the namespace), then prints
# `kubectl kustomize` of it. guard's kubernetes platform does the same in memory.
set -euo pipefail

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac
overlay=$1; shift
build=""; pr=""; image=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=${2:-}; shift 2 ;;
    --pr) pr=${2:-}; shift 2 ;;
    --image) image=${2:-}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "render.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
case "$overlay" in
  guard) rel=guard; image_name=registry.digitalocean.com/ultra-boost/guard ;;
  production|review) rel=overlays/$overlay; image_name=registry.digitalocean.com/ultra-boost/ultra-boost ;;
  *) echo "render.sh: unknown target '$overlay' (production, review or guard)" >&2; exit 2 ;;
esac

namespace=""
case "$overlay" in
  review)
    if ! [[ "$pr" =~ ^[1-9][0-9]{0,8}$ ]]; then
      echo "render.sh: review needs --pr N (a pull request number), got '${pr}'" >&2
      exit 2
    fi
    tag="pr-$pr"
    namespace="ultra-boost-pr-$pr"
    ;;
  *)
    # Build numbers or short commit SHAs: the tags CI pushes. Never latest/None.
    if ! [[ "$build" =~ ^([0-9]+|[0-9a-f]{7,40})$ ]]; then
      echo "render.sh: $overlay needs --build N (a CI build number or commit SHA), got '${build}'" >&2
      exit 2
    fi
    tag="$build"
    ;;
esac

# kustomize accepts only relative paths to a base: the scratch directory lives
# beside the overlays and is removed on exit.
tmp=$(mktemp -d "$here/.render-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - ../$rel"
  if [ -n "$namespace" ]; then
    echo "namespace: $namespace"
  fi
  # The build on the pod template, in the annotation guard itself writes on
  # every rollout (guard.ultra-boost.dev/build): the ServiceMonitor turns it
  # into the `build` label of every series. Review apps get it from guard,
  # which renders the review overlay itself (see README.md).
  if [ "$overlay" != review ]; then
    echo "patches:"
    echo "  - target:"
    echo "      kind: Deployment"
    echo "    patch: |-"
    echo "      apiVersion: apps/v1"
    echo "      kind: Deployment"
    echo "      metadata:"
    echo "        name: any"
    echo "      spec:"
    echo "        template:"
    echo "          metadata:"
    echo "            annotations:"
    echo "              guard.ultra-boost.dev/build: \"$tag\""
  fi
  echo "images:"
  echo "  - name: $image_name"
  if [ -n "$image" ]; then
    echo "    newName: $image"
  fi
  echo "    newTag: \"$tag\""
} >"$tmp/kustomization.yaml"
kubectl kustomize "$tmp"
