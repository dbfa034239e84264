import sys

from ai_assets.db.migrations import main

sys.exit(main())
