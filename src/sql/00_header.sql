/* crmguard--1.1.sql */

\echo Use "CREATE EXTENSION crmguard" to load this file. \quit

REVOKE ALL ON SCHEMA crmguard FROM PUBLIC;
GRANT USAGE ON SCHEMA crmguard TO PUBLIC;
COMMENT ON SCHEMA crmguard IS 'crmguard: CRM data-governance rules enforced in the database (principals, OTP gates, visibility, review, approvals, contact fields, devices, audit)';

