#!/usr/bin/env bash
# Create the Secrets of secrets.example.yaml from `sentinel keys federation --out KEYS` files.
#   deploy/k8s/make-secrets.sh KEYS [NAMESPACE]
set -euo pipefail
keys=${1:?usage: make-secrets.sh KEYS_DIR [NAMESPACE]}
ns=(--namespace "${2:-default}")
kubectl "${ns[@]}" create secret generic sentinel-coordinator-tls \
  --from-file=server.pem="$keys/server/server.pem" --from-file=server.key="$keys/server/server.key" \
  --from-file=ca.crt="$keys/ca/ca.crt"
cards=()
for c in "$keys"/nodes/*.card.json; do cards+=(--from-file="$(basename "$c")=$c"); done
kubectl "${ns[@]}" create secret generic sentinel-node-cards "${cards[@]}"
for n in edge-0 gpu-0 central-0; do
  kubectl "${ns[@]}" create secret generic "sentinel-node-$n" \
    --from-file=node.key="$keys/nodes/$n.key" --from-file=node.auth="$keys/nodes/$n.auth" --from-file=ca.crt="$keys/ca/ca.crt"
done
