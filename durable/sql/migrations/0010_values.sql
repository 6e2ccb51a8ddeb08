-- durable schema version 10: named values (issue 18, item 3; durable/values.py).
--
-- Bytes a step stores under a name (`ctx.values.put(name, data)`), apart from the instance's state: no
-- statement of the engine's hot path (the pick, the heartbeat, the outcome commit) reads this table, so a
-- claim costs the same whatever values its instance holds; a value is read only when asked for
-- (`ctx.values.get`, `db.values.mget`). A value lives as long as its instance: the foreign key deletes it
-- with the instance (gc_batch's delete of instances, or any other). `lease_token` is the claim that wrote
-- it (value_put is fenced by it: queries.sql); `sha256` and `size` are computed by the database.
-- `data` is stored out of line without compression (storage external): artifacts are mostly compressed
-- already, and a failed compression attempt of a large value costs time for nothing.
create table instance_values (
  instance_id bigint not null references instances(id) on delete cascade,
  name        text   not null,
  data        bytea  not null,
  size        bigint not null,
  sha256      bytea  not null,
  lease_token bigint,
  written_at  timestamptz not null,
  primary key (instance_id, name)
);
alter table instance_values alter column data set storage external;
