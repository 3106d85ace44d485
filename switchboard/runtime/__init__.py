"""How a service process runs: its entry point and lifecycle (``service``), event loop (``loop``), stop
signals (``signals``), structured logs (``logs``) and the gRPC core settings its entry point applies before
grpc is imported (``grpc_env``)."""
