-- 0007_persister_support (up)
--
-- What the persister needs to store platform events that arrive out of order:
--   * channel_messages.platform_message_id: the platform's id of one of OUR outbound
--     messages (e.g. WhatsApp's wamid), learned when the platform accepted it; its
--     later delivery receipts name only that id.
--   * pending_statuses: a delivery status that arrived before the message it is
--     about; applied (and removed) when the message lands.

ALTER TABLE channel_messages ADD COLUMN platform_message_id text;
CREATE INDEX channel_messages_platform_id_idx
    ON channel_messages (tenant_id, integration_id, platform_message_id)
    WHERE platform_message_id IS NOT NULL;
COMMENT ON COLUMN channel_messages.platform_message_id IS
    'For outbound messages: the id the platform gave our message (WhatsApp wamid, Slack ts, Telegram message id); delivery receipts refer to it.';

CREATE TABLE pending_statuses (
    tenant_id       uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    integration_id  uuid        NOT NULL,
    ref             text        NOT NULL,
    conversation_key text       NOT NULL,
    status          text        NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'failed')),
    status_rank     smallint    NOT NULL CHECK (status_rank >= 0),
    status_at       timestamptz NOT NULL,
    platform_message_id text,
    errors          jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    event_id        uuid        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pending_statuses_pkey PRIMARY KEY (tenant_id, integration_id, ref)
);
COMMENT ON TABLE pending_statuses IS
    'Delivery statuses that arrived before their outbound message; the persister applies and deletes them when the message is stored.';

ALTER TABLE pending_statuses ENABLE ROW LEVEL SECURITY;
ALTER TABLE pending_statuses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON pending_statuses FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON pending_statuses FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON pending_statuses TO switchboard_app, switchboard_worker;

ALTER TABLE channel_messages ADD COLUMN status_errors jsonb;
COMMENT ON COLUMN channel_messages.status_errors IS 'Errors the platform reported with a failed delivery status.';
