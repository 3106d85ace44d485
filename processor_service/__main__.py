import sys

from processor_service.main import main

sys.exit(main())
