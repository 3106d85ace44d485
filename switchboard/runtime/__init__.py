"""How a service process runs: its entry point and lifecycle (``service``), event loop (``loop``), stop
signals (``signals``) and structured logs (``logs``)."""
