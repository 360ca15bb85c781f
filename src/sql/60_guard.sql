-- ---------------------------------------------------------------------------
-- The guards crmguard puts on user tables (OTP triggers, visibility
-- policies) cannot be switched off, widened or orphaned except by a
-- superuser, and then it is audited.  Rules of a dropped table go with it.
-- ---------------------------------------------------------------------------

CREATE FUNCTION crmguard.guard_ddl() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'crmguard_guard_ddl';
CREATE EVENT TRIGGER crmguard_guard_alter ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE POLICY', 'ALTER POLICY', 'CREATE TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER', 'CREATE RULE',
                 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE SCHEMA')
    EXECUTE FUNCTION crmguard.guard_ddl();
-- every drop, whatever its tag: a guard trigger or a rule's column goes
-- with whatever it depends on (DROP FUNCTION or DROP COLLATION ... CASCADE,
-- DROP EXTENSION of an extension a guard was made to depend on)
CREATE EVENT TRIGGER crmguard_guard_drop ON sql_drop
    EXECUTE FUNCTION crmguard.guard_ddl();
-- also in replication mode (session_replication_role = replica, superusers only):
-- a guard switched off there is still refused or audited
-- (CREATE SCHEMA: its CREATE TABLE elements, INHERITS and PARTITION OF
-- included, run under that tag)
ALTER EVENT TRIGGER crmguard_guard_alter ENABLE ALWAYS;
ALTER EVENT TRIGGER crmguard_guard_drop ENABLE ALWAYS;
COMMENT ON EVENT TRIGGER crmguard_guard_alter IS 'refuses (or, for a superuser, audits) DDL that would disable, widen or sidestep a crmguard guard';
COMMENT ON EVENT TRIGGER crmguard_guard_drop IS 'refuses (or, for a superuser, audits) dropping a crmguard guard, and drops the rules of dropped tables';

COMMENT ON FUNCTION crmguard.guard_ddl() IS 'internal: event trigger refusing (or, for a superuser, auditing) DDL that would remove or sidestep a guard';
