-- 0008_audit_chain (up)
--
-- The head of every audit hash chain: the last seq and row_hash appended to it.
-- The audit role locks a chain's head (SELECT ... FOR UPDATE) in the transaction
-- that appends to the chain, so appends to one chain are serialized and the next
-- row's seq and prev_hash are known without scanning audit_logs. `switchboard
-- audit verify` also compares each chain's last row with its head, which exposes
-- rows removed from the end of a chain.

CREATE TABLE audit_chain_heads (
    tenant_id   uuid        PRIMARY KEY,
    seq         bigint      NOT NULL CHECK (seq >= 0),
    row_hash    bytea       NOT NULL CHECK (octet_length(row_hash) = 32),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE audit_chain_heads IS
    'Last seq and row_hash of each audit_logs hash chain (one per tenant, plus the system chain); locked by the audit writer while it appends.';
COMMENT ON COLUMN audit_chain_heads.tenant_id IS
    'The chain''s tenant; 00000000-0000-0000-0000-000000000000 is the system chain (audit_logs.tenant_id NULL). No FK: the audit trail outlives the tenant.';
COMMENT ON COLUMN audit_chain_heads.seq IS 'seq of the chain''s last row; 0 while the chain is empty.';
COMMENT ON COLUMN audit_chain_heads.row_hash IS 'row_hash of the chain''s last row; 32 zero bytes (the genesis hash) while the chain is empty.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON audit_chain_heads
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

ALTER TABLE audit_chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chain_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_chain_heads FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON audit_chain_heads FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

-- Only the audit writer (a worker) moves heads; tenants may read theirs. Heads are
-- never deleted.
GRANT SELECT ON audit_chain_heads TO switchboard_app;
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO switchboard_worker;
