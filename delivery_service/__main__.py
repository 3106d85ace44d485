import sys

from delivery_service.main import main

sys.exit(main())
