import sys

from fedgmi.cli import main

sys.exit(main())
