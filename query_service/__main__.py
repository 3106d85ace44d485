import sys

from query_service.main import main

sys.exit(main())
