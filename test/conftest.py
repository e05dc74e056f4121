"""Shared pytest set-up: offscreen Qt, a private ROS domain, the repository root on sys.path."""

import os
from pathlib import Path
import sys

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')
# Keep test graphs apart from anything else on the machine (other runs, a user's demo).
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
