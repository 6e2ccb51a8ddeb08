-- durable schema version 11: instance attributes (issue 18, item 4).
--
-- Small string->string metadata set at insert (`db.insert(..., attributes={"tenant": "acme"})`, at most
-- durable.limits.MAX_ATTRIBUTES pairs, checked by the client): a jsonb object, NULL when there are none
-- (a nullable column without a default: adding it rewrites nothing). Equality filters (db.query(attributes=),
-- durable ls/cancel/retry/tail --attr, the console's attr: filter) are containment, `attributes @> $`,
-- answered by instances_attributes (GIN, jsonb_path_ops: one hash per whole path, the smallest GIN for @>).
-- Only rows with attributes are indexed (a strict @> implies `attributes is not null`), and, as the v7
-- operator indexes, not while executing: a claim adds no entry to it. The operator statements reach
-- executing rows through instances_lease (the executing arm, see the header of ops.sql).
alter table instances add column attributes jsonb;
create index instances_attributes on instances using gin (attributes jsonb_path_ops)
  where attributes is not null and status <> 'executing';
