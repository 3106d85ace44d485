"""gRPC plumbing shared by every service: the server bootstrap and the one error interceptor."""
