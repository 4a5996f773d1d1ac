"""An OTLP/HTTP trace receiver for scripts/compose-test.sh.

Answers every POST to /v1/traces with 200 and prints one line per export:
its size and the regatta services named in it (the resource's service.name
is plain text inside the protobuf). Nothing is decoded or kept.
"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICES = (b"regatta-coordinator", b"regatta-worker")


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        names = [s.decode() for s in SERVICES if s in body]
        print(f"otlp-sink: {self.path} {len(body)} bytes from {','.join(names) or '-'}", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 4318), Sink).serve_forever()
