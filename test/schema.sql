CREATE SCHEMA mnemo;

CREATE TABLE mnemo.migrations (
    id integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE mnemo.tenants (
    id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT tenants_id_length_chk CHECK (((length(id) >= 1) AND (length(id) <= 256)))
);

ALTER TABLE ONLY mnemo.migrations
    ADD CONSTRAINT migrations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.tenants
    ADD CONSTRAINT tenants_pkey PRIMARY KEY (id);
