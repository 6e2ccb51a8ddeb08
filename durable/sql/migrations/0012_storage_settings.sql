-- durable schema version 12: storage settings for a table that churns (issue 20, item 5).
--
-- Every job rewrites its instances row twice (the claim, then the outcome), and both updates are non-HOT
-- (status is in the partial indexes' predicates): two dead row versions and their index entries per job,
-- which only VACUUM removes. PostgreSQL's defaults vacuum a table when its dead versions pass 20 % of its
-- live rows, throttled to 2 ms of sleep per 200 cost units. For instances that scales with the wrong
-- thing: its live rows are mostly finished instances kept until retention (`durable gc`), so a table of
-- 10M finished rows would wait for 2M dead versions, a million jobs, between vacuums, and the pick's index
-- scan walks past every dead entry of instances_pick until then. So, for instances:
--   * vacuum once 1 % of the live rows (and at least 1,000) are dead versions, however many rows it keeps;
--   * unthrottled (cost delay 0): a throttled vacuum of the hottest table falls behind its churn;
--   * no truncation at the end of a vacuum (vacuum_truncate off): a drained queue leaves empty pages at the
--     table's end, and truncating them takes an ACCESS EXCLUSIVE lock that stalls every pick and outcome
--     commit meanwhile; the pages are reused by the next inserts anyway.
-- history is append-only (no dead versions); its insert-triggered vacuums only set the visibility map,
-- and the defaults suit it. PERFORMANCE.md ("Sustained throughput") has the measurements.
alter table instances set (
  autovacuum_vacuum_scale_factor = 0.01,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_vacuum_cost_delay = 0,
  vacuum_truncate = false
);
