-- durable schema version 3: indexes for operator queries by partition key and unique key.
-- Partial: rows without a key cost nothing. (No index on updated_at for all rows: it would add a write
-- to every step; `durable ls --order updated` is slower instead, see docs/operations.md.)
create index instances_partition_key on instances (partition_key) where partition_key is not null;
create index instances_unique_key on instances (unique_key) where unique_key is not null;
