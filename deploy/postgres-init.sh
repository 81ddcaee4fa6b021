#!/usr/bin/env bash
# Creates tuwen's two databases and their roles. The postgres image runs this once, from
# /docker-entrypoint-initdb.d, on an empty data volume; later password changes are ALTER ROLE.
#
#   airflow        owns database airflow (Airflow metadata + Celery results)
#   tuwen          owns database tuwen (lineage; schema by `tuwen db upgrade`)
#   tuwen_analyst  read-only login for analysts' psql: SELECT on whatever tuwen creates
#
# Passwords come from the container's environment (docker-compose.yaml, from .env); psql quotes
# them as literals with :'var', so no password is ever part of the SQL text.
set -euo pipefail

: "${POSTGRES_AIRFLOW_PASSWORD:?}"
: "${POSTGRES_TUWEN_PASSWORD:?}"
: "${POSTGRES_ANALYST_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_password="$POSTGRES_AIRFLOW_PASSWORD" \
  -v tuwen_password="$POSTGRES_TUWEN_PASSWORD" \
  -v analyst_password="$POSTGRES_ANALYST_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
REVOKE ALL ON DATABASE airflow FROM PUBLIC;

CREATE ROLE tuwen LOGIN PASSWORD :'tuwen_password';
CREATE DATABASE tuwen OWNER tuwen ENCODING 'UTF8';
REVOKE ALL ON DATABASE tuwen FROM PUBLIC;

CREATE ROLE tuwen_analyst LOGIN PASSWORD :'analyst_password';
ALTER ROLE tuwen_analyst SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE tuwen TO tuwen_analyst;

\connect tuwen
-- Tables, views and schemas that role tuwen creates later (the migrations) are readable by analysts.
GRANT USAGE ON SCHEMA public TO tuwen_analyst;
ALTER DEFAULT PRIVILEGES FOR ROLE tuwen GRANT USAGE ON SCHEMAS TO tuwen_analyst;
ALTER DEFAULT PRIVILEGES FOR ROLE tuwen GRANT SELECT ON TABLES TO tuwen_analyst;
SQL
