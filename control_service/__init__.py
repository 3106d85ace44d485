"""The control service: state-changing internal APIs (``webhooks.v1.Subscriptions`` now; Replay and DeadLetters
next), served over gRPC and, through Envoy, as REST to clients with a JWT."""
