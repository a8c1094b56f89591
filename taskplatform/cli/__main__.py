import sys

from taskplatform.cli.commands import main

sys.exit(main())
