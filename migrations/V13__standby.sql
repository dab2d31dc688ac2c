-- Pausing WAL replay on a standby node while its dumps run (issue 14). Node configuration, like
-- every other node default: new nodes copy these values, existing nodes read them through
-- api.node_config_value until update_pgsql_node_config sets their own.
insert into pgsql_node_default_config (parameter, value, description) values
    ('pause_recovery_on_standby', 'false',
     'true: on a standby node, pause WAL replay while dumps of the node run (resumed when the last one ends); no effect on a primary'),
    ('max_recovery_pause', '1 hour',
     'Longest WAL replay pause pause_recovery_on_standby may hold: a dump still running then fails and replay resumes');
