-- 0003_messaging (up)
--
-- Conversations, the partitioned message store, per-conversation memory, and
-- the leads captured from conversations.

-- ---------------------------------------------------------------------------
-- conversations
-- ---------------------------------------------------------------------------
CREATE TABLE conversations (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    integration_id        uuid        NOT NULL,
    channel               text        NOT NULL CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    conversation_key      text        NOT NULL CHECK (length(conversation_key) BETWEEN 1 AND 512),
    external_user_id      text,
    user_name             text,
    status                text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'handed_off', 'closed')),
    current_flow_id       uuid,       -- FK to conversation_flows added in 0004
    last_message_at       timestamptz,
    message_count         integer     NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    inbound_count         integer     NOT NULL DEFAULT 0 CHECK (inbound_count >= 0),
    outbound_count        integer     NOT NULL DEFAULT 0 CHECK (outbound_count >= 0),
    last_outbound_status  text        CHECK (last_outbound_status IN ('queued', 'sent', 'delivered', 'read', 'failed')),
    metadata              jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT conversations_key_key UNIQUE (tenant_id, integration_id, conversation_key),
    CONSTRAINT conversations_integration_fkey FOREIGN KEY (tenant_id, integration_id)
        REFERENCES channel_integrations (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX conversations_tenant_last_message_idx ON conversations (tenant_id, last_message_at DESC);
CREATE INDEX conversations_tenant_status_idx ON conversations (tenant_id, status) WHERE status <> 'closed';
CREATE INDEX conversations_tenant_external_user_idx ON conversations (tenant_id, external_user_id);

COMMENT ON TABLE conversations IS
    'One chat thread between an end user and a tenant''s bot on one channel integration, identified by the platform-derived conversation_key, with running counters.';
COMMENT ON COLUMN conversations.conversation_key IS
    'Platform conversation identity (e.g. Telegram chat id, Slack channel[:thread_ts], WhatsApp wa_id, widget session); unique per integration.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- channel_messages (range-partitioned by sent_at, monthly)
--
-- sent_at is the platform's own timestamp, so a retried webhook carries the
-- same sent_at, lands in the same partition and hits the same unique key:
-- INSERT ... ON CONFLICT DO NOTHING makes storing a platform message twice
-- impossible.
-- ---------------------------------------------------------------------------
CREATE TABLE channel_messages (
    id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    integration_id    uuid        NOT NULL,
    channel           text        NOT NULL CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    direction         text        NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    external_id       text        NOT NULL CHECK (length(external_id) BETWEEN 1 AND 512),
    conversation_key  text        NOT NULL,
    sender_id         text,
    sender_name       text,
    text              text,
    message_type      text        NOT NULL DEFAULT 'text' CHECK (message_type ~ '^[a-z][a-z0-9_]{0,31}$'),
    attachments       jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(attachments) = 'array'),
    reply_to          text,
    thread_id         text,
    status            text        CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'failed')),
    status_rank       smallint    CHECK (status_rank >= 0),
    edited_at         timestamptz,
    event_id          uuid,
    payload           jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    sent_at           timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channel_messages_pkey PRIMARY KEY (id, sent_at),
    CONSTRAINT channel_messages_dedupe_key UNIQUE (tenant_id, integration_id, direction, external_id, sent_at)
) PARTITION BY RANGE (sent_at);

CREATE INDEX channel_messages_conversation_idx ON channel_messages (tenant_id, conversation_key, sent_at);
CREATE INDEX channel_messages_tenant_sent_idx ON channel_messages (tenant_id, sent_at);

COMMENT ON TABLE channel_messages IS
    'Every inbound and outbound chat message, one row per platform message, range-partitioned by month of the platform timestamp sent_at.';
COMMENT ON COLUMN channel_messages.external_id IS
    'Platform message id (Telegram chat_id:message_id, Slack channel:ts, WhatsApp wamid); outbound rows carry our own id until the platform assigns one.';
COMMENT ON COLUMN channel_messages.sent_at IS
    'Platform timestamp of the message (partition key); identical on webhook retries, so duplicates collide on channel_messages_dedupe_key.';
COMMENT ON COLUMN channel_messages.status IS 'Delivery status of outbound messages; status_rank orders them so a late receipt never downgrades it.';
COMMENT ON COLUMN channel_messages.event_id IS 'Id of the Kafka event that produced this row.';

CREATE TABLE channel_messages_default PARTITION OF channel_messages DEFAULT;
COMMENT ON TABLE channel_messages_default IS
    'Catch-all partition of channel_messages for months without their own partition; sb_ensure_partitions moves rows out of it.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON channel_messages
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- Previous month (late data) through two months ahead.
SELECT sb_ensure_partitions('channel_messages', 3, (date_trunc('month', now()) - interval '1 month')::date);

-- ---------------------------------------------------------------------------
-- conversation_memory
-- ---------------------------------------------------------------------------
CREATE TABLE conversation_memory (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id  uuid        NOT NULL,
    key              text        NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    value            jsonb       NOT NULL,
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversation_memory_conversation_key_key UNIQUE (conversation_id, key),
    CONSTRAINT conversation_memory_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX conversation_memory_tenant_idx ON conversation_memory (tenant_id);
CREATE INDEX conversation_memory_expires_idx ON conversation_memory (expires_at) WHERE expires_at IS NOT NULL;

COMMENT ON TABLE conversation_memory IS
    'Key/value facts the bot remembers about one conversation (name, preferences, context), optionally expiring at expires_at.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON conversation_memory
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- leads
-- ---------------------------------------------------------------------------
CREATE TABLE leads (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id  uuid,
    channel          text        CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    name             text,
    email            text        CHECK (length(email) <= 320 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    phone            text        CHECK (length(phone) <= 64),
    source           text,
    status           text        NOT NULL DEFAULT 'new'
                                 CHECK (status IN ('new', 'contacted', 'qualified', 'converted', 'lost')),
    score            integer     NOT NULL DEFAULT 0,
    data             jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(data) = 'object'),
    converted_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    CONSTRAINT leads_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT leads_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE SET NULL (conversation_id)
);

CREATE INDEX leads_tenant_status_idx ON leads (tenant_id, status, created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX leads_tenant_email_idx ON leads (tenant_id, lower(email)) WHERE email IS NOT NULL;
CREATE INDEX leads_conversation_idx ON leads (tenant_id, conversation_id) WHERE conversation_id IS NOT NULL;

COMMENT ON TABLE leads IS
    'Prospects captured from conversations (contact details, pipeline status, score); soft-deleted via deleted_at.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON leads
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------
ALTER TABLE conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversations FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON conversations FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE channel_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE channel_messages FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON channel_messages FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON channel_messages FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE conversation_memory ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation_memory FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_memory FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON conversation_memory FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE leads ENABLE ROW LEVEL SECURITY;
ALTER TABLE leads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON leads FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON leads FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------
-- Privileges (on the parents only: partitions are reached through the parent,
-- where RLS applies; the application roles cannot open partitions directly)
-- ---------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON conversations, channel_messages, conversation_memory, leads
    TO switchboard_app, switchboard_worker;
