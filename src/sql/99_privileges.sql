-- ---------------------------------------------------------------------------
-- Privileges: identity is for everyone, administration is granted deliberately
-- ---------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA crmguard FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA crmguard FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA crmguard FROM PUBLIC;

GRANT EXECUTE ON FUNCTION crmguard.current_principal() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.has_role(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.attr(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.attr_as(text, anyelement) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.team() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.in_team(bigint, bigint[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.assume(text, boolean) TO PUBLIC;
-- a JWT is verified with the server's key: presenting one is enough
GRANT EXECUTE ON FUNCTION crmguard.assume_jwt(text, boolean), crmguard.pre_request() TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.request_otp(regclass, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.pending_challenge(regclass, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.verify_otp(bigint, text) TO PUBLIC;
-- a principal may ask why it sees a row it sees; about others, only an admin
GRANT EXECUTE ON FUNCTION crmguard.why_visible(regclass, text, text) TO PUBLIC;
-- drafts: the view filters by submitter and reviewer role; the steps check it again
GRANT SELECT ON crmguard.draft TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.approve_draft(bigint, text, jsonb), crmguard.reject_draft(bigint, text, jsonb),
      crmguard.comment_draft(bigint, text), crmguard.resubmit_draft(bigint, jsonb),
      crmguard.draft_duplicates(bigint), crmguard.is_reviewer(regclass), crmguard.last_drafts() TO PUBLIC;
-- approvals: each step checks who is acting (submitter, approver, delegate)
GRANT SELECT ON crmguard.approval_request TO PUBLIC;
GRANT EXECUTE ON FUNCTION crmguard.submit_for_approval(regclass, text, text), crmguard.approve(bigint, text),
      crmguard.reject(bigint, text), crmguard.recall(bigint, text), crmguard.delegate(text, timestamptz),
      crmguard.my_approvals() TO PUBLIC;
-- in the WHEN clause of the row lock, which runs as whoever updates the table
GRANT EXECUTE ON FUNCTION crmguard.approval_row_pending(regclass, anyelement) TO PUBLIC;
-- a pure function that a table's owner runs when crmguard looks for duplicates as that owner
GRANT EXECUTE ON FUNCTION crmguard.normalize_match(text) TO PUBLIC;
-- contact fields: every read of a fields column calls the projection as the reader;
-- the others act as the caller (its rights, its rows) and check the principal
GRANT EXECUTE ON FUNCTION crmguard.fields_projection(jsonb, oid), crmguard.fields_row(anyelement, oid),
      crmguard.fields_get(jsonb, oid, text), crmguard.fields_get_text(jsonb, oid, text),
      crmguard.field_values(regclass, text), crmguard.set_field(regclass, text, text, text),
      crmguard.find_by_field(regclass, text, text), crmguard.unmask(regclass, text, text, text),
      crmguard.map_fields(jsonb, jsonb) TO PUBLIC;
-- devices: enrolling needs only a valid code; attesting, only the signature
GRANT EXECUTE ON FUNCTION crmguard.enroll_device(text, text, bytea), crmguard.device_challenge(),
      crmguard.attest_device(bigint, bytea), crmguard.device_gate(boolean),
      crmguard.require_attested() TO PUBLIC;
-- activity: each caller sees its scope (an admin everyone, a manager its team)
GRANT EXECUTE ON FUNCTION crmguard.activity(timestamptz, timestamptz), crmguard.inactive(interval) TO PUBLIC;
-- a sender (crmguard-relay) claims and reports outbox messages, nothing else
GRANT EXECUTE ON FUNCTION crmguard.claim_outbox(text, integer, uuid, interval),
      crmguard.mark_sent(bigint, text, uuid), crmguard.release_outbox(bigint, uuid) TO crmguard_relay;
