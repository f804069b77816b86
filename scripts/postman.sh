#!/usr/bin/env bash
# Runs the old system's Postman collection against a running ccm with newman, and fails on
# any failed request or assertion.
#
# Needs a running stack (ingest, dialer, retrier, projector; NATS; PostgreSQL) and the
# carrier simulator answering GET /health:
#
#   BASE_URL   ccm's HTTP API              (default http://127.0.0.1:8000)
#   TOKEN      an API token of that ingest (default dev-token-12345, the collection's own)
#   MOCK_URL   the carrier simulator       (default http://127.0.0.1:8001)
#   COLLECTION the collection file         (default ingest/tests/compat/…postman_collection.json)
#   NEWMAN_DIR where newman is installed   (default ~/.cache/ccm-newman, outside the repo)
#   ITERATIONS how many times to run it    (default 1; 2 shows a re-run against the same
#              stack passes too: numbers still live are answered as duplicates)
#
# newman comes from the npm registry; it is installed once into NEWMAN_DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_URL="${BASE_URL:-http://127.0.0.1:8000}"
TOKEN="${TOKEN:-dev-token-12345}"
MOCK_URL="${MOCK_URL:-http://127.0.0.1:8001}"
COLLECTION="${COLLECTION:-$here/ingest/tests/compat/Campaign_Call_Manager.postman_collection.json}"
NEWMAN_DIR="${NEWMAN_DIR:-$HOME/.cache/ccm-newman}"
ITERATIONS="${ITERATIONS:-1}"

newman="$NEWMAN_DIR/node_modules/.bin/newman"
if [[ ! -x "$newman" ]]; then
    echo "installing newman into $NEWMAN_DIR" >&2
    mkdir -p "$NEWMAN_DIR"
    npm install --no-audit --no-fund --prefix "$NEWMAN_DIR" newman@6 >&2
fi

# Fail early and clearly when the stack is not up, rather than with 20 connection errors.
for url in "$BASE_URL/healthz" "$MOCK_URL/health"; do
    if ! curl -fsS --max-time 5 -o /dev/null "$url"; then
        echo "postman.sh: $url is not answering; start the stack first" >&2
        exit 2
    fi
done

# Environment variables take precedence over the collection's own variables, so the
# collection runs unchanged.
exec "$newman" run "$COLLECTION" \
    --env-var "baseUrl=$BASE_URL" \
    --env-var "authToken=$TOKEN" \
    --env-var "mockServiceUrl=$MOCK_URL" \
    --iteration-count "$ITERATIONS" \
    --timeout-request 10000 \
    --color off
