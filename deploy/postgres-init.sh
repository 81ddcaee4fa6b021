#!/usr/bin/env bash
# Creates tuwen's two databases and their roles. The postgres image runs this once, from
# /docker-entrypoint-initdb.d, on an empty data volume; later password changes are ALTER ROLE.
#
#   airflow        owns database airflow (Airflow metadata + Celery results)
#   tuwen          owns database tuwen (lineage; schema by `tuwen db upgrade`)
#   tuwen_analyst  read-only login for analysts' psql. Only the login is made here: what it may read
#                  (SELECT on the v_* views, nothing on base tables) is granted by the lineage
#                  migrations (sql/analyst_role.sql, migration 0004), the single source of truth.
#
# Passwords come from the container's environment (docker-compose.yaml, from .env): psql reads them
# with \getenv, so none is on a command line (visible in ps), and quotes them as literals with :'var',
# so none is ever part of the SQL text.
set -euo pipefail

: "${POSTGRES_AIRFLOW_PASSWORD:?}"
: "${POSTGRES_TUWEN_PASSWORD:?}"
: "${POSTGRES_ANALYST_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\getenv airflow_password POSTGRES_AIRFLOW_PASSWORD
\getenv tuwen_password POSTGRES_TUWEN_PASSWORD
\getenv analyst_password POSTGRES_ANALYST_PASSWORD
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
REVOKE ALL ON DATABASE airflow FROM PUBLIC;

CREATE ROLE tuwen LOGIN PASSWORD :'tuwen_password';
CREATE DATABASE tuwen OWNER tuwen ENCODING 'UTF8';
REVOKE ALL ON DATABASE tuwen FROM PUBLIC;

CREATE ROLE tuwen_analyst LOGIN PASSWORD :'analyst_password';
ALTER ROLE tuwen_analyst SET default_transaction_read_only = on;
SQL
