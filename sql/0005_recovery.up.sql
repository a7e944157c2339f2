-- 0005_recovery (up)
--
-- Revenue-recovery campaigns (failed payments, abandoned carts), the messages
-- they send, and the partitioned stream of what happened afterwards.

-- ---------------------------------------------------------------------------
-- recovery_campaigns
-- ---------------------------------------------------------------------------
CREATE TABLE recovery_campaigns (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    kind        text        NOT NULL CHECK (kind IN ('failed_payment', 'abandoned_cart')),
    status      text        NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'paused', 'completed')),
    channel     text        NOT NULL CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    template    text,
    settings    jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    starts_at   timestamptz,
    ends_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    CONSTRAINT recovery_campaigns_window_check CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at),
    CONSTRAINT recovery_campaigns_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE INDEX recovery_campaigns_tenant_status_idx ON recovery_campaigns (tenant_id, status) WHERE deleted_at IS NULL;

COMMENT ON TABLE recovery_campaigns IS
    'A tenant''s revenue-recovery campaign (failed payment or abandoned cart): message template, channel, schedule and status. Soft-deleted via deleted_at.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON recovery_campaigns
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- recovery_messages
-- ---------------------------------------------------------------------------
CREATE TABLE recovery_messages (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    campaign_id      uuid        NOT NULL,
    customer_ref     text        NOT NULL CHECK (length(customer_ref) BETWEEN 1 AND 512),
    channel          text        NOT NULL CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    integration_id   uuid,
    recipient        text        NOT NULL,
    body             text,
    personalization  jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(personalization) = 'object'),
    amount_cents     bigint      CHECK (amount_cents >= 0),
    currency         text        CHECK (currency ~ '^[A-Z]{3}$'),
    status           text        NOT NULL DEFAULT 'queued'
                                 CHECK (status IN ('queued', 'sent', 'delivered', 'failed', 'recovered')),
    event_id         uuid,
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recovery_messages_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT recovery_messages_campaign_fkey FOREIGN KEY (tenant_id, campaign_id)
        REFERENCES recovery_campaigns (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT recovery_messages_integration_fkey FOREIGN KEY (tenant_id, integration_id)
        REFERENCES channel_integrations (tenant_id, id) ON DELETE SET NULL (integration_id)
);

CREATE INDEX recovery_messages_campaign_status_idx ON recovery_messages (tenant_id, campaign_id, status);
CREATE INDEX recovery_messages_customer_idx ON recovery_messages (tenant_id, customer_ref);
-- Idempotency for the stream processor that creates messages from events.
CREATE UNIQUE INDEX recovery_messages_event_key ON recovery_messages (tenant_id, event_id) WHERE event_id IS NOT NULL;

COMMENT ON TABLE recovery_messages IS
    'One personalized recovery message sent (or queued) to one customer for a campaign, with the amount at stake and its delivery status.';
COMMENT ON COLUMN recovery_messages.customer_ref IS 'The tenant''s own customer identifier (e.g. billing customer id).';
COMMENT ON COLUMN recovery_messages.event_id IS 'Kafka event that created the message; unique per tenant when present.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON recovery_messages
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- recovery_events (range-partitioned by occurred_at, monthly)
-- ---------------------------------------------------------------------------
CREATE TABLE recovery_events (
    id                   uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id            uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    campaign_id          uuid        NOT NULL,
    recovery_message_id  uuid,
    customer_ref         text        NOT NULL,
    event_type           text        NOT NULL CHECK (event_type IN ('message_sent', 'delivered', 'opened', 'clicked',
                                                                    'replied', 'recovered', 'failed', 'unsubscribed')),
    amount_cents         bigint      CHECK (amount_cents >= 0),
    currency             text        CHECK (currency ~ '^[A-Z]{3}$'),
    payload              jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    event_id             uuid        NOT NULL,
    occurred_at          timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recovery_events_pkey PRIMARY KEY (id, occurred_at),
    CONSTRAINT recovery_events_event_key UNIQUE (tenant_id, event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE INDEX recovery_events_campaign_idx ON recovery_events (tenant_id, campaign_id, occurred_at);
CREATE INDEX recovery_events_tenant_occurred_idx ON recovery_events (tenant_id, occurred_at);

COMMENT ON TABLE recovery_events IS
    'Outcome events of recovery campaigns (sent, delivered, opened, clicked, replied, recovered, failed, unsubscribed), one row per Kafka event, range-partitioned by month of occurred_at.';
COMMENT ON COLUMN recovery_events.event_id IS 'Kafka event id; with occurred_at it is the dedupe key (recovery_events_event_key).';
COMMENT ON COLUMN recovery_events.amount_cents IS 'Money at stake or recovered, in minor units of currency.';

CREATE TABLE recovery_events_default PARTITION OF recovery_events DEFAULT;
COMMENT ON TABLE recovery_events_default IS
    'Catch-all partition of recovery_events for months without their own partition; sb_ensure_partitions moves rows out of it.';

SELECT sb_ensure_partitions('recovery_events', 3, (date_trunc('month', now()) - interval '1 month')::date);

-- ---------------------------------------------------------------------------
-- Campaign performance, computed on read. A plain view with security_invoker so
-- the caller's RLS applies (a materialized view cannot carry RLS and would leak
-- across tenants).
-- ---------------------------------------------------------------------------
CREATE VIEW recovery_campaign_stats WITH (security_invoker = true) AS
SELECT c.tenant_id,
       c.id   AS campaign_id,
       c.name,
       c.kind,
       c.status,
       count(*) FILTER (WHERE e.event_type = 'message_sent')  AS messages_sent,
       count(*) FILTER (WHERE e.event_type = 'delivered')     AS delivered,
       count(*) FILTER (WHERE e.event_type = 'opened')        AS opened,
       count(*) FILTER (WHERE e.event_type = 'clicked')       AS clicked,
       count(*) FILTER (WHERE e.event_type = 'replied')       AS replied,
       count(*) FILTER (WHERE e.event_type = 'recovered')     AS recovered,
       count(*) FILTER (WHERE e.event_type = 'failed')        AS failed,
       count(*) FILTER (WHERE e.event_type = 'unsubscribed')  AS unsubscribed,
       coalesce(sum(e.amount_cents) FILTER (WHERE e.event_type = 'recovered'), 0) AS recovered_amount_cents,
       max(e.occurred_at) AS last_event_at
  FROM recovery_campaigns c
  LEFT JOIN recovery_events e ON e.tenant_id = c.tenant_id AND e.campaign_id = c.id
 GROUP BY c.tenant_id, c.id, c.name, c.kind, c.status;

COMMENT ON VIEW recovery_campaign_stats IS
    'Per-campaign funnel counts and recovered amount (sums amounts across currencies; filter by currency in recovery_events for exact money), respecting the caller''s tenant RLS.';

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------
ALTER TABLE recovery_campaigns ENABLE ROW LEVEL SECURITY;
ALTER TABLE recovery_campaigns FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recovery_campaigns FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON recovery_campaigns FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE recovery_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE recovery_messages FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recovery_messages FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON recovery_messages FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE recovery_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE recovery_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recovery_events FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON recovery_events FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON recovery_campaigns, recovery_messages, recovery_events
    TO switchboard_app, switchboard_worker;
GRANT SELECT ON recovery_campaign_stats TO switchboard_app, switchboard_worker;
