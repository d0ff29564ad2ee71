#!/usr/bin/env python3
"""How an orchestrator drives `forge serve` (docs/worker.md), with the standard library only: submit a
recipe as a `model/forge` job, follow its events, and cancel it on Ctrl-C (it then stops at its next
safe point and can be resumed with "resume": true).

    forge serve --socket /tmp/forge.sock &
    python3 examples/worker_client.py /tmp/forge.sock examples/code.toml runs/code [KEY=VALUE ...]
"""
import json, os, socket, sys


class Worker:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.lines = self.sock.makefile("r", encoding="utf-8")
        self.next_id = 0

    def send(self, method, params):
        self.next_id += 1
        self.sock.sendall((json.dumps({"id": self.next_id, "method": method, "params": params}) + "\n").encode())

    def receive(self):
        line = self.lines.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        return json.loads(line)

    def call(self, method, params):
        """A request and its reply's result; a refusal raises with the server's message."""
        self.send(method, params)
        reply = self.receive()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']['message']} (class {reply['error']['class']})")
        return reply["result"]


def main():
    path, recipe, out, *overrides = sys.argv[1:]
    sets = dict(item.split("=", 1) for item in overrides)
    worker = Worker(path)
    job = worker.call("model/forge", {"recipe": os.path.abspath(recipe), "out": os.path.abspath(out), "set": sets})
    print(f"{job['job']} queued (estimate {job['estimate_bytes'] / 2**20:.0f} MiB)", flush=True)
    try:
        while True:
            event = worker.receive()
            kind = event["event"]
            if kind == "progress" and "step" in event:
                print(f"\r  cycle {event['cycle']} train step {event['step']}/{event['steps']} "
                      f"loss {event['loss']:.4f} {event['tokens_per_s']:.0f} tokens/s", end="", flush=True)
            elif kind == "progress":
                print(f"\n  cycle {event['cycle']}: {event['phase']}", flush=True)
            elif kind == "metric":
                print(f"\n  metrics: {event['metrics'].get('perplexity:code-valid')}", flush=True)
            elif kind in ("done", "error", "cancelled"):
                print(f"\n{job['job']} {kind}: {json.dumps(event.get('result', event))[:300]}")
                return 0 if kind == "done" else 1
    except KeyboardInterrupt:
        # A second connection asks for the cancel; the first one still receives the job's last events.
        Worker(path).call("job/cancel", {"job": job["job"]})
        print(f"\ncancelling {job['job']}; resume it with \"resume\": true")
        return 130


if __name__ == "__main__":
    sys.exit(main())
