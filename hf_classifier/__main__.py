import sys

from hf_classifier.cli.commands import main

sys.exit(main())
