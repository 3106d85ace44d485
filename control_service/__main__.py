import sys

from switchboard.runtime import grpc_env

grpc_env.apply()  # before grpc is imported: it reads GRPC_EXPERIMENTS once, at import

from control_service.main import main  # noqa: E402

sys.exit(main())
