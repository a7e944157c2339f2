-- 0001_roles_and_helpers (down)
--
-- Reverses 0001. The roles switchboard_app / switchboard_worker are cluster-global
-- and shared with other databases, so they (and the migrator's membership in
-- them) are deliberately left in place. Extensions are left in place too.

DROP FUNCTION sb_detach_partitions_before(regclass, date);
DROP FUNCTION sb_ensure_partitions(regclass, int, date);
DROP FUNCTION sb_touch_updated_at();
DROP FUNCTION sb_current_tenant();

REVOKE USAGE ON SCHEMA public FROM switchboard_app, switchboard_worker;
