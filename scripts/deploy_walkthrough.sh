#!/usr/bin/env bash
# The deployment guide's commands, run end to end on one machine (loopback only).
set -euo pipefail
export MLFLOW_DISABLE_TELEMETRY=true
VENV=${VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
ROOT=/tmp/deploy
PORT=5055
PGPASS=pg-change-me
ADMINPASS=admin-change-me-42
FLASK_KEY=$(openssl rand -hex 32 2>/dev/null || head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")
cd /; rm -rf "$ROOT"; mkdir -p "$ROOT/artifacts" "$ROOT/trainer1" "$ROOT/trainer2"

echo "## 1. PostgreSQL: the distribution's cluster, one role, two databases"
pg_ctlcluster 15 main status >/dev/null || pg_ctlcluster 15 main start
su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<SQL
DROP DATABASE IF EXISTS mlflow; DROP DATABASE IF EXISTS mlflow_auth; DROP ROLE IF EXISTS mlflow;
CREATE ROLE mlflow LOGIN PASSWORD '$PGPASS';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
SQL

echo "## 2. basic-auth configuration"
cat > "$ROOT/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow:$PGPASS@127.0.0.1:5432/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
chmod 600 "$ROOT/basic_auth.ini"

echo "## 3. the tracking server"
MLFLOW_AUTH_CONFIG_PATH="$ROOT/basic_auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$ADMINPASS" \
MLFLOW_FLASK_SERVER_SECRET_KEY="$FLASK_KEY" \
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
  setsid "$VENV/bin/mlflow" server --app-name basic-auth --host 127.0.0.1 --port $PORT --workers 2 \
  --backend-store-uri "postgresql+psycopg2://mlflow:$PGPASS@127.0.0.1:5432/mlflow" \
  --artifacts-destination "$ROOT/artifacts" > "$ROOT/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill -TERM -- -$SERVER_PID 2>/dev/null || true; sleep 3; kill -KILL -- -$SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; kill -0 $SERVER_PID || { tail -5 "$ROOT/server.log"; exit 1; }; sleep 1; done
curl -sf "http://127.0.0.1:$PORT/health"; echo " <- /health (no login needed)"

echo "## 4. users: anonymous is refused, admin creates one user per trainer"
curl -s -o /dev/null -w "anonymous search: HTTP %{http_code}\n" "http://127.0.0.1:$PORT/api/2.0/mlflow/experiments/search?max_results=1"
for u in trainer1 trainer2; do
  curl -sf -u "admin:$ADMINPASS" -X POST "http://127.0.0.1:$PORT/api/2.0/mlflow/users/create" \
       -H 'Content-Type: application/json' -d "{\"username\": \"$u\", \"password\": \"$u-secret-pw\"}"; echo
done

echo "## 5. trainer1 trains (creates the experiment, its runs and registered models)"
cd "$ROOT/trainer1"
MLFLOW_TRACKING_URI="http://127.0.0.1:$PORT" MLFLOW_TRACKING_USERNAME=trainer1 MLFLOW_TRACKING_PASSWORD=trainer1-secret-pw \
  timeout 600 "$VENV/bin/mlflow-persist" run --steps 30 --no-progress > run.log 2>&1; echo "trainer1 run: exit $?"
tail -3 run.log
MLFLOW_TRACKING_URI="http://127.0.0.1:$PORT" MLFLOW_TRACKING_USERNAME=trainer1 MLFLOW_TRACKING_PASSWORD=trainer1-secret-pw \
  "$VENV/bin/mlflow-persist" status --json | head -c 600; echo

echo "## 6. trainer2 with only the default READ permission"
cd "$ROOT/trainer2"
set +e
MLFLOW_TRACKING_URI="http://127.0.0.1:$PORT" MLFLOW_TRACKING_USERNAME=trainer2 MLFLOW_TRACKING_PASSWORD=trainer2-secret-pw \
  timeout 600 "$VENV/bin/mlflow-persist" run --steps 20 --no-progress > run-read.log 2>&1; echo "trainer2 (READ) run: exit $?"
set -e
tail -3 run-read.log

echo "## 7. admin: a role 'trainers' with EDIT on every experiment and registered model, given to trainer2"
API="http://127.0.0.1:$PORT/api/3.0/mlflow"
ROLE_ID=$(curl -sf -u "admin:$ADMINPASS" -H 'Content-Type: application/json' -X POST "$API/roles/create" \
     -d '{"workspace": "default", "name": "trainers"}' | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["role"]["id"])')
for t in experiment registered_model; do
  curl -sf -u "admin:$ADMINPASS" -H 'Content-Type: application/json' -X POST "$API/roles/permissions/add" \
       -d "{\"role_id\": $ROLE_ID, \"resource_type\": \"$t\", \"resource_pattern\": \"*\", \"permission\": \"EDIT\"}"; echo
done
curl -sf -u "admin:$ADMINPASS" -H 'Content-Type: application/json' -X POST "$API/roles/assign" \
     -d "{\"username\": \"trainer2\", \"role_id\": $ROLE_ID}"; echo
MLFLOW_TRACKING_URI="http://127.0.0.1:$PORT" MLFLOW_TRACKING_USERNAME=trainer2 MLFLOW_TRACKING_PASSWORD=trainer2-secret-pw \
  timeout 600 "$VENV/bin/mlflow-persist" run --steps 20 --no-progress > run.log 2>&1; echo "trainer2 (EDIT) run: exit $?"
tail -3 run.log

echo "## 8. what is stored"
su postgres -c "psql -d mlflow -At -c 'SELECT name, count(*) FROM model_versions GROUP BY name ORDER BY name'"
find "$ROOT/artifacts" -name checkpoint.pt | wc -l
grep -c "secret-pw\|$ADMINPASS\|$PGPASS" "$ROOT"/trainer*/run*.log || echo "no password in any trainer log"
