#!/usr/bin/env python3
"""An example Carom frontend: a bot that accepts every contact request and echoes messages.

It speaks caromd's local API directly (JSON-RPC 2.0, one object per line, over the Unix
socket), with nothing but the Python standard library, to show what a frontend needs:

- make sure the socket is our own user's daemon before sending anything (another local user
  can create `/tmp/carom-$UID/` first and listen there, hoping for a passphrase);
- read the banner first;
- subscribe with `since_seq` from a saved cursor, so events that happened while the bot was
  down are replayed (and an `events.gap` is handled if some were pruned);
- reply with `client_token` derived from the incoming message id, so a bot that crashes after
  sending but before saving its cursor never answers twice.

    python3 contrib/bots/echo_bot.py [--socket PATH] [--state FILE]

Declare it honestly: contacts see `kind: bot` if you add people with `carom contact add --bot`.
"""

import argparse
import json
import os
import socket
import stat
import struct
import sys


def default_socket():
    """Where caromd listens by default (the same rule as the daemon and the carom CLI)."""
    if os.environ.get("CAROM_SOCKET"):
        return os.environ["CAROM_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "carom", "carom.sock")
    return f"/tmp/carom-{os.getuid()}/carom.sock"


def owner_name(uid):
    try:
        import pwd
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_private(path, want_socket):
    """Refuse a path that is a symlink, of the wrong type, not ours, or open to other users."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise SystemExit(f"refusing {path}: it is a symbolic link")
    if want_socket and not stat.S_ISSOCK(info.st_mode):
        raise SystemExit(f"refusing {path}: it is not a Unix socket")
    if not want_socket and not stat.S_ISDIR(info.st_mode):
        raise SystemExit(f"refusing {path}: it is not a directory")
    if info.st_uid != os.geteuid():
        raise SystemExit(
            f"refusing {path}: it belongs to {owner_name(info.st_uid)}, not to you "
            f"({owner_name(os.geteuid())}); another user may be impersonating caromd"
        )
    if info.st_mode & 0o077:
        raise SystemExit(f"refusing {path}: it is open to other users (mode {info.st_mode & 0o7777:04o})")


def check_peer(sock, path):
    """The listening process must run as our user: SO_PEERCRED cannot be forged."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.geteuid():
        raise SystemExit(
            f"refusing {path}: the process listening on it runs as {owner_name(uid)}, not as you; "
            "another user is impersonating caromd. Nothing was sent"
        )


class Api:
    def __init__(self, path):
        # Authenticate the daemon before a single byte goes to it.
        check_private(os.path.dirname(os.path.abspath(path)), want_socket=False)
        check_private(path, want_socket=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        check_peer(self.sock, path)
        self.file = self.sock.makefile("rwb")
        self.next_id = 1
        self.pending_events = []
        banner = self._read()
        if banner.get("method") != "carom.banner":
            raise SystemExit("not a caromd socket")
        if banner["params"]["min_api_version"] > 1:
            raise SystemExit("caromd needs a newer client")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise SystemExit("caromd closed the connection")
        return json.loads(line)

    def call(self, method, params=None):
        request_id = self.next_id
        self.next_id += 1
        line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        self.file.write(line.encode() + b"\n")
        self.file.flush()
        while True:
            message = self._read()
            if message.get("method") in EVENT_METHODS:
                self.pending_events.append(message["params"])
                continue
            if message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']['data']['kind']}: {message['error']['message']}")
                return message["result"]

    def next_event(self):
        if self.pending_events:
            return self.pending_events.pop(0)
        while True:
            message = self._read()
            if message.get("method") in EVENT_METHODS:
                return message["params"]


# Stored events, and live ones (about conversations with history off: never stored, so they
# carry no "seq" and are never replayed).
EVENT_METHODS = ("carom.event", "carom.live_event")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=default_socket())
    parser.add_argument("--state", default=os.path.expanduser("~/.echo-bot-cursor"))
    args = parser.parse_args()

    cursor = 0
    if os.path.exists(args.state):
        with open(args.state) as f:
            cursor = int(f.read().strip() or 0)

    api = Api(args.socket)
    api.call("session.hello", {"client": "echo-bot/1"})
    me = api.call("identity.get")["address"]
    print(f"echo bot at {me}; replaying events after #{cursor}", file=sys.stderr)
    api.call("events.subscribe", {"since_seq": cursor})

    while True:
        event = api.next_event()
        kind, data = event["kind"], event["data"]
        if kind == "events.gap":
            print(f"missed events {data['from_seq']}..{data['to_seq']} (pruned)", file=sys.stderr)
        elif kind == "contact.request_received":
            try:
                api.call("contact.respond", {"address": data["address"], "response": "accept"})
                print(f"accepted {data['nickname']!r}", file=sys.stderr)
            except RuntimeError as e:  # e.g. blocked meanwhile
                print(e, file=sys.stderr)
        elif kind == "message.received":
            try:
                message = api.call("message.get", {"id": data["id"]})
                api.call("message.send", {
                    "to": message["contact"],
                    "body": "echo: " + message["body"],
                    "reply_to": message["msg_id"],
                    # Idempotent: a replay of this event after a crash sends nothing new.
                    "client_token": "echo-" + message["msg_id"],
                })
            except RuntimeError as e:  # deleted or removed meanwhile
                print(e, file=sys.stderr)
        if "seq" not in event:
            continue
        cursor = event["seq"]
        with open(args.state + ".tmp", "w") as f:
            f.write(str(cursor))
        os.replace(args.state + ".tmp", args.state)


if __name__ == "__main__":
    main()
