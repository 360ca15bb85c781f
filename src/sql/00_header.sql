/* crmguard--1.0.sql */

\echo Use "CREATE EXTENSION crmguard" to load this file. \quit

REVOKE ALL ON SCHEMA crmguard FROM PUBLIC;
GRANT USAGE ON SCHEMA crmguard TO PUBLIC;

