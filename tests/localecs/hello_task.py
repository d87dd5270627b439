"""The "image" of the process-mode tests' tasks: `hello_task.py HOST PORT` serves GET.

It answers "hello from $LOCALECS_TASK_IP". ON_TERM=ignore makes it ignore SIGTERM,
ON_TERM=default lets SIGTERM kill it, anything else exits 0 on SIGTERM; DELAY_BIND
seconds pass before it listens.
"""

import http.server
import os
import signal
import sys
import time


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ("hello from " + os.environ["LOCALECS_TASK_IP"]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    on_term = os.environ.get("ON_TERM", "exit0")
    if on_term == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif on_term != "default":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(float(os.environ.get("DELAY_BIND", "0")))
    http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Hello).serve_forever()
