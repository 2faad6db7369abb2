#!/usr/bin/env bash
# The shipped manifests (every YAML under cni/deploy) against Kubernetes' own schemas, strictly
# (unknown fields refused), and through yamllint. Tools from tests/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=/opt/vpc-lab-venv
[ -x "$venv/bin/kubernetes-validate" ] || { echo "manifests: $venv is missing: run tests/install-deps.sh" >&2; exit 1; }
# The Kubernetes release whose schemas the manifests must satisfy.
kubernetes=1.34.0
mapfile -t manifests < <(find cni/deploy -name '*.yaml' -o -name '*.yml' | sort)
[ ${#manifests[@]} -gt 0 ] || { echo "manifests: no YAML under cni/deploy" >&2; exit 1; }
"$venv/bin/yamllint" --strict -c tests/yamllint.yaml "${manifests[@]}"
"$venv/bin/kubernetes-validate" --strict --quiet -k "$kubernetes" "${manifests[@]}"
echo "manifests: ${#manifests[@]} passed, 0 failed"
