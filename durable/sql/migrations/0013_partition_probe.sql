-- durable schema version 13: the pick's busy-partition-key probe can only be served by
-- instances_partition_active.
--
-- The pick skips a candidate whose partition key is executing with a probe per candidate. Written
-- `e.status = 'executing'`, the probe implies the predicate of instances_lease (every executing row) as
-- well as that of instances_partition_active, so the planner costs both: a scan of the whole lease index
-- (filtering partition_key) against one descent of the partition index. With statistics taken while
-- nothing executed (an idle night) both partial indexes are estimated to hold about one matching row, the
-- two costs differ only in the btree descent cost, and that grows with the index's height and size: the
-- partition index (wide keys, one entry per claim that no probe ever marks dead) gains a level after a
-- few hundred claims, the lease index (a pick's leases share one expiry, deduplicated, and its own scans
-- mark its dead entries) stays one page. From then on every pick scanned the lease index, dead entries
-- included, 50 times a pick of 50. Which one won was decided per backend, by the btree metapage it had
-- cached: a connection that planned against the index while it was one page kept seeing height 0.
--
-- The predicate below is the same set of rows (`status between 'executing' and 'executing'` is
-- status = 'executing'), but written as a range: the pick's probe says the same range, which proves
-- this predicate (the same clauses) and not instances_lease's `status = 'executing'` (no single
-- inequality implies an equality), so the lease index is no longer a candidate for the probe. A
-- statement saying `status = 'executing'` still proves this predicate (an equality implies both bounds),
-- so nothing else loses the index. The index keeps its name: a second claim of a key is still refused
-- by a unique violation naming instances_partition_active. Rebuilt in the migration's transaction:
-- writes to instances wait for the build (one scan of the table).
create unique index instances_partition_active_v13 on instances (partition_key)
  where status between 'executing' and 'executing' and partition_key is not null;
drop index instances_partition_active;
alter index instances_partition_active_v13 rename to instances_partition_active;
