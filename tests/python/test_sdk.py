"""End-to-end: the official PyPI `pusher` server SDK against Switchboard.

The Python SDK serializes differently from the Node one (``json.dumps`` with spaces, ``\\u``
escapes in the body, ``body_md5`` signed on GET requests too, its own parameter order), so every
call here checks that the server verifies what it actually sent. Live state is made with raw
Pusher protocol v7 clients on `websocket-client`, authorized with the SDK's own ``authenticate``
and ``authenticate_user`` output.

scripts/e2e.sh runs this with the app of tests/e2e.toml that has a numeric id (the only kind the
SDK accepts) and passes its address and credentials in SWITCHBOARD_* variables.
"""

import base64
import json
import os
import secrets
import struct
import time
import unittest

import nacl.secret
import pusher
import websocket
from pusher.errors import PusherBadAuth, PusherBadRequest

HOST = os.environ.get("SWITCHBOARD_HOST", "127.0.0.1")
PORT = int(os.environ.get("SWITCHBOARD_PORT", "6001"))
APP_ID = os.environ.get("SWITCHBOARD_PY_APP_ID", "4242")
KEY = os.environ.get("SWITCHBOARD_PY_APP_KEY", "py-key")
SECRET = os.environ.get("SWITCHBOARD_PY_APP_SECRET", "py-secret")

TIMEOUT_S = 5.0


def sdk(secret=SECRET, **options):
    """The PyPI SDK pointed at Switchboard (plain HTTP)."""
    return pusher.Pusher(
        app_id=APP_ID, key=KEY, secret=secret, ssl=False, host=HOST, port=PORT, timeout=10,
        **options,
    )


def unique(prefix="py"):
    """A channel (or user) name unique to this call."""
    return "%s-%d-%s" % (prefix, int(time.time() * 1000), secrets.token_hex(6))


class RawClient:
    """A Pusher protocol v7 client on a raw WebSocket: the frames as the server sends them."""

    def __init__(self, test):
        url = "ws://%s:%d/app/%s?protocol=7&client=python-e2e&version=1.0" % (HOST, PORT, KEY)
        self.ws = websocket.create_connection(url, timeout=TIMEOUT_S)
        test.addCleanup(self.close)
        self.frames = []  # every frame received, in order
        self._unread = []  # frames not yet returned by wait_for
        established = self.wait_for("pusher:connection_established")
        data = json.loads(established["data"])
        self.socket_id = data["socket_id"]
        assert data["activity_timeout"] > 0, established

    def send(self, event, data, channel=None):
        frame = {"event": event, "data": data}
        if channel is not None:
            frame["channel"] = channel
        self.ws.send(json.dumps(frame))

    def _receive(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.ws.settimeout(remaining)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        frame = json.loads(text)
        self.frames.append(frame)
        if frame.get("event") == "pusher:ping":
            self.send("pusher:pong", {})
        return frame

    def wait_for(self, event, channel=None, timeout=TIMEOUT_S, fail_on=()):
        """The next unread frame `event` (on `channel`); raises on a `fail_on` event or timeout."""

        def matches(frame):
            return frame.get("event") == event and channel in (None, frame.get("channel"))

        def failed(frame):
            return frame.get("event") in fail_on and frame.get("channel") in (None, channel)

        for frame in list(self._unread):
            if matches(frame) or failed(frame):
                self._unread.remove(frame)
                if failed(frame):
                    raise AssertionError("got %s while waiting for %s" % (frame, event))
                return frame
        deadline = time.monotonic() + timeout
        while True:
            frame = self._receive(deadline)
            if frame is None:
                raise AssertionError(
                    "no %s on %s within %.1f s; received %s"
                    % (event, channel, timeout, self.frames)
                )
            if matches(frame):
                return frame
            if failed(frame):
                raise AssertionError("got %s while waiting for %s" % (frame, event))
            self._unread.append(frame)

    def drain(self, seconds):
        """Reads for `seconds` and returns the frames that arrived (also kept as unread)."""
        deadline = time.monotonic() + seconds
        arrived = []
        while True:
            frame = self._receive(deadline)
            if frame is None:
                return arrived
            arrived.append(frame)
            self._unread.append(frame)

    def subscribe(self, channel, auth=None):
        """Subscribes with the SDK's `authenticate` output `auth`; returns the succeeded frame."""
        data = {"channel": channel}
        if auth is not None:
            data["auth"] = auth["auth"]
            if "channel_data" in auth:
                data["channel_data"] = auth["channel_data"]
        self.send("pusher:subscribe", data)
        return self.wait_for(
            "pusher_internal:subscription_succeeded",
            channel,
            fail_on=("pusher:subscription_error", "pusher:error"),
        )

    def close_code(self, timeout=TIMEOUT_S):
        """Reads until the server's close frame and returns its status code."""
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", data[:2])[0]

    def close(self):
        try:
            self.ws.close()
        except Exception:  # already closed by the server
            pass


class PythonSdkTest(unittest.TestCase):
    def setUp(self):
        self.sdk = sdk()

    def connect(self):
        return RawClient(self)

    def join_presence(self, channel, user_id, client=None):
        client = client or self.connect()
        auth = self.sdk.authenticate(
            channel, client.socket_id, {"user_id": user_id, "user_info": {"name": user_id}}
        )
        client.subscribe(channel, auth)
        return client

    # -- events -----------------------------------------------------------------------------

    def test_trigger_one_channel_delivers_the_sdk_data_byte_for_byte(self):
        channel = unique()
        client = self.connect()
        client.subscribe(channel)
        data = {"name": "Zoë ✓", "n": [1, 2]}
        self.assertEqual(self.sdk.trigger(channel, "py-event", data), {})
        frame = client.wait_for("py-event", channel)
        # data_to_string: json.dumps(ensure_ascii=False); the body escapes it again as \\u.
        self.assertEqual(frame["data"], json.dumps(data, ensure_ascii=False))

    def test_trigger_many_channels_and_socket_id_exclusion(self):
        channels = [unique(), unique()]
        first, second, excluded = self.connect(), self.connect(), self.connect()
        first.subscribe(channels[0])
        second.subscribe(channels[1])
        excluded.subscribe(channels[0])
        self.assertEqual(self.sdk.trigger(channels, "fan", {"n": 2}), {})
        for client, channel in ((first, channels[0]), (second, channels[1])):
            self.assertEqual(json.loads(client.wait_for("fan", channel)["data"]), {"n": 2})
        excluded.wait_for("fan", channels[0])

        self.assertEqual(
            self.sdk.trigger(channels[0], "not-you", "plain text", socket_id=excluded.socket_id), {}
        )
        self.assertEqual(first.wait_for("not-you", channels[0])["data"], "plain text")
        arrived = [f for f in excluded.drain(0.7) if f.get("event") == "not-you"]
        self.assertEqual(arrived, [], "the excluded socket received the event")

    def test_trigger_batch_with_and_without_info(self):
        channel = unique()
        subscribers = [self.connect(), self.connect()]
        for client in subscribers:
            client.subscribe(channel)
        batch = [
            {"channel": channel, "name": "batched", "data": {"i": 1}},
            {"channel": channel, "name": "batched", "data": {"i": 2}},
        ]
        self.assertEqual(self.sdk.trigger_batch(batch), {})
        received = [subscribers[0].wait_for("batched", channel)["data"] for _ in range(2)]
        self.assertEqual([json.loads(data) for data in received], [{"i": 1}, {"i": 2}])

        presence = unique("presence-py")
        self.join_presence(presence, "py-ann")
        with_info = [
            {"channel": channel, "name": "b", "data": "x", "info": "subscription_count"},
            {"channel": presence, "name": "b", "data": "y", "info": "user_count"},
            {"channel": channel, "name": "b", "data": "z"},
        ]
        self.assertEqual(
            self.sdk.trigger_batch(with_info),
            {"batch": [{"subscription_count": 2}, {"user_count": 1}, {}]},
        )

    # -- queries (GET: signed with body_md5 of the empty body) -------------------------------

    def test_channels_info_presence_user_count(self):
        big, small = unique("presence-py"), unique("presence-py")
        self.join_presence(big, "py-bo")
        self.join_presence(big, "py-bo")  # the same user twice counts once
        self.join_presence(big, "py-cy")
        self.join_presence(small, "py-di")
        reply = self.sdk.channels_info(prefix_filter="presence-", attributes=["user_count"])
        self.assertEqual(reply["channels"][big], {"user_count": 2})
        self.assertEqual(reply["channels"][small], {"user_count": 1})
        for name in reply["channels"]:
            self.assertTrue(name.startswith("presence-"), name)

        public = unique()
        self.connect().subscribe(public)
        self.assertEqual(self.sdk.channels_info()["channels"].get(public), {})

    def test_channels_info_user_count_needs_the_presence_prefix(self):
        with self.assertRaises(PusherBadRequest):
            self.sdk.channels_info(attributes=["user_count"])

    def test_channel_info_subscription_count(self):
        channel = unique()
        for _ in range(2):
            self.connect().subscribe(channel)
        self.assertEqual(
            self.sdk.channel_info(channel, ["subscription_count"]),
            {"occupied": True, "subscription_count": 2},
        )
        self.assertEqual(self.sdk.channel_info(unique()), {"occupied": False})
        with self.assertRaises(PusherBadRequest):
            self.sdk.channel_info(channel, ["user_count"])

    def test_users_info_of_a_presence_channel(self):
        channel = unique("presence-py")
        self.join_presence(channel, "py-eve")
        self.join_presence(channel, "py-fox")
        reply = self.sdk.users_info(channel)
        self.assertEqual(sorted(u["id"] for u in reply["users"]), ["py-eve", "py-fox"])
        self.assertEqual(sorted(reply.keys()), ["users"])

    # -- authentication ------------------------------------------------------------------------

    def test_authenticate_private_channel(self):
        channel = unique("private-py")
        client = self.connect()
        client.subscribe(channel, self.sdk.authenticate(channel, client.socket_id))
        self.sdk.trigger(channel, "secret", {"ok": True})
        self.assertEqual(json.loads(client.wait_for("secret", channel)["data"]), {"ok": True})

        other = self.connect()
        bad = sdk(secret="not-the-secret").authenticate(channel, other.socket_id)
        other.send("pusher:subscribe", {"channel": channel, "auth": bad["auth"]})
        error = other.wait_for("pusher:subscription_error", channel)
        self.assertEqual(json.loads(error["data"])["status"], 401, error)

    def test_authenticate_presence_member_data(self):
        channel = unique("presence-py")
        first = self.join_presence(channel, "py-gil")
        second = self.connect()
        auth = self.sdk.authenticate(
            channel, second.socket_id, {"user_id": "py-hu", "user_info": {"name": "Hu", "n": 1}}
        )
        succeeded = second.subscribe(channel, auth)
        presence = json.loads(succeeded["data"])["presence"]
        self.assertEqual(presence["count"], 2)
        self.assertEqual(sorted(presence["ids"]), ["py-gil", "py-hu"])
        self.assertEqual(presence["hash"]["py-hu"], {"name": "Hu", "n": 1})
        added = first.wait_for("pusher_internal:member_added", channel)
        self.assertEqual(
            json.loads(added["data"]), {"user_id": "py-hu", "user_info": {"name": "Hu", "n": 1}}
        )

    def test_authenticate_user_and_send_to_user(self):
        user_id = unique("py-user")
        client = self.connect()
        auth = self.sdk.authenticate_user(client.socket_id, {"id": user_id, "name": "Py"})
        client.send("pusher:signin", {"auth": auth["auth"], "user_data": auth["user_data"]})
        success = client.wait_for("pusher:signin_success", fail_on=("pusher:error",))
        self.assertEqual(json.loads(json.loads(success["data"])["user_data"])["id"], user_id)

        server_to_user = "#server-to-user-%s" % user_id
        client.subscribe(server_to_user)
        self.assertEqual(self.sdk.send_to_user(user_id, "py-note", {"to": user_id}), {})
        note = client.wait_for("py-note", server_to_user)
        self.assertEqual(json.loads(note["data"]), {"to": user_id})

    def test_terminate_user_connections(self):
        # pusher 3.3.4 posts to /users/{id}/terminate_connections, without /apps/{id}: the
        # server finds the app by auth_key.
        user_id = unique("py-term")
        client = self.connect()
        auth = self.sdk.authenticate_user(client.socket_id, {"id": user_id})
        client.send("pusher:signin", {"auth": auth["auth"], "user_data": auth["user_data"]})
        client.wait_for("pusher:signin_success", fail_on=("pusher:error",))
        bystander = self.connect()
        self.assertEqual(self.sdk.terminate_user_connections(user_id), {})
        self.assertEqual(client.close_code(), 4009)
        bystander.send("pusher:ping", {})
        bystander.wait_for("pusher:pong")

    def test_encrypted_channel_round_trip(self):
        master_key = base64.b64encode(secrets.token_bytes(32)).decode()
        encrypting = sdk(encryption_master_key_base64=master_key)
        channel = unique("private-encrypted-py")
        client = self.connect()
        auth = encrypting.authenticate(channel, client.socket_id)
        client.subscribe(channel, auth)
        self.assertEqual(encrypting.trigger(channel, "sealed", {"card": "4242"}), {})
        payload = json.loads(client.wait_for("sealed", channel)["data"])
        box = nacl.secret.SecretBox(base64.b64decode(auth["shared_secret"]))
        ciphertext = base64.b64decode(payload["ciphertext"])
        plain = box.decrypt(ciphertext, base64.b64decode(payload["nonce"]))
        self.assertEqual(json.loads(plain), {"card": "4242"})

    # -- refused requests ------------------------------------------------------------------------

    def test_wrong_secret_is_refused_with_401(self):
        wrong = sdk(secret="not-the-secret")
        with self.assertRaises(PusherBadAuth):  # the SDK's error for HTTP 401
            wrong.trigger(unique(), "e", {"a": 1})
        with self.assertRaises(PusherBadAuth):
            wrong.channels_info()


if __name__ == "__main__":
    unittest.main(verbosity=2)
