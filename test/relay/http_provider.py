#!/usr/bin/python3
"""A stand-in for an SMS / WhatsApp / webhook provider, for crmguard-relay's tests.

    http_provider.py PORT LOGFILE [PATH=PLAN ...]

Records every request (method, path, headers, body) as one JSON line in LOGFILE
and answers by the PATH's plan: a comma-separated list of answers used in turn,
the last one repeated: a status ("200", "500") or "sleepN" (answer 200 after N
seconds, to make the relay's request time out).  Paths without a plan answer 200.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(sys.argv[1])
logfile = sys.argv[2]
plans = {}
for arg in sys.argv[3:]:
    path, plan = arg.split("=", 1)
    plans[path] = plan.split(",")
served = {}
lock = threading.Lock()


class Provider(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        with lock:
            n = served.get(self.path, 0)
            served[self.path] = n + 1
            plan = plans.get(self.path, ["200"])
            step = plan[min(n, len(plan) - 1)]
            with open(logfile, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body, "step": step, "at": time.time()}) + "\n")
        if step.startswith("sleep"):
            time.sleep(float(step[5:]))
            step = "200"
        status = int(step)
        reply = (json.dumps({"status": "queued"}) if status < 300
                 else json.dumps({"error": "provider unavailable", "echo": body[:80]})).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_POST = answer
    do_PUT = answer
    do_PATCH = answer


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", port), Provider)
print("listening", flush=True)
server.serve_forever()
