/* crmguard--1.1.sql */

\echo Use "CREATE EXTENSION crmguard" to load this file. \quit

REVOKE ALL ON SCHEMA crmguard FROM PUBLIC;
GRANT USAGE ON SCHEMA crmguard TO PUBLIC;

