from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from switchboard import errors
from switchboard.rpc.errors import status_code_for, status_details


def test_error_tree_maps_to_grpc_codes() -> None:
    assert status_code_for(errors.SignatureError("x")) == grpc.StatusCode.UNAUTHENTICATED
    assert status_code_for(errors.UnknownSource("x")) == grpc.StatusCode.NOT_FOUND
    assert status_code_for(errors.PayloadTooLarge("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code_for(errors.BrokerUnavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_code_for(errors.SwitchboardError("x")) == grpc.StatusCode.INTERNAL
    raw = status_details(grpc.StatusCode.UNAUTHENTICATED, "bad", "SIGNATURE_MISMATCH", {"header": "stripe-signature"})
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.code == 16 and status.details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == ("SIGNATURE_MISMATCH", {"header": "stripe-signature"})
