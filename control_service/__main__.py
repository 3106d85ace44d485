import sys

from control_service.main import main

sys.exit(main())
