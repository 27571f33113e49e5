import sys

from fedgmi.launch import main

sys.exit(main())
