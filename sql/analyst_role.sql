-- The analysts' read-only role, tuwen_analyst: SELECT on the v_* views and nothing else.
--
-- Run by migration 0004 (and safe to re-run by hand after adding views: `psql -f sql/analyst_role.sql`).
-- Views run with their owner's rights, so analysts read lineage through them without any right on the
-- base tables. The role is created NOLOGIN when absent (tests, fresh clusters); in production
-- deploy/postgres-init.sh creates it beforehand as a LOGIN role with a password, because the migration
-- runs as role tuwen, which may not create roles. Roles are cluster-wide: downgrades revoke, never drop.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tuwen_analyst') THEN
        CREATE ROLE tuwen_analyst NOLOGIN;
    END IF;
EXCEPTION
    -- Another database of the same cluster migrating at the same moment created it first.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

DO $$
DECLARE
    rel record;
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tuwen_analyst', current_database());
    GRANT USAGE ON SCHEMA public TO tuwen_analyst;
    -- Nothing on base tables, sequences or anything else (this also undoes broad grants that older
    -- deployments gave through default privileges).
    FOR rel IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'm', 'f', 'v')
    LOOP
        EXECUTE format('REVOKE ALL ON public.%I FROM tuwen_analyst', rel.relname);
    END LOOP;
    FOR rel IN SELECT viewname AS relname FROM pg_views WHERE schemaname = 'public' AND viewname LIKE 'v\_%'
    LOOP
        EXECUTE format('GRANT SELECT ON public.%I TO tuwen_analyst', rel.relname);
    END LOOP;
END
$$;

-- Tables the migration role creates later are not readable by analysts unless a migration says so.
ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM tuwen_analyst;
ALTER DEFAULT PRIVILEGES REVOKE ALL ON SEQUENCES FROM tuwen_analyst;
