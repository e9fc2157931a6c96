-- Every piece of Mnemo's data belongs to a tenant (chosen by the API key). Tenant data
-- tables carry tenant_id in their keys from the start; 'default' is the tenant of a
-- server without API keys.
create table tenants (
  id text primary key,
  created_at timestamptz not null default now(),
  constraint tenants_id_length_chk check (length(id) between 1 and 256)
);

insert into tenants (id) values ('default');
