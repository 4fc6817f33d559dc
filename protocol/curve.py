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
