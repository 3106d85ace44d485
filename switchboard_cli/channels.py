"""The command line's gRPC channels to its own services: they take a reply of any size the service sends. An
event's body may be as large as a source accepts (up to 16 MiB, with its headers and results on top), and
gRPC's default limit of 4 MiB failed ``switchboard events get`` on a 5 MB event with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import grpc

from switchboard.addresses import host_port

OPTIONS = (("grpc.max_receive_message_length", -1),)


def open_channel(host: str, port: int) -> grpc.Channel:
    return grpc.insecure_channel(host_port(host, port), options=OPTIONS)
