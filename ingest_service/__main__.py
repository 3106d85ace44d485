import sys

from ingest_service.main import main

sys.exit(main())
