#!/usr/bin/python3
"""A mail server for crmguard-relay's TLS tests (aiosmtpd, like the plain sink):

    smtp_tls_sink.py PORT MAILDIR CERT KEY USER PASSWORD

STARTTLS is required before MAIL and AUTH; AUTH (PLAIN, LOGIN) accepts only
USER and PASSWORD, and only over TLS.  Messages go to MAILDIR.
"""
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult

port, maildir, cert, key, user, password = sys.argv[1:7]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (auth_data.login.decode() == user and auth_data.password.decode() == password)
    return AuthResult(success=ok)


controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=int(port),
                        tls_context=context, require_starttls=True,
                        authenticator=authenticator, auth_required=True, auth_require_tls=True)
controller.start()
print("listening", flush=True)
while True:
    time.sleep(3600)
