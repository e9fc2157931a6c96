-- API keys (src/keys): each belongs to one tenant. Only a hash of the secret is stored; the
-- key itself is shown once, when it is created.
create table api_keys (
  id text primary key,
  tenant_id text not null references tenants (id),
  name text,
  secret_hash text not null,
  created_at timestamptz not null default now(),
  revoked_at timestamptz,
  constraint api_keys_secret_hash_uniq unique (secret_hash)
);
create index api_keys_active_idx on api_keys (secret_hash) where revoked_at is null;
