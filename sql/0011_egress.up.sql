-- 0011_egress (up)
--
-- egress_deliveries: one row per outbound message the egress role has seen, keyed by
-- the message's own id. It is the sent-message idempotency record (a message already
-- 'delivered' or 'failed' is not sent again when its event is redelivered) and the
-- per-conversation order guard (a message waits while an earlier one of its
-- conversation, lower seq, is 'retrying').
--
--   status       pending   first attempt not made yet (or in flight)
--                retrying  waiting in a retry topic until next_attempt_at: after a
--                          transient failure, or parked behind an earlier message
--                delivered the platform accepted it (platform_message_id)
--                failed    permanent failure, or transient ones until attempts ran out
--   attempts     platform calls made so far (parking does not count)
--   reported     false between writing an outcome and publishing its events (status,
--                retry record, dead letter); a redelivered event publishes them again

CREATE TABLE egress_deliveries (
    tenant_id            uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    integration_id       uuid        NOT NULL,
    message_id           text        NOT NULL CHECK (length(message_id) BETWEEN 1 AND 512),
    conversation_key     text        NOT NULL CHECK (length(conversation_key) BETWEEN 1 AND 512),
    seq                  bigint      GENERATED ALWAYS AS IDENTITY,
    status               text        NOT NULL DEFAULT 'pending'
                                     CHECK (status IN ('pending', 'retrying', 'delivered', 'failed')),
    attempts             integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at      timestamptz,
    platform_message_id  text,
    last_error_code      text,
    last_error           text,
    reported             boolean     NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT egress_deliveries_pkey PRIMARY KEY (tenant_id, integration_id, message_id),
    CONSTRAINT egress_deliveries_integration_fkey FOREIGN KEY (tenant_id, integration_id)
        REFERENCES channel_integrations (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT egress_deliveries_retry_due_check
        CHECK (status <> 'retrying' OR next_attempt_at IS NOT NULL)
);

-- The order guard: earlier messages of a conversation still waiting for a retry.
CREATE INDEX egress_deliveries_retrying_idx
    ON egress_deliveries (tenant_id, integration_id, conversation_key, seq)
    WHERE status = 'retrying';

COMMENT ON TABLE egress_deliveries IS
    'Egress bookkeeping per outbound message: whether it was delivered, failed or waits for a retry; keeps redelivered events from being sent twice and a conversation''s replies in order.';
COMMENT ON COLUMN egress_deliveries.seq IS 'Order in which egress first saw the message; earlier messages of a conversation go out first.';
COMMENT ON COLUMN egress_deliveries.attempts IS 'Platform API calls made for the message (waiting behind an earlier message does not count).';
COMMENT ON COLUMN egress_deliveries.reported IS 'False while the outcome''s events (status, retry record, dead letter) are not yet published.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON egress_deliveries
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

ALTER TABLE egress_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE egress_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON egress_deliveries FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON egress_deliveries FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON egress_deliveries TO switchboard_app, switchboard_worker;
