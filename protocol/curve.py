"""CURVE keys for tcp deployments: generate them, load them, and configure sockets with them.

A deployment with CURVE has one server key pair (the kernel's) and a folder of allowed public
keys: every client and every actor connects with a key pair of its own, and the kernel's
authenticator admits only the public keys in that folder. Files are pyzmq's certificate
format (``NAME.key`` public, ``NAME.key_secret`` secret, mode 0600).
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth


def generate(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create ``name.key`` and ``name.key_secret`` in ``directory``; returns (public, secret) paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_pair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file."""
    public, secret = zmq.auth.load_certificate(secret_file)
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key")
    return public, secret


def load_public(public_file: str | Path) -> bytes:
    public, _ = zmq.auth.load_certificate(public_file)
    return public


def client_keys(secret_file: str | Path, server_public_file: str | Path) -> dict[str, bytes]:
    """The ``curve=`` argument of :class:`Client` and the actor runtime."""
    public, secret = load_pair(secret_file)
    return {"public": public, "secret": secret, "server": load_public(server_public_file)}


def apply_client(sock: zmq.Socket, curve: dict[str, bytes]) -> None:
    sock.curve_secretkey = curve["secret"]
    sock.curve_publickey = curve["public"]
    sock.curve_serverkey = curve["server"]


def _folder_keys(folder: str | Path) -> set[str]:
    """z85 text of every public ``.key`` file in ``folder`` ("" = none)."""
    if not folder:
        return set()
    return {key.decode() for key in zmq.auth.load_certificates(str(folder))}


class KeyRing:
    """The public keys a CURVE deployment admits, and the role each holds.

    Keys are z85 text, as the ZAP handler reports a connection's User-Id. ``allowed`` keys are
    clients; ``operators`` may also read views across clients (metrics, every session id);
    ``actors`` (the spawned actors' own key included) may register as actors. Every key of the
    three is admitted; the folders are read once, when the kernel starts.
    """

    def __init__(self, clients: set[str], operators: set[str], actors: set[str]) -> None:
        self.operators = frozenset(operators)
        self.actors = frozenset(actors)
        self.admitted = frozenset(clients | operators | actors)

    @classmethod
    def load(
        cls, allowed: str | Path, operators: str | Path = "", actors: str | Path = "", actor_secret: str | Path = ""
    ) -> KeyRing:
        actor_keys = _folder_keys(actors)
        if actor_secret:
            actor_keys.add(load_pair(actor_secret)[0].decode())
        return cls(_folder_keys(allowed), _folder_keys(operators), actor_keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: admit a connection whose public key (z85) is on the ring."""
        return key.decode() in self.admitted

    def role(self, user_id: str | None) -> str:
        """The role of an unregistered peer: "operator" for an operator's or an actor's key,
        else "client" (a registered actor is an actor; that the kernel knows)."""
        return "operator" if user_id in self.operators or user_id in self.actors else "client"

    def may_register(self, user_id: str | None) -> bool:
        return user_id in self.actors
