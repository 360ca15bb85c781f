#!/usr/bin/python3
"""What an application does with crmguard, through psycopg2 (Debian's
python3-psycopg2): the OTP loop reading the challenge id from the error's
fields, and a web form reading its draft ids from crmguard.last_drafts().
Prints TAP ("ok N - ...") against the server in PGHOST/PGPORT/PGUSER."""
import re
import sys
import time

import psycopg2
import psycopg2.extensions

DB = "crmguard_python"
results = []


def check(cond, what):
    results.append(bool(cond))
    print("%s %d - %s" % ("ok" if cond else "not ok", len(results), what), flush=True)


def connect(dbname=DB, autocommit=False):
    conn = psycopg2.connect(dbname=dbname)
    conn.autocommit = autocommit
    return conn


# a database of its own, set up by the DBA
admin = connect("postgres", autocommit=True)
admin.cursor().execute("DROP DATABASE IF EXISTS " + DB)
admin.cursor().execute("CREATE DATABASE " + DB)
admin.close()
dba = connect(autocommit=True)
cur = dba.cursor()
cur.execute("""
    CREATE EXTENSION crmguard;
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regress_py_app') THEN
            CREATE ROLE regress_py_app;
        END IF;
    END $$;
    SELECT crmguard.add_principal('py_rep', '{agent}');
    SELECT crmguard.add_principal('py_form', '{webform}');
    SELECT crmguard.add_principal('py_reviewer', '{reviewer}');
    CREATE TABLE public.delivery (id int PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery VALUES (1, '+39 347 555 0123', 'Out for delivery');
    SELECT crmguard.create_otp_rule('Delivery OTP', 'public.delivery', 'status', '{Delivered}',
                                    'phone', code_length => 6);
    CREATE TABLE public.lead (id serial PRIMARY KEY, name text, email text);
    SELECT crmguard.enable_review('public.lead', 'reviewer');
    GRANT SELECT, INSERT, UPDATE ON public.delivery, public.lead TO regress_py_app;
    GRANT USAGE ON SEQUENCE public.lead_id_seq TO regress_py_app;
    GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea) TO regress_py_app;
""")


def app_connection(autocommit=False):
    """The application's pooled login role, with no principal of its own."""
    conn = connect(autocommit=autocommit)
    c = conn.cursor()
    c.execute("SET ROLE regress_py_app")
    if not autocommit:
        conn.commit()
    return conn


app = app_connection()
c = app.cursor()
c.execute("SELECT crmguard.issue_token('py_rep'), crmguard.issue_token('py_form')")
rep_token, form_token = c.fetchone()
app.commit()

# --- the OTP loop --------------------------------------------------------
error = None
try:
    c.execute("SELECT crmguard.assume(%s)", (rep_token,))
    c.execute("UPDATE public.delivery SET status = 'Delivered' WHERE id = 1")
except psycopg2.Error as e:
    error = e
app.rollback()
check(error is not None and error.pgcode == "CG001", "a gated change fails with SQLSTATE CG001")
diag = error.diag if error else None
check(diag is not None and diag.table_name == "delivery" and diag.schema_name == "public",
      "the error names the target table in its table field")
check(diag is not None and diag.column_name == "status", "the error names the status column in its column field")
m = re.match(r"Challenge (\d+)", (diag.message_detail or "") if diag else "")
check(m is not None, "the error's detail starts with the challenge id")
challenge = int(m.group(1)) if m else 0

# the code reaches the customer through the outbox (the SMS gateway's side)
code = None
for _ in range(200):
    cur.execute("SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox"
                " WHERE recipient = '+39 347 555 0123' ORDER BY id DESC LIMIT 1")
    row = cur.fetchone()
    cur.execute("SELECT count(*) FROM crmguard.otp_challenge WHERE id = %s", (challenge,))
    if row and row[0] and cur.fetchone()[0] == 1:
        code = row[0]
        break
    time.sleep(0.05)
check(code is not None, "the background worker queued the code for the customer")

# a wrong code, then the right one, each in the rep's transaction
wrong = "000000" if code != "000000" else "111111"
c.execute("SELECT crmguard.assume(%s)", (rep_token,))
try:
    c.execute("SELECT crmguard.verify_otp(%s, %s)", (challenge, wrong))
    error = None
except psycopg2.Error as e:
    error = e
app.rollback()
check(error is not None and error.pgcode == "CG002", "a wrong code fails with SQLSTATE CG002")
c.execute("SELECT crmguard.assume(%s)", (rep_token,))
c.execute("SELECT crmguard.verify_otp(%s, %s)", (challenge, code))
verified = c.fetchone()[0]
c.execute("UPDATE public.delivery SET status = 'Delivered' WHERE id = 1")
updated = c.rowcount
app.commit()
check(verified is True and updated == 1, "the right code lets the change through")
cur.execute("SELECT status FROM public.delivery WHERE id = 1")
check(cur.fetchone()[0] == "Delivered", "the row is Delivered")

# --- the web form ----------------------------------------------------------
form = app_connection(autocommit=True)
f = form.cursor()
# autocommit: the identity and the insert travel in one message, one transaction
f.execute("SELECT crmguard.assume(%s); INSERT INTO public.lead (name, email) VALUES (%s, %s), (%s, %s)",
          (form_token, "Ada", "ada@example.com", "Bruno", "bruno@example.com"))
check(f.rowcount == 0, "the insert reports no row: the leads became drafts")
f.execute("SELECT crmguard.last_drafts()")
ids = f.fetchone()[0]
check(isinstance(ids, list) and len(ids) == 2, "last_drafts() gives the two draft ids, in autocommit")
f.execute("SELECT 1")
f.execute("SELECT crmguard.last_drafts()")
check(f.fetchone()[0] == ids, "a statement that makes no draft leaves last_drafts() as it was")

# a second visitor of the same shared web-form principal, meanwhile
other = app_connection(autocommit=True)
o = other.cursor()
o.execute("SELECT crmguard.assume(%s); INSERT INTO public.lead (name, email) VALUES (%s, %s)",
          (form_token, "Carla", "carla@example.com"))
o.execute("SELECT crmguard.last_drafts()")
other_ids = o.fetchone()[0]
check(len(other_ids) == 1 and not set(other_ids) & set(ids), "each session reads only its own drafts' ids")
f.execute("SELECT crmguard.last_drafts()")
check(f.fetchone()[0] == ids, "the first visitor's ids are unchanged")

# the shared principal finds exactly its visitor's drafts, with their time
f.execute("SELECT crmguard.assume(%s); SELECT id, row_data->>'name', submitted_by, submitted_at, state"
          " FROM crmguard.draft WHERE id = ANY(%s) ORDER BY id", (form_token, ids))
rows = f.fetchall()
check([r[1] for r in rows] == ["Ada", "Bruno"] and all(r[2] == "py_form" and r[3] is not None
                                                       and r[4] == "pending" for r in rows),
      "the web form reads its drafts by id: submitter, submitted_at and state")

# a statement that fails after its first row was drafted makes no draft and
# leaves last_drafts() as it was
try:
    f.execute("SELECT crmguard.assume(%s); INSERT INTO public.lead (name, email) VALUES (%s, %s),"
              " (%s, (1 / (random() * 0)::int)::text)",
              (form_token, "Dario", "dario@example.com", "Elsa"))
except psycopg2.Error:
    pass
f.execute("SELECT crmguard.last_drafts()")
check(f.fetchone()[0] == ids, "a statement that fails leaves the previous drafts' ids")

# in a transaction: the most recent statement that made drafts
tx = app_connection()
t = tx.cursor()
t.execute("SELECT crmguard.assume(%s)", (form_token,))
t.execute("INSERT INTO public.lead (name) VALUES ('Fabio')")
t.execute("SELECT crmguard.last_drafts()")
first = t.fetchone()[0]
t.execute("INSERT INTO public.lead (name) VALUES ('Gina'), ('Hugo'), ('Ines')")
t.execute("SELECT crmguard.last_drafts()")
second = t.fetchone()[0]
tx.commit()
check(len(first) == 1 and len(second) == 3 and not set(first) & set(second),
      "in a transaction, each statement's drafts replace the previous ones")
t.execute("SELECT crmguard.assume(%s)", (form_token,))
t.execute("INSERT INTO public.lead (name) VALUES ('Luca')")
tx.rollback()
t.execute("SELECT crmguard.last_drafts()")
check(t.fetchone()[0] == second, "drafts of a rolled-back transaction are forgotten")
tx.commit()

# and the identity never outlives the transaction on this pooled connection
t.execute("SELECT crmguard.current_principal()")
check(t.fetchone()[0] is None, "after the web form's transaction, the connection is nobody again")
tx.commit()

# An unnamed statement of the extended protocol, parsed for one principal and
# bound again after the pooler switched principals through a named statement
# (which, unlike a simple query, leaves the unnamed statement in place): the
# next principal must not get the first one's policy.  crmguard re-plans on
# an identity change, and the policy checks the principal's roles at run
# time besides.  psycopg2 never binds a statement twice, so this speaks the
# protocol itself.
import base64
import hashlib
import hmac
import os
import socket
import struct


class RawSession:
    def __init__(self, dbname):
        host = os.environ.get("PGHOST", "/tmp")
        port = int(os.environ.get("PGPORT", "5432"))
        if host.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect("%s/.s.PGSQL.%d" % (host, port))
        else:
            self.sock = socket.create_connection((host, port))
        self.user = os.environ.get("PGUSER", "postgres")
        self.password = os.environ.get("PGPASSWORD", "")
        body = struct.pack("!i", 196608) + b"user\0" + self.user.encode() + b"\0database\0" + dbname.encode() + b"\0\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self.sync_result()

    def authenticate(self, body):
        """Trust, password, md5 or SCRAM-SHA-256 (pg_virtualenv's clusters)."""
        code = struct.unpack("!i", body[:4])[0]
        if code == 3:
            self.send(b"p", self.password.encode() + b"\0")
        elif code == 5:
            inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
            self.send(b"p", b"md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest().encode() + b"\0")
        elif code == 10:
            self.nonce = base64.b64encode(os.urandom(18)).decode()
            self.first_bare = "n=,r=" + self.nonce
            first = ("n,," + self.first_bare).encode()
            self.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        elif code == 11:
            server_first = body[4:].decode()
            fields = dict(f.split("=", 1) for f in server_first.split(","))
            salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(fields["s"]),
                                         int(fields["i"]))
            client_key = hmac.new(salted, b"Client Key", "sha256").digest()
            final_bare = "c=biws,r=" + fields["r"]
            message = ",".join([self.first_bare, server_first, final_bare]).encode()
            signature = hmac.new(hashlib.sha256(client_key).digest(), message, "sha256").digest()
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            self.send(b"p", (final_bare + ",p=" + base64.b64encode(proof).decode()).encode())
        elif code not in (0, 12):
            raise RuntimeError("authentication method %d not supported here" % code)

    def send(self, kind, body):
        self.sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)

    def recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def sync_result(self):
        """Rows (first column, text) and errors until ReadyForQuery."""
        rows, errors = [], []
        while True:
            kind = self.recv_exact(1)
            body = self.recv_exact(struct.unpack("!i", self.recv_exact(4))[0] - 4)
            if kind == b"D":
                n = struct.unpack("!i", body[2:6])[0]
                rows.append(None if n < 0 else body[6:6 + n].decode())
            elif kind == b"E":
                errors.append(body)
            elif kind == b"R":
                self.authenticate(body)
            elif kind == b"Z":
                return rows, errors

    def query(self, sql):
        self.send(b"Q", sql.encode() + b"\0")
        return self.sync_result()

    def parse(self, name, sql):
        self.send(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))

    def bind_execute(self, name, *params):
        body = b"\0" + name.encode() + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(params))
        for p in params:
            body += struct.pack("!i", len(p.encode())) + p.encode()
        self.send(b"B", body + struct.pack("!h", 0))
        self.send(b"E", b"\0" + struct.pack("!i", 0))

    def sync(self):
        self.send(b"S", b"")
        return self.sync_result()


cur.execute("""
    CREATE TABLE public.py_note (id int PRIMARY KEY, team text, body text);
    INSERT INTO public.py_note VALUES (1, 'north', 'call back'), (2, 'north', 'send quote'),
                                      (3, 'north', 'visit'), (4, 'south', 'visit');
    GRANT SELECT ON public.py_note TO regress_py_app;
    SELECT crmguard.expose('public.py_note', 'agents read their team''s notes', 'agent',
                           '{"field": "team", "op": "=", "principal": "team"}');
    UPDATE crmguard.principal SET attributes = '{"team": "north"}' WHERE name IN ('py_rep', 'py_form');
""")
cur.execute("SELECT crmguard.issue_token('py_rep'), crmguard.issue_token('py_form')")
rep_token, form_token = cur.fetchone()
raw = RawSession(DB)
raw.query("SET ROLE regress_py_app")
raw.parse("switch", "SELECT crmguard.assume($1, false) IS NOT NULL")
raw.bind_execute("switch", rep_token)
switched_rep = raw.sync()
raw.parse("", "SELECT count(*) FROM public.py_note")
raw.bind_execute("")
as_rep = raw.sync()
raw.bind_execute("switch", form_token)
switched_form = raw.sync()
raw.bind_execute("")
as_form = raw.sync()
check(switched_rep == (["t"], []) and as_rep == (["3"], []),
      "an agent's unnamed statement counts the 3 notes of his team")
check(switched_form == (["t"], []) and as_form == (["0"], []),
      "bound again after a named statement switched to a principal of the same team without the role, it shows no note")
raw.sock.close()

# --- a sender waits for NOTIFY crmguard_outbox --------------------------------
# A queued message (here a one-time code) wakes the senders with NOTIFY
# crmguard_outbox, its payload the channel to claim, only once the transaction
# that queued it committed: the database's worker notifies after the commit,
# so that transactions queueing messages do not commit one after another on
# PostgreSQL's notify lock.
import select

cur.execute("""
    CREATE TABLE public.py_notify (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO public.py_notify VALUES (1, '+39 347 555 0199', 'Out for delivery');
    SELECT crmguard.create_otp_rule('py notify', 'public.py_notify', 'status', ARRAY['Delivered'],
                                    'phone', channel => 'whatsapp', delivery => 'manual');
""")
sender = connect(autocommit=True)
sender.cursor().execute("LISTEN crmguard_outbox")


def heard(seconds):
    """The notifications the sender receives within this many seconds."""
    deadline = time.time() + seconds
    got = []
    while time.time() < deadline:
        if select.select([sender], [], [], max(0.0, deadline - time.time())) != ([], [], []):
            sender.poll()
            while sender.notifies:
                got.append(sender.notifies.pop(0))
            if got:
                break
    return got


requester = connect()
r = requester.cursor()
r.execute("SELECT pg_backend_pid()")
requester_pid = r.fetchone()[0]
r.execute("SELECT crmguard.request_otp('public.py_notify', '1', 'Delivered')")
check(heard(0.5) == [], "no sender hears of a code before its transaction commits")
requester.commit()
got = heard(10)
check([n.channel for n in got] == ["crmguard_outbox"] and [n.payload for n in got] == ["whatsapp"],
      "after the commit the sender hears crmguard_outbox, the channel as payload")
check(got and got[0].pid != requester_pid, "the notification comes from the worker, not the committing session")
r.execute("SELECT crmguard.request_otp('public.py_notify', '1', 'Delivered')")
requester.rollback()
check(heard(1.5) == [], "a request that rolls back wakes no one")
# codes for two channels in one transaction: each channel is named once
cur.execute("""
    CREATE TABLE public.py_notify_mail (id bigint PRIMARY KEY, email text, status text);
    INSERT INTO public.py_notify_mail VALUES (1, 'ada@example.com', 'Open');
    SELECT crmguard.create_otp_rule('py notify mail', 'public.py_notify_mail', 'status', ARRAY['Closed'],
                                    'email', channel => 'email', delivery => 'manual');
""")
r.execute("SELECT crmguard.request_otp('public.py_notify', '1', 'Delivered')")
r.execute("SELECT crmguard.request_otp('public.py_notify_mail', '1', 'Closed')")
requester.commit()
got = heard(10)
deadline = time.time() + 3
while len(got) < 2 and time.time() < deadline:
    got += heard(deadline - time.time())
check(sorted(n.payload for n in got) == ["email", "whatsapp"],
      "a transaction that queued codes for two channels wakes each channel's senders once")
# a prepared transaction's message would wake no sender at COMMIT PREPARED
error = None
try:
    r.execute("SELECT crmguard.request_otp('public.py_notify', '1', 'Delivered')")
    r.execute("PREPARE TRANSACTION 'py_notify'")
except psycopg2.Error as e:
    error = e
requester.rollback()
check(error is not None and error.pgcode == "0A000" and "cannot prepare a transaction" in error.pgerror,
      "a transaction that queued a code cannot be prepared (0A000)")
requester.close()
sender.close()

for conn in (app, form, other, tx, dba):
    conn.close()
print("1..%d" % len(results))
sys.exit(0 if all(results) else 1)
