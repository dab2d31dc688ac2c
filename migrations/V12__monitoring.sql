-- Monitoring (issue 14): the newest set of a definition that passed a verification, for the
-- status probe and the fleet metrics (api.monitoring_definitions). Without it a definition
-- whose sets are not verified makes every scrape read all its catalog rows.
create index backup_catalog_passed_idx on backup_catalog (def_id, finished desc)
    where verification_state = 'PASSED' and def_id is not null;
