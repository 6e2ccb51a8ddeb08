-- Statements that manage the schema itself (durable migrate).

-- name: schema_ddl
-- The CREATE SCHEMA statement for schema $1, with the name quoted by the server.
select format('create schema if not exists %I', $1::text);

-- name: lock_migrations
-- Serialize concurrent migrators of schema $1 for the rest of the transaction.
select pg_advisory_xact_lock(hashtextextended('durable-migrate:' || $1::text, 0));

-- name: create_migrations_table
-- The table that records which schema versions are applied (in the current search_path).
create table if not exists schema_migrations (
  version    int primary key,
  name       text not null,
  applied_at timestamptz not null default now()
);

-- name: record_migration
-- Record that version $1 named $2 is applied.
insert into schema_migrations (version, name) values ($1, $2);

-- name: schema_exists
-- Whether schema $1 exists and holds a schema_migrations table.
select exists (select 1 from pg_tables where schemaname = $1::text and tablename = 'schema_migrations');

-- name: drop_schema_ddl
-- The DROP SCHEMA ... CASCADE statement for schema $1 (tests and the simulator's fresh schemas).
select format('drop schema if exists %I cascade', $1::text);

-- name: search_path
-- This session's search_path (checked behind a transaction pooler, where the server must set it).
select current_setting('search_path');

-- name: check_client_connection
-- Have this session's backend look at its client's socket every $1 milliseconds while a statement runs,
-- and abort the statement once the client is gone (PostgreSQL 14+; durable serve's connections:
-- durable/_pg.py, CLIENT_CHECK_MS).
select set_config('client_connection_check_interval', $1::text, false);
