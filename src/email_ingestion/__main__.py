"""`python -m email_ingestion` is `email-ingest`."""

import sys

from email_ingestion.admin.cli import main

sys.exit(main())
