import sys

from ai_assets.migrations import main

sys.exit(main())
