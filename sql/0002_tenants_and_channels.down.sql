-- 0002_tenants_and_channels (down)
-- Dropping a table also drops its policies, triggers, indexes and grants.

DROP TABLE channel_integrations;
DROP TABLE users;
DROP TABLE tenants;
