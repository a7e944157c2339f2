-- 0008_audit_chain (down)
DROP TABLE audit_chain_heads;
