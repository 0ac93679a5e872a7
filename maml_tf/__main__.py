"""`python -m maml_tf <command> [flags]`: the same as `maml-tf`."""

import sys

from maml_tf.commands import main

sys.exit(main())
