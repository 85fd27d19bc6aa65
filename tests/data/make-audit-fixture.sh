#!/usr/bin/env bash
# Makes tests/data/audit-before-issue14.db: an audit database filled by zt-janitor as it was
# before issue 14 (commit 8711d20), for the migration tests. Plan runs with and without a grace
# period (marks), an apply run that deletes and revokes, an undo of it, and notification
# attempts to a receiver that is not there. Run from the repository root with that build:
#   bash tests/data/make-audit-fixture.sh target/release/zt-janitor
set -euo pipefail
bin=$(realpath "$1")
out=$(pwd)/tests/data/audit-before-issue14.db
work=$(mktemp -d)
trap 'kill $fake 2>/dev/null; rm -rf "$work"' EXIT
port=18787
zones=a1b2c3d4e5f60718293a4b5c6d7e8f90,0f1e2d3c4b5a69788796a5b4c3d2e1f0
"$bin" fake-api --listen 127.0.0.1:$port --registrations 200 --service-tokens 24 \
    --account-tokens 12 --zones $zones --client-certificates 8 \
    --revocation-settles-after-secs 100000 --token fixture-token >"$work/fake.log" 2>&1 &
fake=$!
sleep 1
export CLOUDFLARE_API_TOKEN=fixture-token NOTIFY_URL=http://127.0.0.1:9/hook
config() { # mode grace
    sed -e "s|http://127.0.0.1:8787|http://127.0.0.1:$port|" \
        -e "s|^mode = .*|mode = \"$1\"|" \
        -e "s|^path = .*|path = \"$work/audit.db\"|" \
        -e "s|^max_fraction_per_run = .*|max_fraction_per_run = 1.0\ngrace_days = $2|" \
        config/demo.toml >"$work/config.toml"
    printf '\n[[notify]]\nname = "ops"\nurl_env = "NOTIFY_URL"\nsend = "always"\n' >>"$work/config.toml"
}
run() { "$bin" once --config "$work/config.toml" >/dev/null 2>&1 || true; }
config plan 0; run
config plan 7; run; run
config apply 0; run
"$bin" undo --config "$work/config.toml" --run 4 --yes >/dev/null 2>&1 || true
config plan 7; run
sqlite3 "$work/audit.db" 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null 2>&1 || true
cp "$work/audit.db" "$out"
echo "wrote $out"
