"""End-to-end: webhooks checked by the PyPI `pusher` SDK's ``validate_webhook``.

scripts/e2e.sh gives the server an app whose webhooks for ``private-py-*`` channels go to the
receiver this test runs (on SWITCHBOARD_E2E_WEBHOOK_PY_PORT); a raw Pusher v7 client sends a
client event, and the receiver must validate it with the SDK as a backend would.
"""

import json
import os
import secrets
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pusher
import websocket

HOST = os.environ.get("SWITCHBOARD_HOST", "127.0.0.1")
PORT = int(os.environ.get("SWITCHBOARD_PORT", "6001"))
APP_ID = os.environ.get("SWITCHBOARD_HOOK_APP_ID", "5151")
KEY = os.environ.get("SWITCHBOARD_HOOK_APP_KEY", "hook-key")
SECRET = os.environ.get("SWITCHBOARD_HOOK_APP_SECRET", "hook-secret")
RECEIVER_PORT = int(os.environ.get("SWITCHBOARD_E2E_WEBHOOK_PY_PORT", "8081"))

SDK = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, ssl=False, host=HOST, port=PORT)


class Receiver(BaseHTTPRequestHandler):
    """Validates each request with the SDK; answers 200 when valid, else 401."""

    validated = []  # what validate_webhook returned for each request
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"])).decode("utf-8")
        result = SDK.validate_webhook(
            key=self.headers["X-Pusher-Key"],
            signature=self.headers["X-Pusher-Signature"],
            body=body,
        )
        with self.lock:
            self.validated.append(result)
        self.send_response(200 if result is not None else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


class WebhookTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ThreadingHTTPServer(("127.0.0.1", RECEIVER_PORT), Receiver)
        cls.thread = threading.Thread(target=cls.server.serve_forever, daemon=True)
        cls.thread.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def test_client_event_webhook_validates_with_the_sdk(self):
        channel = "private-py-hook-%d-%s" % (int(time.time() * 1000), secrets.token_hex(6))
        url = "ws://%s:%d/app/%s?protocol=7&client=python-e2e&version=1.0" % (HOST, PORT, KEY)
        ws = websocket.create_connection(url, timeout=5)
        self.addCleanup(ws.close)
        established = json.loads(ws.recv())
        socket_id = json.loads(established["data"])["socket_id"]
        auth = SDK.authenticate(channel=channel, socket_id=socket_id)
        ws.send(json.dumps({"event": "pusher:subscribe",
                            "data": {"channel": channel, "auth": auth["auth"]}}))
        while json.loads(ws.recv())["event"] != "pusher_internal:subscription_succeeded":
            pass
        ws.send(json.dumps({"event": "client-hello", "channel": channel, "data": {"n": 1}}))

        deadline = time.time() + 20
        events = []
        while time.time() < deadline and not events:
            with Receiver.lock:
                events = [event for body in Receiver.validated if body is not None
                          for event in body["events"]
                          if event["channel"] == channel and event["name"] == "client_event"]
            time.sleep(0.1)
        self.assertNotIn(None, Receiver.validated, "every request validates")
        self.assertEqual(events, [{
            "name": "client_event",
            "channel": channel,
            "event": "client-hello",
            "data": json.dumps({"n": 1}),  # the data's JSON text as the client sent it
            "socket_id": socket_id,
        }])


if __name__ == "__main__":
    unittest.main()
