-- 0006_analytics_audit (up)
--
-- Aggregates maintained by the analytics stream processors, the generic
-- analytics event log, and the append-only, hash-chained audit log.

-- ---------------------------------------------------------------------------
-- analytics_message_counts
-- ---------------------------------------------------------------------------
CREATE TABLE analytics_message_counts (
    tenant_id     uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel       text        NOT NULL CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    direction     text        NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    count         bigint      NOT NULL DEFAULT 0 CHECK (count >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT analytics_message_counts_pkey PRIMARY KEY (tenant_id, channel, direction, window_start),
    CONSTRAINT analytics_message_counts_window_check CHECK (window_end > window_start)
);

CREATE INDEX analytics_message_counts_window_idx ON analytics_message_counts (tenant_id, window_start);

COMMENT ON TABLE analytics_message_counts IS
    'Number of messages per tenant, channel and direction in each time window, upserted by the analytics stream processor.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON analytics_message_counts
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- Daily roll-up computed on read (security_invoker: the caller's RLS applies;
-- a materialized view cannot carry RLS and would leak across tenants).
CREATE VIEW analytics_daily_message_counts WITH (security_invoker = true) AS
SELECT tenant_id,
       channel,
       direction,
       (window_start AT TIME ZONE 'UTC')::date AS day_utc,
       sum(count)::bigint                      AS count
  FROM analytics_message_counts
 GROUP BY tenant_id, channel, direction, (window_start AT TIME ZONE 'UTC')::date;

COMMENT ON VIEW analytics_daily_message_counts IS
    'Messages per tenant, channel, direction and UTC day, summed from analytics_message_counts windows (by window start), respecting the caller''s tenant RLS.';

-- ---------------------------------------------------------------------------
-- analytics_first_response
-- ---------------------------------------------------------------------------
CREATE TABLE analytics_first_response (
    tenant_id          uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_key   text        NOT NULL,
    integration_id     uuid        NOT NULL,
    channel            text        NOT NULL CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    first_inbound_at   timestamptz NOT NULL,
    first_response_at  timestamptz,
    response_ms        bigint,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT analytics_first_response_pkey PRIMARY KEY (tenant_id, integration_id, conversation_key),
    CONSTRAINT analytics_first_response_integration_fkey FOREIGN KEY (tenant_id, integration_id)
        REFERENCES channel_integrations (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX analytics_first_response_inbound_idx ON analytics_first_response (tenant_id, first_inbound_at);

COMMENT ON TABLE analytics_first_response IS
    'Per conversation, when the end user first wrote and how long the first reply took (response_ms), maintained by the analytics stream processor.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON analytics_first_response
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- analytics_events
-- ---------------------------------------------------------------------------
CREATE TABLE analytics_events (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id  uuid,
    channel          text        CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    event_type       text        NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_.:-]{0,99}$'),
    properties       jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(properties) = 'object'),
    event_id         uuid,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT analytics_events_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE SET NULL (conversation_id)
);

CREATE INDEX analytics_events_type_idx ON analytics_events (tenant_id, event_type, occurred_at);
CREATE INDEX analytics_events_occurred_idx ON analytics_events (tenant_id, occurred_at);
CREATE INDEX analytics_events_conversation_idx ON analytics_events (tenant_id, conversation_id) WHERE conversation_id IS NOT NULL;
CREATE UNIQUE INDEX analytics_events_event_key ON analytics_events (tenant_id, event_id) WHERE event_id IS NOT NULL;

COMMENT ON TABLE analytics_events IS
    'Generic product/bot events (intent detected, handoff, lead captured, ...) with free-form JSON properties, for ad-hoc analysis.';

-- ---------------------------------------------------------------------------
-- audit_logs (range-partitioned by occurred_at, monthly; append-only)
--
-- Each tenant (and the system, tenant_id NULL) has its own hash chain: seq is the
-- position in the chain, row_hash = H(prev_hash || canonical row), computed by
-- the application. No FK to tenants: the audit trail outlives the tenant.
-- ---------------------------------------------------------------------------
CREATE TABLE audit_logs (
    id             uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id      uuid,
    seq            bigint      NOT NULL CHECK (seq >= 0),
    actor_type     text        CHECK (actor_type ~ '^[a-z][a-z0-9_]{0,31}$'),
    actor_id       text,
    action         text        NOT NULL CHECK (length(action) BETWEEN 1 AND 200),
    resource_type  text,
    resource_id    text,
    ip_address     inet,
    user_agent     text,
    before         jsonb,
    after          jsonb,
    metadata       jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    event_id       uuid        NOT NULL,
    prev_hash      bytea,
    row_hash       bytea,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_logs_pkey PRIMARY KEY (id, occurred_at),
    CONSTRAINT audit_logs_event_key UNIQUE (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE INDEX audit_logs_chain_idx ON audit_logs (tenant_id, seq);
CREATE INDEX audit_logs_tenant_occurred_idx ON audit_logs (tenant_id, occurred_at);
CREATE INDEX audit_logs_resource_idx ON audit_logs (resource_type, resource_id);

COMMENT ON TABLE audit_logs IS
    'Append-only, per-tenant hash-chained record of who did what to which resource (with before/after values), range-partitioned by month of occurred_at.';
COMMENT ON COLUMN audit_logs.tenant_id IS 'Owning tenant; NULL for system-level events (visible to switchboard_worker only).';
COMMENT ON COLUMN audit_logs.seq IS 'Position of the row in its tenant''s hash chain (the system chain when tenant_id is NULL).';
COMMENT ON COLUMN audit_logs.row_hash IS 'Hash of prev_hash and the row''s canonical content, computed by the application; verification recomputes the chain.';

CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;
COMMENT ON TABLE audit_logs_default IS
    'Catch-all partition of audit_logs for months without their own partition; sb_ensure_partitions moves rows out of it.';

-- Append-only guard. The application roles only hold SELECT and INSERT; this
-- trigger also stops the owner. It is a row trigger on the parent, so it is
-- cloned onto every partition (present and future).
--  * Superusers can bypass it on purpose (e.g. the tamper-detection tests) with
--      SET session_replication_role = replica;
--    ordinary (ENABLE'd) triggers do not fire in that mode.
--  * sb_ensure_partitions sets switchboard.partition_maintenance = 'on' for its
--    own transaction while it moves rows out of the DEFAULT partition; only a
--    role that already holds DELETE on the table (the owner) can make use of it.
--  * TRUNCATE and DETACH/DROP PARTITION (archival) are not blocked.
CREATE FUNCTION sb_audit_logs_append_only() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('switchboard.partition_maintenance', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

COMMENT ON FUNCTION sb_audit_logs_append_only() IS
    'Trigger function: rejects UPDATE and DELETE on audit_logs (bypassable by a superuser with session_replication_role = replica).';

CREATE TRIGGER sb_audit_logs_append_only BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION sb_audit_logs_append_only();

SELECT sb_ensure_partitions('audit_logs', 3, (date_trunc('month', now()) - interval '1 month')::date);

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------
ALTER TABLE analytics_message_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_message_counts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON analytics_message_counts FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON analytics_message_counts FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE analytics_first_response ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_first_response FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON analytics_first_response FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON analytics_first_response FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE analytics_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE analytics_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON analytics_events FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON analytics_events FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

-- tenant_id = sb_current_tenant() is never true for NULL, so system-level rows
-- (tenant_id NULL) are visible to, and writable by, switchboard_worker only.
ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_logs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_logs FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON audit_logs FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON analytics_message_counts, analytics_first_response, analytics_events
    TO switchboard_app, switchboard_worker;
GRANT SELECT ON analytics_daily_message_counts TO switchboard_app, switchboard_worker;
-- append-only
GRANT SELECT, INSERT ON audit_logs TO switchboard_app, switchboard_worker;
