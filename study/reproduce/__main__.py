"""`python -m study.reproduce`: see study/reproduce/__init__.py."""
from __future__ import annotations

import sys

from study.reproduce import main

sys.exit(main())
