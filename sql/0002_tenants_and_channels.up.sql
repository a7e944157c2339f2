-- 0002_tenants_and_channels (up)
--
-- Tenants (organizations), their users, and their channel integrations
-- (one row per connected Telegram bot / Slack app / WhatsApp number / web widget).
--
-- Pattern used by every tenant-owned table from here on:
--   * tenant_id NOT NULL REFERENCES tenants ON DELETE CASCADE
--   * UNIQUE (tenant_id, id) so child tables can use composite foreign keys
--     (tenant_id, x_id) -> x (tenant_id, id): a row can never point at another
--     tenant's row, even though FK checks themselves bypass RLS.
--   * RLS enabled and forced, policies tenant_isolation + worker_all.

-- ---------------------------------------------------------------------------
-- tenants
-- ---------------------------------------------------------------------------
CREATE TABLE tenants (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    slug        text        NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    plan        text        NOT NULL DEFAULT 'free' CHECK (plan ~ '^[a-z][a-z0-9_]{0,31}$'),
    settings    jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Slugs are unique among live tenants; a soft-deleted tenant frees its slug.
-- (Upserts must say ON CONFLICT (slug) WHERE deleted_at IS NULL.)
CREATE UNIQUE INDEX tenants_slug_live_key ON tenants (slug) WHERE deleted_at IS NULL;

COMMENT ON TABLE tenants IS
    'One row per customer organization (tenant); every other Switchboard row belongs to exactly one tenant. Soft-deleted via deleted_at.';
COMMENT ON COLUMN tenants.slug IS 'URL-safe lowercase handle, unique among tenants that are not soft-deleted.';
COMMENT ON COLUMN tenants.plan IS 'Subscription plan code (free, pro, ...).';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- users
-- ---------------------------------------------------------------------------
CREATE TABLE users (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email          text        NOT NULL CHECK (length(email) <= 320 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    display_name   text        CHECK (length(display_name) <= 200),
    role           text        NOT NULL DEFAULT 'agent'
                               CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    password_hash  text,
    last_login_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    CONSTRAINT users_tenant_id_id_key UNIQUE (tenant_id, id)
);

-- Case-insensitive e-mail, unique per tenant among users that are not deleted.
CREATE UNIQUE INDEX users_tenant_email_live_key ON users (tenant_id, lower(email)) WHERE deleted_at IS NULL;

COMMENT ON TABLE users IS
    'People who operate a tenant''s dashboard (owners, admins, agents, viewers); e-mail is unique per tenant, case-insensitively. Soft-deleted via deleted_at.';
COMMENT ON COLUMN users.password_hash IS 'Argon2/bcrypt hash made by the application; NULL for SSO-only users. Never a plaintext password.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- channel_integrations
-- ---------------------------------------------------------------------------
CREATE TABLE channel_integrations (
    id                     uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id              uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel                text        NOT NULL CHECK (channel IN ('telegram', 'slack', 'whatsapp', 'widget')),
    name                   text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    status                 text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    credentials_encrypted  bytea       NOT NULL CHECK (octet_length(credentials_encrypted) > 0),
    credentials_key_id     text,
    settings               jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    disabled_at            timestamptz,
    rotated_at             timestamptz,
    CONSTRAINT channel_integrations_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE INDEX channel_integrations_tenant_channel_idx ON channel_integrations (tenant_id, channel);

COMMENT ON TABLE channel_integrations IS
    'A tenant''s connection to one messaging channel (Telegram bot, Slack app, WhatsApp Cloud API number or web widget); its webhook path is /webhooks/<channel>/<id>.';
COMMENT ON COLUMN channel_integrations.credentials_encrypted IS
    'AES-GCM ciphertext of the channel credentials (tokens, signing secrets), encrypted by the application with a key from the environment; never stored or logged in clear.';
COMMENT ON COLUMN channel_integrations.credentials_key_id IS 'Identifier of the encryption key used, so keys can be rotated.';
COMMENT ON COLUMN channel_integrations.settings IS 'Non-secret channel settings (JSON object).';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON channel_integrations
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants FOR ALL TO PUBLIC
    USING (id = sb_current_tenant()) WITH CHECK (id = sb_current_tenant());
CREATE POLICY worker_all ON tenants FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON users FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE channel_integrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE channel_integrations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON channel_integrations FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON channel_integrations FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, channel_integrations
    TO switchboard_app, switchboard_worker;
